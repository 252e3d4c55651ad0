"""Training: steel defect segmenter, GAN defect synthesis, evaluation. Needs the `train` extra (torch)."""
