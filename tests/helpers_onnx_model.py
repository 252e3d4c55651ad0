"""A tiny real ONNX segmenter for service tests: no torch, no training.

It marks dark pixels: each class k fires where the 3x3-averaged gray value is
below `cutoffs[k]`, so a test can draw dark discs and know exactly where the
defects are. The ModelInfo travels in metadata_props, as an exported model's does.
Also here: frames and videos with such discs moving across a bright strip.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inspect_edge.model_info import ModelInfo

SLOPE = 4.0  # logit change per unit of normalised input: a sharp but finite edge


def build_dark_spot_model(path: Path, *, classes=("dark", "very_dark"), cutoffs=(90, 40),
                          height: int = 64, width: int = 128, min_areas=(4, 4),
                          model_version: str = "test-1.0", fixed_batch: int | None = None,
                          output_channels: int | None = None, output_stride: int = 1, nan: bool = False) -> ModelInfo:
    """`output_channels`, `output_stride` and `nan` build models that break their own metadata
    (fewer channels than classes, a downsampled output, NaN logits), as a bad export would."""
    info = ModelInfo(classes=tuple(classes), input_height=height, input_width=width, mean=0.5, std=0.25,
                     thresholds=(0.5,) * len(classes), min_areas=tuple(min_areas),
                     model_version=model_version, arch="dark-spot-test", source_run="tests")
    k = output_channels or len(classes)
    cutoffs = (tuple(cutoffs) * k)[:k]
    weight = np.full((k, 1, 3, 3), -SLOPE / 9.0, np.float32)
    # logit_k = -SLOPE * x + b_k is 0 exactly where the normalised input x equals the cutoff's.
    x_cut = np.array([(c / 255.0 - info.mean) / info.std for c in cutoffs], np.float32)
    bias = (SLOPE * x_cut).astype(np.float32)
    batch = fixed_batch if fixed_batch else "batch"
    conv_out = "logits" if output_stride == 1 and not nan else "conv"
    nodes = [helper.make_node("Conv", ["image", "w", "b"], [conv_out], pads=[1, 1, 1, 1], kernel_shape=[3, 3])]
    if output_stride > 1:
        nodes.append(helper.make_node("AveragePool", ["conv"], ["pooled" if nan else "logits"],
                                      kernel_shape=[output_stride] * 2, strides=[output_stride] * 2))
    if nan:  # sqrt of a negative number: NaN everywhere
        nodes.append(helper.make_node("Sqrt", ["pooled" if output_stride > 1 else "conv"], ["root"]))
        nodes.append(helper.make_node("Neg", ["root"], ["logits"]))
        weight = -np.abs(weight) - 1.0
        bias = -np.abs(bias) - 1e3
    oh, ow = height // output_stride, width // output_stride
    graph = helper.make_graph(
        nodes,
        "dark_spots",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k, oh, ow])],
        initializer=[numpy_helper.from_array(weight.astype(np.float32), "w"), numpy_helper.from_array(bias.astype(np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inspect-edge-tests")
    model.ir_version = 8
    for key, value in info.to_metadata_props().items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return info


def strip_frame(i: int, height: int = 96, width: int = 320, speed: int = 6, seed: int = 0) -> np.ndarray:
    """Bright textured strip with one very dark and one mid-dark disc moving along x."""
    rng = np.random.default_rng(seed + i)
    img = (185 + rng.integers(-12, 13, (height, width))).astype(np.uint8)
    x1 = (40 + i * speed) % (width + 40) - 20
    x2 = (200 + i * speed) % (width + 40) - 20
    cv2.circle(img, (int(x1), height // 3), 9, 10, -1)          # both classes
    cv2.circle(img, (int(x2), 2 * height // 3), 7, 70, -1)      # "dark" only
    return img


def write_strip_video(path: Path, n_frames: int, *, height: int = 96, width: int = 320, fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height), isColor=True)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    for i in range(n_frames):
        writer.write(cv2.cvtColor(strip_frame(i, height, width), cv2.COLOR_GRAY2BGR))
    writer.release()
    return path
