"""A verified FP32 `.onnx` -> INT8 for the CPU, calibrated on real frames, refused if masks move.

ONNX Runtime's static quantisation, QDQ format, unsigned 8-bit activations and
signed per-channel weights (U8S8: on this project's AVX-512 VNNI CPU the
built-in model ran 18.0 ms against 27.9 ms FP32, where S8S8 ran 34.7 ms). Calibration runs frames of the training data through the FP32 model (not
random tensors: activation ranges of random input say nothing about steel).

The gate is the service's own: on held-out frames, the INT8 model's masks
(after the model's thresholds and minimum areas) must agree with the FP32
model's with per-class Dice >= 1 - max_drift (0.995). If they do not, the ends
go back to float first (everything from the input up to the first Conv, and the
last Conv onwards: the input is already 8-bit grey, so quantising it again only
re-rounds it, and the output carries the logits the thresholds cut), then more
layers, most sensitive first: each node's sensitivity is measured by quantising
it alone and taking the logit error it causes. After `max_rounds` it refuses
with the figures, next to the FP32 model's own mask Dice when every input pixel
moves by up to one grey level: a drift the model already shows under camera
noise. Only numpy, onnx and onnxruntime:
no torch.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspect_edge.model_info import ModelInfo


@dataclass
class Int8Result:
    out: Path
    float_nodes: list[str]                      # nodes kept in float to pass the gate
    per_class_dice: dict[str, float]            # INT8 masks vs FP32 masks, held-out frames
    max_drift: float
    rounds: list[dict] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    fp32_noise_dice: dict[str, float] = field(default_factory=dict)  # FP32 masks under +-1 grey level of noise
    median_ms: dict[str, float] = field(default_factory=dict)  # batch 1 on the exporting machine: {"fp32": .., "int8": ..}

    @property
    def passed(self) -> bool:
        return all(d >= 1 - self.max_drift for d in self.per_class_dice.values())

    def to_dict(self) -> dict:
        return {"out": str(self.out), "passed": self.passed, "float_nodes": self.float_nodes,
                "per_class_dice_vs_fp32": self.per_class_dice, "max_drift": self.max_drift,
                "rounds": self.rounds, "sensitivity": [[n, s] for n, s in self.sensitivity],
                "fp32_dice_under_one_grey_level_of_noise": self.fp32_noise_dice,
                "median_ms_batch1_this_machine": self.median_ms}


def frames_from_data(data: str | Path, info: ModelInfo, n: int, seed: int, skip: set[int] = frozenset()):
    """(indices, uint8 frames at the model's input size) sampled from a data set, seeded."""
    from export.parity import _fit
    from inspect_edge.data import open_dataset

    ds = open_dataset(data)
    order = [i for i in np.random.default_rng(seed).permutation(len(ds)) if int(i) not in skip][:n]
    if not order:
        raise ValueError(f"{data}: no images to calibrate or check on")
    return [int(i) for i in order], np.stack([_fit(ds[int(i)].image, info.input_height, info.input_width) for i in order])


def _reader(input_name: str, batches: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x[None]}

    return Frames()


def _quantize(fp32: Path, out: Path, calib: np.ndarray, *, exclude=(), only=None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    import onnx

    input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    quantize_static(str(fp32), str(out), _reader(input_name, calib), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(exclude) or None, nodes_to_quantize=list(only) if only else None,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def median_ms(path: Path, x: np.ndarray, threads: int | None, runs: int = 10) -> float:
    """Median batch-1 latency after two warm-up runs: a quantised model with many float
    islands can pass the gate and still be slower than FP32, which only a clock shows."""
    import time

    s = _session(path, threads)
    feed = {s.get_inputs()[0].name: x[:1]}
    for _ in range(2):
        s.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _logits(path: Path, x: np.ndarray, threads: int | None) -> np.ndarray:
    s = _session(path, threads)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 4]})[0] for i in range(0, len(x), 4)]).astype(np.float32)


# Ops that only compute shapes: never quantised. Every other node may get 8-bit inputs or
# outputs (ONNX Runtime also quantises data-movement ops such as Pad), so every other node
# is one the gate can put back in float: a node missing from this list could never be.
SHAPE_OPS = ("Shape", "Constant", "ConstantOfShape", "Gather", "Unsqueeze", "Squeeze", "Cast", "Range", "Size")


def _compute_nodes(path: Path) -> list:
    import onnx

    return [n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type not in SHAPE_OPS]


def quantisable_nodes(path: Path) -> list[str]:
    return [n.name for n in _compute_nodes(path)]


def end_nodes(path: Path) -> list[str]:
    """The graph's ends in float: every node up to and including the first Conv, and the last
    Conv with everything after it."""
    nodes = _compute_nodes(path)
    convs = [i for i, n in enumerate(nodes) if n.op_type in ("Conv", "ConvTranspose")]
    if not convs:
        return []
    return [n.name for n in nodes[: convs[0] + 1]] + [n.name for n in nodes[convs[-1]:]]


def noise_floor(fp32: Path, frames: np.ndarray, info: ModelInfo, ref: np.ndarray, threads: int | None) -> dict[str, float]:
    """FP32 mask Dice between the frames and the same frames with every pixel moved by -1, 0
    or +1 grey level (seeded): how much the model's own masks move under camera noise."""
    from inspect_edge.postprocess import mask_dice_between
    from inspect_edge.preprocess import normalise

    step = np.random.default_rng(0).integers(-1, 2, size=frames.shape)
    noisy = np.clip(frames.astype(np.int16) + step, 0, 255).astype(np.uint8)
    dice, _ = mask_dice_between(ref, _logits(fp32, normalise(noisy, info).astype(np.float32), threads), info)
    return dice


def quantize_int8(fp32: Path, out: Path, calib_frames: np.ndarray, check_frames: np.ndarray, *,
                  max_drift: float = 0.005, max_rounds: int = 8, threads: int | None = None, log=print) -> Int8Result:
    """Quantise `fp32` to `out` and gate it (see module doc); `out` is written only when it passes."""
    from export.onnx_meta import graph_hash, read_metadata
    from inspect_edge.postprocess import mask_dice_between
    from inspect_edge.preprocess import normalise

    import onnx

    info = read_metadata(fp32)
    if info.precision != "fp32":
        raise ValueError(f"{fp32}: INT8 starts from an FP32 model, this one is {info.precision}")
    calib = normalise(calib_frames, info).astype(np.float32)
    check = normalise(check_frames, info).astype(np.float32)
    ref = _logits(fp32, check, threads)
    result = Int8Result(Path(out), [], {}, max_drift)
    with tempfile.TemporaryDirectory() as tmp:
        cand = Path(tmp) / "int8.onnx"
        ranked: list[str] | None = None
        for round_ in range(max_rounds + 1):
            _quantize(fp32, cand, calib, exclude=result.float_nodes)
            dice, positive = mask_dice_between(ref, _logits(cand, check, threads), info)
            worst = min(dice.values())
            result.rounds.append({"float_nodes": list(result.float_nodes), "per_class_dice": dice,
                                  "positive_pixels": positive})
            log(f"INT8 with {len(result.float_nodes)} node(s) in float: mask Dice vs FP32 "
                + ", ".join(f"{k} {v:.4f}" for k, v in dice.items()))
            result.per_class_dice = dice
            if worst >= 1 - max_drift or round_ == max_rounds:
                break
            if not result.float_nodes:
                result.float_nodes = end_nodes(fp32)
                if result.float_nodes:
                    continue
            if ranked is None:
                result.sensitivity = conv_sensitivity(fp32, calib, check[: min(4, len(check))], ref[: min(4, len(check))],
                                                      Path(tmp), threads)
                ranked = [n for n, _ in result.sensitivity]
                log("most sensitive nodes: " + ", ".join(f"{n} ({s:.3g})" for n, s in result.sensitivity[:5]))
            rest = [n for n in ranked if n not in result.float_nodes]
            if not rest:
                break
            more = max(1, len(result.float_nodes))  # then 2x as many layers back in float each round
            result.float_nodes = result.float_nodes + rest[:more]
        if not result.passed:
            result.fp32_noise_dice = noise_floor(fp32, check_frames, info, ref, threads)
            _write_report(result)
            return result  # the figures, not the model
        result.median_ms = {"fp32": median_ms(fp32, check, threads), "int8": median_ms(cand, check, threads)}
        proto = onnx.load(str(cand))
        written = info.replace(precision="int8", content_hash=graph_hash(proto),
                               extra={**info.extra, "int8": {"float_nodes": result.float_nodes,
                                                             "calibration_frames": int(len(calib)),
                                                             "dice_vs_fp32": result.per_class_dice}})
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, written.to_metadata_props())
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(out.name + ".tmp")
        onnx.save(proto, str(tmp_out))
        tmp_out.replace(out)
    _write_report(result)
    return result


def _write_report(result: Int8Result) -> None:
    """<out>.int8.json beside the model, passed or refused."""
    result.out.parent.mkdir(parents=True, exist_ok=True)
    result.out.with_name(result.out.name + ".int8.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")


def conv_sensitivity(fp32: Path, calib: np.ndarray, check: np.ndarray, ref: np.ndarray, tmp: Path,
                     threads: int | None) -> list[tuple[str, float]]:
    """Each quantisable node quantised alone: the mean |logit| error it causes, largest first."""
    scores = []
    probe = tmp / "one.onnx"
    small = calib[: min(8, len(calib))]
    for name in quantisable_nodes(fp32):
        _quantize(fp32, probe, small, only=[name])
        scores.append((name, float(np.abs(_logits(probe, check, threads) - ref).mean())))
    return sorted(scores, key=lambda t: -t[1])
