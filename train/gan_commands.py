"""`train gan`, `train synthesize`, `train augment-and-fit`, `train label-curve`: flags map
onto the GAN stage's configs (GanConfig, SynthConfig, AugmentConfig, StudyConfig); torch is
imported inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from train.gan.augment_and_fit import DEFAULT_METHOD, DEFAULT_SCHEDULE, METHOD_WHY, SCHEDULE_WHY


def _numbers(text: str, kind, what: str) -> tuple:
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{what}: expected comma-separated numbers, got {text!r}") from None


def register(app: typer.Typer) -> None:
    @app.command()
    def gan(
        data: Path = typer.Option(..., "--data", help="Data set folder (Severstal CSV or mask folders)."),
        out: Path = typer.Option(..., "--out", help="Run folder (generator.pt, samples/, gan_metrics.json)."),
        steps: int = typer.Option(3000, "--steps", help="Training steps (one batch each)."),
        time_budget_min: Optional[float] = typer.Option(None, "--time-budget-min", help="Stop by itself after this many minutes (still saves and measures)."),
        crop: int = typer.Option(128, "--crop", help="Square crop size the generator paints in (multiple of 8)."),
        batch_size: int = typer.Option(8, "--batch-size"),
        base: int = typer.Option(16, "--base", help="Generator width (channels after the stem)."),
        seed: int = typer.Option(0, "--seed"),
        labelled_fraction: float = typer.Option(1.0, "--labelled-fraction", help="Share of training images that keep their masks (seeded, as in `train fit`)."),
        sample_every: int = typer.Option(250, "--sample-every", help="Write a sample grid every N steps."),
        checkpoint_every: int = typer.Option(250, "--checkpoint-every"),
        eval_pairs: int = typer.Option(256, "--eval-pairs", help="Held-out real defects used for gan_metrics.json."),
        unlabelled: Optional[Path] = typer.Option(None, "--unlabelled-data", help="Images without masks (a data set folder, whose masks are ignored, or any image folder): a share of each batch teaches the generator steel texture from them."),
        unlabelled_share: float = typer.Option(0.5, "--unlabelled-share", help="Share of each batch drawn from --unlabelled-data."),
        segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="A `train fit` run whose encoder gives the Fréchet-distance features (default: a seeded random conv net)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from RUN/gan_checkpoint.pt."),
        noise_channels: int = typer.Option(4, "--noise-channels", help="Noise maps in the hole (0: one fill per mask)."),
        ffl_weight: float = typer.Option(100.0, "--ffl-weight", help="Focal frequency (texture) loss weight; 0 off."),
        ms_weight: float = typer.Option(1.0, "--ms-weight", help="Mode-seeking (diversity) weight; 0 off; needs noise."),
        measure_at: str = typer.Option("", "--measure-at-min", help="Comma-separated training minutes at which to measure (quality_curve.json)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    ) -> None:
        """Fit the mask-conditioned inpainting GAN that paints defects into masks on real steel."""
        from train.gan.fit_gan import GanConfig, fit_gan

        try:
            cfg = GanConfig(
                data=str(data), out=str(out), steps=steps, time_budget_min=time_budget_min, crop=crop, batch_size=batch_size,
                base=base, seed=seed, labelled_fraction=labelled_fraction, sample_every=sample_every,
                checkpoint_every=checkpoint_every, eval_pairs=eval_pairs, resume=resume, threads=threads, device=device,
                noise_channels=noise_channels, ffl_weight=ffl_weight, ms_weight=ms_weight,
                measure_at_min=_numbers(measure_at, float, "--measure-at-min"),
                unlabelled_data=str(unlabelled) if unlabelled else None, unlabelled_share=unlabelled_share,
                feature_net="segmenter" if segmenter else "random", segmenter_run=str(segmenter) if segmenter else None,
            )
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        m = fit_gan(cfg)
        if "gan" in m:
            g, t = m["gan"], m["telea"]
            typer.echo(
                f"{out}: {m['steps']} steps; held-out masked L1 {g['masked_l1']:.4f} (Telea {t['masked_l1']:.4f}), "
                f"PSNR {g['masked_psnr_db']:.2f} dB (Telea {t['masked_psnr_db']:.2f}), "
                f"Fréchet {g['frechet_distance']:.4f} (Telea {t['frechet_distance']:.4f})"
            )

    @app.command()
    def synthesize(
        data: Path = typer.Option(..., "--data", help="Labelled data set: backgrounds and the bank of real defect shapes."),
        out: Path = typer.Option(..., "--out", help="Folder for the synthetic data set (same format as --data) + manifest.json."),
        count: int = typer.Option(..., "--count", help="Number of synthetic images."),
        method: str = typer.Option("gan", "--method", help="gan (needs --generator) or copy-paste."),
        generator: Optional[Path] = typer.Option(None, "--generator", help="A `train gan` run folder (or its generator.pt)."),
        seed: int = typer.Option(0, "--seed"),
        labelled_fraction: float = typer.Option(1.0, "--labelled-fraction", help="Use only this seeded share of training images."),
        max_defects: int = typer.Option(2, "--max-defects", help="New defects per image, 1..N."),
    ) -> None:
        """Write N synthetic pairs: real defect shapes placed on real backgrounds, painted by the GAN or copy-pasted."""
        from train.gan.synthesize import run_synthesize

        try:
            res = run_synthesize(str(data), str(out), count, method, str(generator) if generator else None, seed=seed,
                                 labelled_fraction=labelled_fraction, max_defects_per_image=max_defects)
        except (ValueError, FileNotFoundError) as e:
            raise typer.BadParameter(str(e)) from None
        typer.echo(f"{out}: {res['count']} synthetic images ({method}, {res['format']}), shape bank {res['shape_bank']}")

    @app.command("augment-and-fit")
    def augment_and_fit(
        data: list[Path] = typer.Option(..., "--data", help="Data set folder; repeat to merge several with the same classes (e.g. the line's reviewed frames and the original data)."),
        out: Path = typer.Option(..., "--out", help="Run folder: gan/, data/, runs/, report.md, report.json."),
        generator: Optional[Path] = typer.Option(None, "--generator", help="Reuse this `train gan` run instead of fitting one."),
        count: int = typer.Option(300, "--count", help="Synthetic pairs per synthetic arm."),
        method: str = typer.Option(DEFAULT_METHOD, "--method", help=f"Painter: copy-paste, gan or gan-blend (default {DEFAULT_METHOD}: {METHOD_WHY})."),
        synthetic_per_batch: int = typer.Option(4, "--synthetic-per-batch", help="Synthetic crops on top of each batch of real ones."),
        schedule: str = typer.Option(DEFAULT_SCHEDULE, "--schedule", help=f"mix (synthetic crops in every batch) or pretrain-finetune (synthetic alone first, then real); default {DEFAULT_SCHEDULE}: {SCHEDULE_WHY}."),
        labelled_fraction: float = typer.Option(1.0, "--labelled-fraction", help="Share of training images that keep their masks (seeded)."),
        seed: int = typer.Option(0, "--seed"),
        ablation: bool = typer.Option(False, "--ablation/--no-ablation", help="Also fit real-only and every other painter (same seed and real passes)."),
        size: str = typer.Option("nano", "--size", help="Segmenter size."),
        gan_steps: int = typer.Option(3000, "--gan-steps"),
        gan_time_budget_min: Optional[float] = typer.Option(None, "--gan-time-budget-min"),
        gan_crop: int = typer.Option(128, "--gan-crop"),
        gan_batch_size: int = typer.Option(8, "--gan-batch-size"),
        gan_base: int = typer.Option(16, "--gan-base", help="Generator width (smaller trains faster on a CPU)."),
        gan_eval_pairs: int = typer.Option(256, "--gan-eval-pairs", help="Held-out real defects for gan_metrics.json."),
        fit_epochs: int = typer.Option(30, "--fit-epochs", help="Segmenter epochs per arm (cut to the budget)."),
        fit_time_budget_min: Optional[float] = typer.Option(None, "--fit-time-budget-min", help="Training minutes for the first arm (the chosen method); the other arms run as many epochs."),
        fit_batch_size: int = typer.Option(8, "--fit-batch-size"),
        fit_val_images: int = typer.Option(200, "--fit-val-images", help="Held-out images (seeded subset) the segmenter validates and calibrates on; 0 = all. Scores always use all."),
        crop_width: int = typer.Option(512, "--crop-width"),
        crop_height: Optional[int] = typer.Option(None, "--crop-height"),
        max_defects_per_image: int = typer.Option(2, "--max-defects-per-image"),
        threads: Optional[int] = typer.Option(None, "--threads"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """GAN -> synthetic pairs -> segmenter on real + synthetic -> evaluation -> report.md (with --ablation: three arms)."""
        from train.gan.augment_and_fit import AugmentConfig
        from train.gan.augment_and_fit import augment_and_fit as run

        try:
            cfg = AugmentConfig(
                data=str(data[0]) if len(data) == 1 else [str(d) for d in data], out=str(out), generator=str(generator) if generator else None, count=count,
                method=method, synthetic_per_batch=synthetic_per_batch, schedule=schedule,
                labelled_fraction=labelled_fraction, seed=seed, ablation=ablation, size=size, gan_steps=gan_steps,
                gan_time_budget_min=gan_time_budget_min, gan_crop=gan_crop, gan_batch_size=gan_batch_size, gan_base=gan_base,
                gan_eval_pairs=gan_eval_pairs,
                fit_epochs=fit_epochs, fit_time_budget_min=fit_time_budget_min, fit_batch_size=fit_batch_size, fit_val_images=fit_val_images,
                crop_width=crop_width, crop_height=crop_height, max_defects_per_image=max_defects_per_image,
                threads=threads, device=device,
            )
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        run(cfg)

    @app.command("label-curve")
    def label_curve(
        data: Path = typer.Option(..., "--data", help="Data set with train and val splits (e.g. NEU-Seg)."),
        out: Path = typer.Option(..., "--out", help="Study folder: cells/, runs/, gan/, synthetic/, report.md, report.json."),
        fractions: str = typer.Option("0.05,0.1,0.02", "--fractions", help="Labelled fractions, run in this order (nested subsets)."),
        seeds: str = typer.Option("0,1,2", "--seeds", help="Segmenter seeds per (fraction, arm)."),
        arms: str = typer.Option("real,copy-paste,gan,gan-blend,real-equal-crops", "--arms", help="Arms; 'real' is required (the paired baseline). A '-pretrain' suffix (e.g. gan-blend-pretrain) pre-trains on the synthetic pairs alone, then fine-tunes on the real ones; '-neg-pretrain' (copy-paste-neg-pretrain, gan-blend-neg-pretrain) adds defect-free negatives, erased by Telea or by the GAN. Equal-compute controls on the real labels alone: 'real-pretrain' (as many pre-train steps) and 'real-equal-crops' (as many crops per step as the mixed arms). 'gan-unlabelled': a GAN that also learns from the fraction's other training images with their masks withheld."),
        ceiling: bool = typer.Option(True, "--ceiling/--no-ceiling", help="Also real-only on all training labels."),
        real_steps: int = typer.Option(800, "--real-steps", help="Steps of real batches per cell (same for every arm)."),
        ceiling_epochs: int = typer.Option(3, "--ceiling-epochs"),
        synthetic_per_batch: int = typer.Option(4, "--synthetic-per-batch", help="Synthetic crops added on top of each real batch."),
        count: int = typer.Option(300, "--count", help="Synthetic pairs per fraction and painter."),
        pretrain_steps: int = typer.Option(400, "--pretrain-steps", help="'-pretrain' arms: steps of --batch-size synthetic crops before the real fine-tune."),
        negatives: int = typer.Option(100, "--negatives", help="'-neg' arms: real labelled images with their defects erased, added to the pre-train set."),
        gan_minutes: float = typer.Option(6.0, "--gan-minutes", help="GAN training minutes per fraction."),
        gan_steps: Optional[int] = typer.Option(None, "--gan-steps", min=1, help="Train each GAN this many steps instead of --gan-minutes (the same GAN on a busy or a quiet CPU)."),
        fit_val_images: int = typer.Option(150, "--fit-val-images", help="Held-out images the segmenter calibrates on; 0 = all."),
        batch_size: int = typer.Option(8, "--batch-size", help="Real crops per step."),
        crop_height: int = typer.Option(176, "--crop-height", help="Segmenter training crop (NEU-Seg frames are 200x200)."),
        crop_width: int = typer.Option(176, "--crop-width"),
        gan_crop: int = typer.Option(96, "--gan-crop", help="Square crop the generator paints in (multiple of 8)."),
        gan_base: int = typer.Option(12, "--gan-base", help="Generator width."),
        gan_measure_at_min: str = typer.Option("", "--gan-measure-at-min", help="Also measure each generator at these training minutes (gan/<fraction>/quality_curve.json), e.g. 3,6,10,15."),
        size: str = typer.Option("nano", "--size"),
        threads: Optional[int] = typer.Option(2, "--threads"),
        device: str = typer.Option("auto", "--device"),
        report_only: bool = typer.Option(False, "--report-only", help="Only rewrite the report from the cells done so far."),
        reuse_cells: list[Path] = typer.Option([], "--reuse-cells", help="A report.json (e.g. a committed study's) whose cells count as done for this study's planned cells; repeatable."),
    ) -> None:
        """The label-efficiency study: real-only vs copy-paste vs GAN vs hybrid at several labelled fractions and seeds."""
        from train.gan.label_curve import StudyConfig, run_study
        from train.gan.label_curve_report import write_study_report

        if report_only:
            if not (out / "study_config.json").is_file():
                raise typer.BadParameter(f"{out}: no study_config.json (no study was started there)")
            r = write_study_report(out)
        else:
            try:
                cfg = StudyConfig(
                    data=str(data), out=str(out), fractions=_numbers(fractions, float, "--fractions"), seeds=_numbers(seeds, int, "--seeds"),
                    arms=tuple(a.strip() for a in arms.split(",") if a.strip()), ceiling=ceiling, real_steps=real_steps,
                    ceiling_epochs=ceiling_epochs, synthetic_per_batch=synthetic_per_batch, count=count, gan_minutes=gan_minutes, gan_steps=gan_steps,
                    pretrain_steps=pretrain_steps, negatives=negatives,
                    fit_val_images=fit_val_images, batch_size=batch_size, crop_height=crop_height, crop_width=crop_width,
                    gan_crop=gan_crop, gan_base=gan_base, size=size, threads=threads, device=device,
                    gan_options={"measure_at_min": _numbers(gan_measure_at_min, float, "--gan-measure-at-min")} if gan_measure_at_min.strip() else {},
                )
                r = run_study(cfg, reuse=reuse_cells)
            except ValueError as e:
                raise typer.BadParameter(str(e)) from None
        goal = "met" if r["verdict"]["goal_met"] else "NOT met"
        typer.echo(f"{out / 'report.md'}: {r['cells_done']} cells; goal {goal}; best method {r['best_method']} ({r['best_method_why']})")
