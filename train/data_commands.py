"""`train synth-data` and `train inspect-data`: make and look at steel data sets.

Torch-free on purpose: these commands run on any box with the base install.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def synth_data(
    out: Path = typer.Option(..., "--out", help="Folder to write (Severstal format: train.csv + train_images/)."),
    count: int = typer.Option(400, "--count", help="Number of strips."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same strips."),
    height: int = typer.Option(256, "--height", help="Strip height in pixels (across the strip)."),
    width: int = typer.Option(1600, "--width", help="Strip width in pixels (along rolling)."),
    defect_free_share: float = typer.Option(0.5, "--defect-free-share", help="Share of strips without defects."),
    video: Optional[Path] = typer.Option(None, "--video", help="Also write a moving-strip video (.mp4/.avi)."),
    video_frames: int = typer.Option(250, "--video-frames", help="Frames in the video."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also write a PNG of a few strips with masks."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a data set already in --out."),
) -> None:
    """Generate synthetic rolled-steel strips with defect masks (Severstal format)."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from inspect_edge.data import Sample
    from inspect_edge.data.severstal import SeverstalWriter
    from inspect_edge.data.synthetic import SYNTH_CLASSES, MovingStrip, StripConfig, generate_strip, write_video
    from inspect_edge.data.synthetic_preview import render_preview

    if count < 0:
        _fail(f"--count must be >= 0, got {count}")
    if video is not None and video.suffix.lower() not in (".mp4", ".avi", ".mkv"):
        _fail(f"--video {video}: must end in .mp4, .avi or .mkv")
    if video_frames < 1:
        _fail(f"--video-frames must be >= 1, got {video_frames}")
    if preview is not None and preview.suffix.lower() != ".png":
        _fail(f"--preview {preview}: must end in .png")
    cfg = StripConfig(height=height, width=width, defect_free_share=defect_free_share)
    try:
        cfg.validate()
    except ValueError as e:
        _fail(str(e))
    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: exists and is not a folder")
    if (out / "train.csv").exists() and not overwrite:
        _fail(f"--out {out}: already holds a data set (train.csv); pass --overwrite to replace it")
    if overwrite and (out / "train_images").is_dir():
        for p in (out / "train_images").glob("*.jpg"):
            p.unlink()

    kept: list[tuple] = []
    t0 = time.perf_counter()
    try:
        with SeverstalWriter(out, SYNTH_CLASSES) as writer, Progress(
            TextColumn("[bold]synth-data[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err_console, transient=False,
        ) as bar:
            task = bar.add_task("strips", total=count)
            for i in range(count):
                # One generator per strip index: strip i is the same whatever --count is.
                image, masks = generate_strip(np.random.default_rng([seed, i]), cfg)
                writer.add(Sample(f"synth_{seed}_{i:05d}.jpg", image, masks))
                if preview is not None and len(kept) < 5:
                    defective = sum(m.any() for _, m in kept)
                    if masks.any() and defective < 4 or not masks.any() and len(kept) - defective < 1:
                        kept.append((image, masks))
                bar.advance(task)
    except OSError as e:
        _fail(f"--out {out}: {e}")
    seconds = time.perf_counter() - t0
    record = {
        "command": "synth-data",
        "seed": seed,
        "count": count,
        "config": dataclasses.asdict(cfg),
        "classes": list(SYNTH_CLASSES),
        "seconds": round(seconds, 2),
        "strips_per_minute": round(60 * count / seconds, 1) if seconds > 0 and count else None,
    }
    console.print(f"wrote {count} strips to {out} in {seconds:.1f} s "
                  f"({record['strips_per_minute'] or 0:.0f} strips/min)", soft_wrap=True)
    if preview is not None and kept:
        render_preview(preview, kept, SYNTH_CLASSES, f"seed {seed}")
        console.print(f"preview: {preview}")
        record["preview"] = str(preview)
    if video is not None:
        t1 = time.perf_counter()
        strip = MovingStrip(frame_height=height, frame_width=width, seed=seed, defect_free_share=defect_free_share)
        try:
            write_video(video, strip, video_frames)
        except (OSError, ValueError) as e:
            _fail(str(e))
        console.print(f"video: {video} ({video_frames} frames, {time.perf_counter() - t1:.1f} s)")
        record["video"] = {"path": str(video), "frames": video_frames}
    (out / "synth_config.json").write_text(json.dumps(record, indent=2) + "\n")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x >= 0.001 or x == 0 else f"{100 * x:.3f}%"


def inspect_data(
    directory: Path = typer.Argument(..., metavar="DIR", help="A Severstal folder or a mask folder."),
    strict: bool = typer.Option(False, "--strict", help="Any problem in the data is an error (exit 2)."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    max_problems: int = typer.Option(20, "--max-problems", help="Problems listed in full (all are counted)."),
) -> None:
    """Print what a data set holds: images, defect-free share, per-class counts and pixel share, sizes, problems."""
    from inspect_edge.data import DataError, open_dataset

    # Problems are printed below as a list; per-problem log lines would only repeat them.
    logging.getLogger("inspect_edge.data").setLevel(logging.ERROR)
    try:
        ds = open_dataset(directory, strict=strict, split=split)
    except DataError as e:
        _fail(str(e))
    s = ds.summary()
    if as_json:
        console.print_json(json.dumps(s))
        return
    console.print(f"[bold]{s['root']}[/]  format: {s['format']}", highlight=False, soft_wrap=True)
    splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items())
    console.print(f"images: {s['images']} ({splits})   defect-free: {s['defect_free']} "
                  f"({_pct(s['defect_free_share'])})   with more than one class: {s['multi_class_images']}",
                  soft_wrap=True)
    sizes = ", ".join(f"{k} x{v}" for k, v in s["image_sizes"].items()) or "-"
    console.print(f"image sizes (WxH): {sizes}", highlight=False, soft_wrap=True)
    table = Table(title=None, show_edge=False)
    for col in ("class", "images", "share of images", "pixels", "pixel share"):
        table.add_column(col, justify="left" if col == "class" else "right")
    n = max(s["images"], 1)
    for name, c in s["classes"].items():
        table.add_row(name, str(c["images"]), _pct(c["images"] / n), str(c["pixels"]), _pct(c["pixel_share"]))
    console.print(table)
    if s["problems"]:
        console.print(f"[yellow]problems: {s['problems']} (bad items skipped)[/]")
        for line in s["problem_list"][:max_problems]:
            console.print(f"  {line}", highlight=False, soft_wrap=True)
        if s["problems"] > max_problems:
            console.print(f"  ... and {s['problems'] - max_problems} more")
    else:
        console.print("problems: none")


def register(app: typer.Typer) -> None:
    app.command("synth-data")(synth_data)
    app.command("inspect-data")(inspect_data)
