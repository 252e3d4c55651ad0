"""`train`: data tools, segmenter training and evaluation, GAN augmentation.

Each group of commands lives in its own module with a `register(app)` function;
heavy imports (torch) happen inside the commands, so `train --help` is instant.
"""

from __future__ import annotations

import typer

from train import data_commands, fit_commands, gan_commands

app = typer.Typer(
    help=(
        "Train and evaluate steel defect segmenters.\n\n"
        "Typical first run: `train synth-data --out data/synth --count 400` then "
        "`train inspect-data data/synth`, then `train fit --data data/synth --out runs/nano`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (data_commands, fit_commands, gan_commands):
    module.register(app)


def main() -> None:
    # A data set that cannot be used is the user's to fix: one line naming the file
    # (DataError messages do), status 2 like a bad flag, not a page of typer frames.
    import sys

    from inspect_edge.data import DataError

    try:
        app()
    except DataError as e:
        print(f"train: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
