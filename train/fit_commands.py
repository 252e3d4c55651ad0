"""`train fit`, `train evaluate` and `train calibrate`: flags map one-to-one onto FitConfig / evaluate() / recalibrate()."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def fit(
        data: list[Path] = typer.Option(..., "--data", help="Data set folder (Severstal CSV, mask folders, CVAT masks); repeat to merge several with the same classes."),
        out: Path = typer.Option(..., "--out", help="Run folder to write (checkpoints, model_info.json, metrics, pictures)."),
        size: str = typer.Option("nano", "--size", help="Model size: nano, nano-deep, small or base."),
        epochs: int = typer.Option(30, "--epochs", help="Epochs (cut to fit --time-budget-min)."),
        time_budget_min: Optional[float] = typer.Option(None, "--time-budget-min", help="Stop by itself within this many minutes of training."),
        batch_size: int = typer.Option(8, "--batch-size"),
        crop_width: int = typer.Option(512, "--crop-width", help="Random crop width along the strip."),
        crop_height: Optional[int] = typer.Option(None, "--crop-height", help="Random crop height (default: full frame height)."),
        lr: float = typer.Option(2e-3, "--lr", help="Peak AdamW learning rate (warm-up then cosine)."),
        seed: int = typer.Option(0, "--seed"),
        workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="last.pt (or a run folder) to continue from."),
        init_weights: Optional[Path] = typer.Option(None, "--init-weights", help="Start from this run's (or checkpoint's) weights with a new optimiser and schedule: fine-tuning."),
        split: Optional[str] = typer.Option(None, "--split", help="Training split (default: 'train' if present)."),
        val_fraction: float = typer.Option(0.2, "--val-fraction", help="Seeded hold-out when the data set has no 'val' split."),
        labelled_fraction: float = typer.Option(1.0, "--labelled-fraction", help="Fraction of training images kept (seeded)."),
        defect_crop_prob: float = typer.Option(0.5, "--defect-crop-prob", help="Share of training crops placed over a defect."),
        pos_weight: Optional[str] = typer.Option(None, "--pos-weight", help="Per class, comma-separated: weight of a defect pixel in the BCE term (e.g. 20,20,1,1 for thin pits and cracks)."),
        weight_other_classes: bool = typer.Option(False, "--weight-other-classes", help="With --pos-weight: a pixel of another defect class counts against a class as much as its own defect pixel (stops a heavily weighted class firing on every mark)."),
        lovasz_weight: float = typer.Option(0.0, "--lovasz-weight", help="Add a Lovasz IoU term (each class's pooled IoU, the metric NEU-Seg papers report) to BCE + Dice with this weight; 0: off."),
        calibrate_for: str = typer.Option("competition", "--calibrate-for", help="Thresholds and minimum areas chosen for 'competition' Dice (rewards silence on clean images), 'balanced' (its mean with Dice on the images where the class is present) or 'iou' (each class's pixel IoU over the split, the mIoU papers publish)."),
        ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="Validate, calibrate and ship an exponential moving average of the weights (e.g. 0.999)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads per process."),
    ) -> None:
        """Train a segmenter, calibrate thresholds/min areas on validation, write a run folder."""
        from train.config import FitConfig
        from train.fit import fit as run_fit

        try:
            cfg = FitConfig(
                data=str(data[0]) if len(data) == 1 else [str(d) for d in data], out=str(out), size=size, epochs=epochs, time_budget_min=time_budget_min,
                batch_size=batch_size, crop_width=crop_width, crop_height=crop_height, lr=lr, seed=seed,
                workers=workers, resume=str(resume) if resume else None, init_weights=str(init_weights) if init_weights else None, split=split, val_fraction=val_fraction,
                labelled_fraction=labelled_fraction, device=device, threads=threads, defect_crop_prob=defect_crop_prob,
                pos_weight=_weights(pos_weight), weight_other_classes=weight_other_classes,
                lovasz_weight=lovasz_weight, calibrate_for=calibrate_for, ema_decay=ema_decay,
            )
            from train.model import SIZES

            if size not in SIZES:
                raise ValueError(f"unknown model size {size!r}; valid sizes: {', '.join(SIZES)}")
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        metrics = run_fit(cfg)
        if metrics:
            typer.echo(
                f"{out}: {metrics['epochs_run']} epoch(s), best epoch {metrics['best_epoch']}, "
                f"validation competition Dice {metrics['val_competition_dice_calibrated']:.4f} (calibrated)"
            )

    @app.command()
    def evaluate(
        run: Path = typer.Argument(..., help="Run folder written by `train fit` (or a best.pt)."),
        data: Path = typer.Option(..., "--data", help="Data set folder."),
        split: Optional[str] = typer.Option(None, "--split", help="Split to score (default: 'val', else the run's hold-out)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Where to write evaluation.json (default: the run folder)."),
        batch_size: int = typer.Option(8, "--batch-size"),
    ) -> None:
        """Per-class Dice/IoU, competition Dice, confusion summary, inference time; evaluation.json + worst_cases.png."""
        from train.evaluate import evaluate as run_evaluate

        where = out or (run if run.is_dir() else run.parent)
        res = run_evaluate(run, data, split, batch_size=batch_size, out=where)
        from rich.console import Console
        from rich.table import Table

        from rich.markup import escape

        # escape(): rich would read "[val, 894 images]" as markup and drop it.
        table = Table(title=escape(f"{run} on {data} [{res['split']}, {res['n_images']} images]"))
        for col in ("class", "Dice (all pairs)", "Dice (present)", "Dice (pixels)", "IoU", "missed", "false"):
            table.add_column(col)
        for c in res["classes"]:
            conf = res["confusion"]["per_class"][c]
            table.add_row(c, _f(res["per_class_dice"][c]), _f(res["per_class_dice_present"][c]), _f(res["per_class_dice_pixels"][c]),
                          _f(res["per_class_iou"][c]), str(conf["missed"]), str(conf["false"]))
        table.add_row("background", "", "", "", _f(res["background_iou"]), "", "")
        console = Console()
        console.print(table)
        console.print(
            f"mIoU incl. background {_f(res['miou_incl_background'])} (what NEU-Seg papers report); "
            f"mIoU of the defect classes only {_f(res['mean_iou'])}"
        )
        console.print(
            f"competition Dice {res['competition_dice']:.4f} (all-empty baseline {res['all_empty_baseline_dice']:.4f}); "
            f"images with a missed defect {res['confusion']['images_with_missed_defect']}, with a false defect "
            f"{res['confusion']['images_with_false_defect']}; {res['inference_ms_per_image']:.1f} ms/image; "
            f"written to {where / res['written_to']}"
        )


    @app.command("calibrate")
    def calibrate_run(
        run: Path = typer.Argument(..., help="Run folder written by `train fit`."),
        data: Path = typer.Option(..., "--data", help="Data set folder."),
        split: Optional[str] = typer.Option(None, "--split", help="Split to calibrate on (default: 'val', else the run's hold-out)."),
        objective: str = typer.Option("iou", "--objective", help="competition, balanced or iou (see `train fit --calibrate-for`)."),
        tta: Optional[str] = typer.Option(None, "--tta", help="Flip test-time augmentation the model runs with from now on, everywhere it runs: none, h (along the strip), v or hv (4 views). Default: keep the run's."),
        batch_size: int = typer.Option(8, "--batch-size"),
    ) -> None:
        """Choose a finished run's thresholds and minimum areas again for another objective (weights unchanged)."""
        from train.recalibrate import recalibrate

        try:
            cal = recalibrate(run, data, split, objective=objective, batch_size=batch_size, tta=tta)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        typer.echo(
            f"{run}: calibrated for {cal['objective']} on {cal['n_images']} {cal['split']} images: thresholds "
            f"{cal['thresholds']} min areas {cal['min_areas']} (were {cal['previous']['thresholds']} / "
            f"{cal['previous']['min_areas']}); score {cal['score']:.4f}, competition Dice {cal['competition_dice']:.4f}"
        )

def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--pos-weight: comma-separated numbers, one per class, got {text!r}") from None
