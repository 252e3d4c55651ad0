"""`inspect-edge`: the edge runtime's command line."""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from inspect_edge import __version__

app = typer.Typer(
    help=(
        "inspect-edge: find surface defects on a moving steel strip in real time.\n\n"
        "Start with `inspect-edge run` (no camera needed: it serves a synthetic strip "
        "through the built-in model on http://127.0.0.1:8000)."
    ),
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the inspect-edge version."""
    typer.echo(__version__)


def _mount_plugins() -> None:
    # Groups such as `export` need torch or TensorRT; they are registered by the
    # distribution (pyproject entry points) so this torch-free package never
    # imports them by name. Each group must itself import heavy modules lazily.
    for ep in entry_points(group="inspect_edge.commands"):
        app.add_typer(ep.load(), name=ep.name)


def main() -> None:
    _mount_plugins()
    app()


if __name__ == "__main__":
    main()
