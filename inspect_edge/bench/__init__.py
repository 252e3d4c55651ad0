"""`inspect-edge bench`: how fast, measured side by side, and where the time goes.

Three measurements, one run, one record (JSON + Markdown) in its own run folder:
- engines (`engines.py`): the contenders (ONNX Runtime CPU, TensorRT FP16 when
  present, PyTorch eager through the `inspect_edge.bench_contenders` plugin group)
  timed in alternation on the same inputs, per model and batch size;
- pipeline (`pipeline_bench.py`): the whole service path against the engine alone
  on the same model and frames, with the time per stage;
- freshness (same run): a source at a multiple of the inference rate, the age of
  the frames that get processed and the drop count (= captured - processed).

Torch never enters this package: PyTorch contenders and building models of each
size come from `export.bench_torch`, found through the entry point group.
"""
