"""What travels with a model file: everything the edge service needs to run it.

The same record is stored three ways and must round-trip through each:
- `model_info.json` in a training run folder (written by `train fit`),
- the `metadata_props` of an exported `.onnx` (string key -> string value),
- the sidecar JSON next to a TensorRT engine.

Pre-processing contract: a grayscale uint8 frame `u` becomes the model input
`(u / 255 - mean) / std` as float32, shape (N, channels, input_height, input_width).
The model outputs one logit map per defect class, shape (N, len(classes), H, W);
a pixel belongs to class k when sigmoid(logit) >= thresholds[k], and connected
components smaller than min_areas[k] pixels are dropped. `tta_flips` ("h", "v") names
the mirrored views whose logits are averaged before that (`inspect_edge.flip_average`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

# Key under which the whole record is stored in ONNX metadata_props.
ONNX_METADATA_KEY = "inspect_edge.model_info"
SCHEMA_VERSION = 1


class ModelInfoError(ValueError):
    """A metadata record is missing, malformed or inconsistent; the message names the field."""


@dataclass(frozen=True)
class ModelInfo:
    classes: tuple[str, ...]
    input_height: int
    input_width: int
    input_channels: int = 1
    mean: float = 0.5
    std: float = 0.25
    thresholds: tuple[float, ...] = ()
    min_areas: tuple[int, ...] = ()
    model_version: str = "0.0.0"
    source_run: str = ""
    arch: str = ""
    precision: str = "fp32"
    tta_flips: tuple[str, ...] = ()  # flip test-time augmentation the edge applies: "h", "v" or both
    content_hash: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Defaults for thresholds/min_areas follow the class count, so a record
        # written before calibration is still complete.
        n = len(self.classes)
        if not self.thresholds:
            object.__setattr__(self, "thresholds", (0.5,) * n)
        if not self.min_areas:
            object.__setattr__(self, "min_areas", (0,) * n)
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "min_areas", tuple(int(a) for a in self.min_areas))
        object.__setattr__(self, "tta_flips", tuple(self.tta_flips))
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self) -> None:
        n = len(self.classes)
        if n == 0:
            raise ModelInfoError("classes: at least one defect class is required")
        if len(set(self.classes)) != n:
            raise ModelInfoError(f"classes: names must be unique, got {list(self.classes)}")
        for name in ("input_height", "input_width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0 or v % 32:
                raise ModelInfoError(f"{name}: must be a positive multiple of 32, got {v!r}")
        if self.input_channels not in (1, 3):
            raise ModelInfoError(f"input_channels: must be 1 or 3, got {self.input_channels!r}")
        if not (math.isfinite(self.std) and self.std > 0):
            raise ModelInfoError(f"std: must be a positive number, got {self.std!r}")
        if len(self.thresholds) != n:
            raise ModelInfoError(f"thresholds: need one per class ({n}), got {len(self.thresholds)}")
        if any(not 0.0 < t < 1.0 for t in self.thresholds):
            raise ModelInfoError(f"thresholds: each must be in (0, 1), got {list(self.thresholds)}")
        if len(self.min_areas) != n:
            raise ModelInfoError(f"min_areas: need one per class ({n}), got {len(self.min_areas)}")
        if any(a < 0 for a in self.min_areas):
            raise ModelInfoError(f"min_areas: must be >= 0, got {list(self.min_areas)}")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ModelInfoError(f"precision: must be fp32, fp16 or int8, got {self.precision!r}")
        if any(f not in ("h", "v") for f in self.tta_flips) or len(set(self.tta_flips)) != len(self.tta_flips):
            raise ModelInfoError(f"tta_flips: each of 'h' and 'v' at most once, got {list(self.tta_flips)}")

    # ---- conversions -------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        d["thresholds"] = list(self.thresholds)
        d["min_areas"] = list(self.min_areas)
        d["tta_flips"] = list(self.tta_flips)
        d["schema_version"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "model info") -> ModelInfo:
        if not isinstance(d, dict):
            raise ModelInfoError(f"{source}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        d.pop("schema_version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelInfoError(f"{source}: unknown field(s) {unknown}")
        for required in ("classes", "input_height", "input_width"):
            if required not in d:
                raise ModelInfoError(f"{source}: missing field {required!r}")
        try:
            return cls(**d)
        except ModelInfoError as e:
            raise ModelInfoError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ModelInfoError(f"{source}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model info") -> ModelInfo:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelInfoError(f"{source}: not valid JSON ({e})") from None
        return cls.from_dict(d, source)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelInfo:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ModelInfoError(f"{p}: cannot read ({e.strerror})") from None
        return cls.from_json(text, str(p))

    def to_metadata_props(self) -> dict[str, str]:
        """String key/value pairs for ONNX metadata_props."""
        return {ONNX_METADATA_KEY: self.to_json()}

    @classmethod
    def from_metadata_props(cls, props: dict[str, str], source: str = "onnx") -> ModelInfo:
        if ONNX_METADATA_KEY not in props:
            raise ModelInfoError(
                f"{source}: no inspect-edge metadata (key {ONNX_METADATA_KEY!r}); "
                "export the model with `inspect-edge export onnx`"
            )
        return cls.from_json(props[ONNX_METADATA_KEY], source)

    def replace(self, **changes) -> ModelInfo:
        return dataclasses.replace(self, **changes)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
