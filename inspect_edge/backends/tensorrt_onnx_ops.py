"""Which ONNX operators TensorRT's ONNX parser accepts: a table kept in the repo, and the check.

The check runs everywhere (no TensorRT, no GPU): `inspect-edge export onnx` runs it
on every graph it writes, `export engine` before it builds, and CI runs it on a
real exported graph (tests/test_tensorrt_ops.py). A graph that would fail to parse
on the device is refused on the laptop instead of at the plant.

Source of the table (read by hand, not generated):
- Operator names: the "Y" rows of the Operator Support Matrix in onnx/onnx-tensorrt
  `docs/operators.md` at commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc (the
  matrix as published for TensorRT 8.5). Rows marked "N" or "EXPERIMENTAL" are
  left out. Later parsers (TensorRT 10.x, 11) add operators (LayerNormalization,
  GroupNormalization, ...); they are NOT listed here, so the table errs on the side
  of refusing. Before relying on a newer operator, add it here from the matrix of
  the oldest TensorRT you target, and update SOURCE.
- Opset range: TensorRT 10.0's matrix states opset 9 to 20 inclusive; that is the
  oldest parser we target (TensorRT 10.0 .. 11), so the graph's default-domain
  opset must lie in it. Our exporter writes opset 18.
- Resize restrictions: the same matrix's Resize row (modes and coordinate modes).

Operators from other domains (e.g. com.microsoft fused ops written by ONNX Runtime
optimisers) are never accepted: TensorRT only parses the default ONNX domain
without plugins, and this project ships none.
"""

from __future__ import annotations

from pathlib import Path

SOURCE = ("onnx/onnx-tensorrt docs/operators.md @ 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc "
          "(TensorRT 8.5 matrix, conservative for 10.x/11); opset range from the TensorRT 10.0 matrix")
TARGET_TENSORRT = ("10", "11")
MIN_OPSET, MAX_OPSET = 9, 20

# One block of names, read row by row against the matrix, is easier to audit than a list literal.
_TABLE = """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool
BatchNormalization Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose
Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If
ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN
LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul
Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
"""
SUPPORTED_OPS = frozenset(_TABLE.split())

RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                                     "asymmetric", "align_corners"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
_DEFAULT_DOMAINS = ("", "ai.onnx")


class UnsupportedOnnxOps(ValueError):
    """The graph uses something TensorRT's ONNX parser does not take; the message lists it."""


def _nodes(graph):
    """Every node, including those inside If/Loop/Scan bodies (TensorRT parses those too)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def _attr(node, name: str, default: str) -> str:
    for a in node.attribute:
        if a.name == name:
            return a.s.decode() if isinstance(a.s, bytes) else str(a.s)
    return default


def onnx_op_problems(model) -> list[str]:
    """What in an `onnx.ModelProto` TensorRT 10/11's parser would refuse (empty: all supported)."""
    problems: list[str] = []
    opsets = {o.domain: o.version for o in model.opset_import}
    version = next((opsets[d] for d in _DEFAULT_DOMAINS if d in opsets), None)
    if version is None:
        problems.append("no default-domain opset import")
    elif not MIN_OPSET <= version <= MAX_OPSET:
        problems.append(f"opset {version} outside TensorRT's range {MIN_OPSET}..{MAX_OPSET}")
    unknown: dict[str, int] = {}
    for node in _nodes(model.graph):
        if node.domain not in _DEFAULT_DOMAINS:
            unknown[f"{node.domain}::{node.op_type}"] = unknown.get(f"{node.domain}::{node.op_type}", 0) + 1
            continue
        if node.op_type not in SUPPORTED_OPS:
            unknown[node.op_type] = unknown.get(node.op_type, 0) + 1
        elif node.op_type == "Resize":
            mode = _attr(node, "mode", "nearest")
            coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
            nearest = _attr(node, "nearest_mode", "round_prefer_floor")
            if mode not in RESIZE_MODES or coord not in RESIZE_COORDINATE_MODES or (
                    mode == "nearest" and nearest not in RESIZE_NEAREST_MODES):
                problems.append(f"Resize {node.name or '(unnamed)'}: mode={mode}, "
                                f"coordinate_transformation_mode={coord}, nearest_mode={nearest} not supported")
    if unknown:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(unknown.items()))
        problems.append(f"operators not in TensorRT's ONNX parser table: {listed}")
    return problems


def check_onnx_ops(path_or_model, source: str | None = None) -> None:
    """Raise UnsupportedOnnxOps (one line, naming the table's source) if TensorRT cannot parse the graph."""
    import onnx  # the train extra (and CI) have it; the edge service never calls this

    if isinstance(path_or_model, (str, Path)):
        source = source or str(path_or_model)
        model = onnx.load(str(path_or_model), load_external_data=False)
    else:
        model = path_or_model
    problems = onnx_op_problems(model)
    if problems:
        raise UnsupportedOnnxOps(f"{source or 'graph'}: TensorRT {'/'.join(TARGET_TENSORRT)} cannot parse it: "
                                 f"{'; '.join(problems)} (table: {SOURCE})")
