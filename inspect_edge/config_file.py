"""The service config as a YAML file: load it, check it (every problem, with its key), write an example.

The pydantic models in `inspect_edge.config` stay the one source of names,
enums and defaults: the example is generated from them, and `inspect-edge run`
flags only override what they are given. Secrets can come from the
environment instead of the file (`INSPECT_EDGE_AUTH_TOKEN`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from inspect_edge.config import ServiceConfig

ENV_SECRETS = {"INSPECT_EDGE_AUTH_TOKEN": ("server", "auth_token")}
# A whole line instead of `source:` (every key of `source` also works per camera):
CAMERAS_EXAMPLE = [
    "# cameras:",
    "#   - name: top                      # the `camera` label of its metrics, events and evidence",
    "#     spec: rtsp://10.0.0.21/stream1",
    "#     fps: 10",
    "#     roi: [0, 0, 1600, 256]         # x, y, width, height: only this region is inspected",
    "#   - name: bottom",
    "#     spec: rtsp://10.0.0.22/stream1",
    "#     reconnect_max_s: 5.0",
]


class ConfigFileError(ValueError):
    """Every problem found in a config file, one per line, each naming its key or line."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


def read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigFileError(path, [f"cannot read ({e.strerror or e})"]) from None
    except UnicodeDecodeError as e:
        raise ConfigFileError(path, [f"not UTF-8 ({e.reason} at byte {e.start})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigFileError(path, [f"{where}not valid YAML ({getattr(e, 'problem', None) or e})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(path, [f"expected a mapping of sections (source, model, ...), got {type(data).__name__}"])
    return data


def validation_problems(e: ValidationError) -> list[str]:
    out = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        out.append(f"{key}: {msg}" + (f" (got {err['input']!r})" if err["type"] not in ("extra_forbidden", "missing")
                                      and not isinstance(err.get("input"), (dict, list)) else ""))
    return out


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(path: Path | None, overrides: dict | None = None, environ=None) -> ServiceConfig:
    """File (if any) < environment secrets < explicit overrides (CLI flags); every problem at once."""
    environ = os.environ if environ is None else environ
    data = read_yaml(path) if path is not None else {}
    for var, (section, key) in ENV_SECRETS.items():
        if environ.get(var) and not (isinstance(data.get(section), dict) and data[section].get(key)):
            data = merge(data, {section: {key: environ[var]}})
    data = merge(data, overrides or {})
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigFileError(path or Path("<flags>"), validation_problems(e)) from None


def check_file(path: Path) -> list[str]:
    """Every problem in the file; [] when it is valid."""
    try:
        build_config(path, environ={})
    except ConfigFileError as e:
        return e.problems
    return []


def example_yaml() -> str:
    """A full, commented config: every key at its default, with what it means."""
    lines = ["# inspect-edge service config: `inspect-edge run --config FILE`.",
             "# Every key is optional; these are the defaults. `inspect-edge config check FILE` validates it.",
             "# The auth token is better given as INSPECT_EDGE_AUTH_TOKEN than written here."]
    _emit(ServiceConfig(), lines, 0)
    return "\n".join(lines) + "\n"


def _emit(model: BaseModel, lines: list[str], depth: int) -> None:
    pad = "  " * depth
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if depth == 0 and isinstance(value, BaseModel):
            lines.append("")
        if field.description:
            lines.append(f"{pad}# {field.description}")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            _emit(value, lines, depth + 1)
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}")
        if depth == 0 and name == "cameras":
            lines.extend(CAMERAS_EXAMPLE)


def _scalar(value: Any) -> str:
    if value is None or hasattr(value, "get_secret_value"):  # a secret's default is never written out
        return "null"
    value = str(value) if isinstance(value, Path) else value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
