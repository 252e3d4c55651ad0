"""One bench run: models -> engine timings and agreement -> pipeline and freshness -> record."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from inspect_edge.bench.contenders import BenchModel, builtin_contenders, load_plugins
from inspect_edge.bench.engines import TimingBudget, mask_agreement, time_model
from inspect_edge.bench.pipeline_bench import PipelineBenchConfig, run_pipeline_bench
from inspect_edge.bench.report import evaluate_targets, machine_info, to_markdown, write_json


class BenchError(ValueError):
    """The bench cannot run as asked; the message says what to change."""


@dataclass
class BenchConfig:
    out: Path
    models: list[Path] = field(default_factory=list)   # .onnx files, or run folders / .pt (needs torch)
    sizes: list[str] = field(default_factory=list)     # build random-weight models of these sizes (needs torch)
    input_height: int = 256
    input_width: int = 512
    batches: list[int] = field(default_factory=lambda: [1, 2, 4])
    threads: list[int] = field(default_factory=lambda: sorted({1, os.cpu_count() or 1}))
    pipeline_threads: int | None = None                # default: the largest of `threads`
    budget: TimingBudget = TimingBudget()
    agreement_images: int = 8
    tensorrt: bool = True
    plugins: bool = True
    pipeline: bool = True
    pipeline_model: str | None = None                  # label of the model for the pipeline run; default first
    pipeline_cfg: PipelineBenchConfig = PipelineBenchConfig()
    frame_height: int = 256
    frame_width: int = 1600
    command: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d, default=str))


def _onnx_model(path: Path) -> BenchModel:
    from inspect_edge.backends import open_backend

    with open_backend(path, "onnxruntime", 1) as b:
        info = b.info
    return BenchModel(label=path.stem, onnx=path, info=info, random_weights=False, origin="ONNX file")


def strip_frames(height: int, width: int, n: int = 16, seed: int = 0) -> list[np.ndarray]:
    from inspect_edge.data.synthetic import MovingStrip

    strip = MovingStrip(frame_height=height, frame_width=width, seed=seed)
    return [strip.next_frame()[0] for _ in range(n)]


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    if not cfg.models and not cfg.sizes:
        raise BenchError("nothing to time: give --model FILE (repeatable) or --sizes nano,small,base")
    if any(b < 1 for b in cfg.batches) or not cfg.batches:
        raise BenchError(f"--batches: positive integers, got {cfg.batches}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    machine = machine_info()
    plugins, problems = load_plugins() if cfg.plugins else ([], ["plugins: disabled (--no-plugins)"])
    skipped = list(problems)
    notes: list[str] = []

    models: list[BenchModel] = []
    weights = [p for p in cfg.models if p.is_dir() or p.suffix.lower() != ".onnx"]
    if (cfg.sizes or weights) and not plugins:
        raise BenchError("building models by size or from checkpoints needs PyTorch (the train extra); "
                         f"pass --model FILE.onnx instead ({'; '.join(problems) or 'no contender plugin installed'})")
    if cfg.sizes:
        log(f"building random-weight models {cfg.sizes} at {cfg.input_height}x{cfg.input_width} (ONNX export)")
        models += plugins[0].models_for_sizes(cfg.sizes, cfg.input_height, cfg.input_width, cfg.out / "models")
        notes.append("Models built by size have random weights: their timings are real, their masks are not "
                     "meaningful (the Dice agreement of a trained model is the one that counts).")
    for p in cfg.models:
        if not p.exists():
            raise BenchError(f"--model {p}: no such file or folder")
        models.append(plugins[0].model_from_weights(p, cfg.out / "models") if p in weights else _onnx_model(p))

    if not cfg.threads or any(t < 1 for t in cfg.threads):
        raise BenchError(f"--threads: positive integers, got {cfg.threads}")
    engine_rows, agreement = [], []
    for m in models:
        for i, threads in enumerate(cfg.threads):
            log(f"timing {m.label} ({m.origin}, input {m.info.input_height}x{m.info.input_width}, "
                f"{'random' if m.random_weights else 'trained'} weights), {threads} CPU thread(s)")
            # GPU contenders do not depend on CPU threads: timed with the first count only.
            contenders, why = builtin_contenders(m, threads, tensorrt=cfg.tensorrt and i == 0)
            skipped += [f"{m.label}: {w}" for w in why]
            for plugin in plugins:
                more, why = plugin.contenders(m, threads)
                contenders += [c for c in more if c.device == "cpu" or i == 0]
                skipped += [f"{m.label}: {w}" for w in why if i == 0]
            try:
                engine_rows += time_model(m, contenders, cfg.batches, cfg.budget, log)
                ref = next((c for c in contenders if c.name == "pytorch-eager-cpu"), contenders[0])
                others = [c for c in contenders if c is not ref]
                if others and i == 0:
                    agreement += mask_agreement(m, ref, others, cfg.agreement_images)
                    for a in agreement[-len(others):]:
                        log(f"  agreement {a['reference']} vs {a['candidate']}: min Dice {a['min_dice']:.5f}, "
                            f"max |logit diff| {a['max_abs_logit_diff']:.2e}")
            finally:
                for c in contenders:
                    c.close()

    pipeline = None
    if cfg.pipeline:
        # Post-processing and the live view cost what the masks hold: random weights flag noise
        # everywhere, so a trained model, when given, is the honest default for this run.
        default = next((m for m in models if not m.random_weights), models[0])
        chosen = next((m for m in models if m.label == cfg.pipeline_model), None) if cfg.pipeline_model else default
        if chosen is None:
            raise BenchError(f"--pipeline-model {cfg.pipeline_model!r}: not one of {[m.label for m in models]}")
        log(f"pipeline vs engine alone on {chosen.label}, frames {cfg.frame_height}x{cfg.frame_width}")
        frames = strip_frames(cfg.frame_height, cfg.frame_width)
        pipeline = run_pipeline_bench(chosen.onnx, frames, cfg.pipeline_threads or max(cfg.threads),
                                      cfg.pipeline_cfg, log)
        pipeline["model_label"] = chosen.label
        pipeline["random_weights"] = chosen.random_weights
        if chosen.random_weights:
            notes.append("The pipeline run used a random-weight model: its masks are noise, which makes "
                         "post-processing and the live view slower than with a trained model.")

    record = {
        "schema": "inspect-edge.bench/1", "created": created, "command": cfg.command,
        "machine": machine, "load_after": [round(x, 2) for x in os.getloadavg()],
        "config": cfg.to_dict(),
        "models": [{"label": m.label, "onnx": str(m.onnx), "input": [m.info.input_height, m.info.input_width],
                    "arch": m.info.arch, "origin": m.origin, "random_weights": m.random_weights, "notes": m.notes}
                   for m in models],
        "engine": engine_rows, "agreement": agreement, "pipeline": pipeline,
        "skipped": skipped, "notes": notes,
    }
    record["targets"] = evaluate_targets(record)
    write_json(record, cfg.out / "bench.json")
    (cfg.out / "bench.md").write_text(to_markdown(record))
    return record
