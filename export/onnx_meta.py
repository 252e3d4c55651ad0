"""What an `.onnx` file says about itself, read without torch: its ModelInfo and its graph hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from inspect_edge.model_info import ModelInfo


def graph_hash(model: onnx.ModelProto) -> str:
    """SHA-256 of the serialized graph (weights and structure, not the metadata)."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def read_metadata(path: str | Path) -> ModelInfo:
    """ModelInfo from an `.onnx` (raises ModelInfoError / onnx's DecodeError)."""
    proto = onnx.load(str(path), load_external_data=False)
    return ModelInfo.from_metadata_props({p.key: p.value for p in proto.metadata_props}, str(path))


def content_hash_matches(path: str | Path) -> bool:
    """True when the graph in `path` is the one the metadata's content_hash was computed from."""
    proto = onnx.load(str(path))
    info = ModelInfo.from_metadata_props({p.key: p.value for p in proto.metadata_props}, str(path))
    return graph_hash(proto) == info.content_hash
