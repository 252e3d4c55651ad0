"""GAN defect synthesis: a mask-conditioned inpainting generator that paints defects of a
chosen class into chosen masks on real steel, plus the copy-paste baseline it must beat.

Data flow:
  labelled images -> pairs.py (crops, holes, class maps) -> fit_gan.py (generator.py,
  discriminator.py, losses.py; EMA generator saved) -> quality.py (gan_metrics.json)
  labelled masks -> shape_bank.py (real defect shapes) -> synthesize.py (GAN or copy-paste)
  -> augment_and_fit.py (segmenter arms on real / real+copy-paste / real+GAN) -> report.py

Images enter the networks as float in [-1, 1]; class maps are one-hot with channel 0 =
clean steel and channel k+1 = defect class k of the data set.
"""
