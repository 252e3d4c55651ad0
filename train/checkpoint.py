"""Our checkpoint format and loading a trained run back.

A checkpoint is a torch-saved dict tagged `format: inspect-edge-segmenter`; anything
else (another project's .pt, a truncated file, a plain state_dict) is refused with a
one-line `CheckpointError` that names the file.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from inspect_edge.model_info import ModelInfo, ModelInfoError
from train.model import UNetConfig, UNet, build_model

FORMAT = "inspect-edge-segmenter"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a readable inspect-edge segmenter checkpoint; the message names it."""


def save_checkpoint(path: Path, **fields) -> None:
    """Write atomically (temp file + rename), so an interrupted run never leaves half a best.pt."""
    path = Path(path)
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **fields}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(record, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint dict (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        # weights_only=True: a checkpoint is data, never code to run.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {reason[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an inspect-edge segmenter checkpoint (no format={FORMAT!r} tag)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {ckpt.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    for key in ("model_config", "state_dict", "model_info"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def model_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> UNet:
    try:
        model = build_model(UNetConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (ValueError, TypeError, RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{source}: weights do not fit the model config: {first[:200]}") from None
    return model.eval()


def load_run(path: str | Path) -> tuple[UNet, ModelInfo]:
    """(model in eval mode on the CPU, ModelInfo) from a run folder or a .pt file.

    For a run folder the calibrated `model_info.json` wins over the copy inside
    best.pt (calibration happens after the checkpoint is written).
    """
    path = Path(path)
    info_path = None
    if path.is_dir():
        ckpt_path = path / "best.pt"
        if not ckpt_path.is_file():
            raise CheckpointError(f"{path}: not a run folder (no best.pt)")
        info_path = path / "model_info.json"
    else:
        ckpt_path = path
    ckpt = read_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, str(ckpt_path))
    try:
        if info_path is not None and info_path.is_file():
            info = ModelInfo.load(info_path)
        else:
            info = ModelInfo.from_dict(ckpt["model_info"], f"{ckpt_path} model_info")
    except ModelInfoError as e:
        raise CheckpointError(str(e).splitlines()[0]) from None
    if info.num_classes != model.config.num_classes or info.input_channels != model.config.in_channels:
        raise CheckpointError(
            f"{ckpt_path}: model_info ({info.num_classes} classes, {info.input_channels} channels) does not match "
            f"the weights ({model.config.num_classes} classes, {model.config.in_channels} channels)"
        )
    return model, info
