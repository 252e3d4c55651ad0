"""`inspect-edge export ...`: turn a training run into what the edge service loads.

Imported by the torch-free CLI, so torch, onnx and tensorrt are imported inside
the commands, never at module level.
"""

from __future__ import annotations

import typer

app = typer.Typer(help="Export a trained model: `onnx` (needs the train extra), `engine` (needs TensorRT).",
                  no_args_is_help=True)
