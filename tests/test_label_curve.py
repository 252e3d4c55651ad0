"""`train label-curve` on tiny data: nested subsets, every cell written and skipped on a
re-run, a changed setting refused, report complete; and the paired statistics and the
decision rule on cells whose numbers the test chooses (never which arm wins on real data)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers_gan_data import make_mask_folder
from inspect_edge.data import open_dataset
from train.cli import app
from train.gan.label_curve import nested_subsets
from train.gan.label_curve_report import aggregate, best_method, verdicts

torch.set_num_threads(1)

TINY = ["--fractions", "0.5,0.25", "--seeds", "0,1", "--arms", "real,copy-paste,gan-blend", "--no-ceiling",
        "--real-steps", "2", "--synthetic-per-batch", "2", "--count", "4", "--gan-minutes", "0.01", "--fit-val-images", "3",
        "--batch-size", "4", "--crop-height", "64", "--crop-width", "64", "--gan-crop", "32", "--gan-base", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("lc")
    data = make_mask_folder(root / "data", n_train=16, n_val=4)
    out = root / "study"
    args = ["label-curve", "--data", str(data), "--out", str(out), *TINY]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return data, out, args, r.output


def test_every_cell_is_written_with_paired_seeds_and_the_same_real_passes(study):
    data, out, _, output = study
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/*/seed*.json"))]
    assert len(cells) == 2 * 3 * 2  # fractions x arms x seeds
    for c in cells:
        m = c["metrics"]
        assert m["n_images"] == 4 and 0.0 <= m["miou_incl_background"] <= 1.0 and 0.0 <= m["competition_dice"] <= 1.0
        same = [d for d in cells if d["fraction"] == c["fraction"]]
        assert {d["real_steps"] for d in same} == {c["real_steps"]}  # every arm: the same real passes
        assert c["synthetic_share_of_batch"] == (0.0 if c["arm"] == "real" else pytest.approx(2 / 6))
    # Nested labelled subsets: the 25% images are inside the 50% set.
    ids = {f: set(json.loads((out / "runs" / f / "real" / "seed0" / "split.json").read_text())["train_ids"]) for f in ("f0.250", "f0.500")}
    assert len(ids["f0.250"]) == 4 and len(ids["f0.500"]) == 8 and ids["f0.250"] < ids["f0.500"]
    # One GAN per fraction, trained on that fraction's labels only.
    for f in ("f0.250", "f0.500"):
        gm = json.loads((out / "gan" / f / "gan_metrics.json").read_text())
        assert gm["labelled_images"] == len(ids[f])
    assert "report.md" in output and "goal" in output


def test_report_is_complete_and_its_differences_come_from_the_cells(study):
    _, out, _, _ = study
    report = json.loads((out / "report.json").read_text())
    assert report["cells_done"] == 12 and report["cells_missing"] == []
    agg = report["aggregates"]["f0.500/gan-blend"]
    by_seed = {c["seed"]: c for c in report["cells"] if c["fraction"] == 0.5}
    real = {c["seed"]: c["metrics"]["miou_incl_background"] for c in report["cells"] if c["fraction"] == 0.5 and c["arm"] == "real"}
    blend = {c["seed"]: c["metrics"]["miou_incl_background"] for c in report["cells"] if c["fraction"] == 0.5 and c["arm"] == "gan-blend"}
    diffs = [blend[s] - real[s] for s in (0, 1)]
    assert by_seed and agg["vs_real"]["miou_incl_background"]["values"] == pytest.approx(diffs)
    assert agg["vs_real"]["miou_incl_background"]["sd"] == pytest.approx(float(np.std(diffs, ddof=1)))
    assert "vs_copy_paste" in agg and "vs_copy_paste" not in report["aggregates"]["f0.500/copy-paste"]
    md = (out / "report.md").read_text()
    for title in ("real only", "real + copy-paste", "real + GAN-blend (hybrid)", "Decision rule", "## Verdict", "mIoU incl. bg"):
        assert title in md
    for rel in report["pictures"].values():
        assert cv2.imread(str(out / rel)) is not None and f"]({rel})" in md
    assert "label_curve.png" in report["pictures"].values()
    assert any(rel.startswith("samples_") for rel in report["pictures"].values())
    assert "gan_draws.png" in report["pictures"].values()  # the hybrid arm needs a generator: its draws are shown


def test_a_rerun_skips_finished_cells_and_other_settings_are_refused(study):
    _, out, args, _ = study
    cell = out / "cells" / "f0.500" / "real" / "seed0.json"
    before = cell.stat().st_mtime_ns
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "12 already done" in r.output and cell.stat().st_mtime_ns == before
    changed = list(args)
    changed[changed.index("--real-steps") + 1] = "3"  # what a cell means, unlike which cells there are
    r = CliRunner().invoke(app, changed)
    assert r.exit_code == 2 and "other settings (real_steps)" in r.output
    r = CliRunner().invoke(app, ["label-curve", "--data", "x", "--out", str(out), "--report-only"])
    assert r.exit_code == 0 and "12 cells" in r.output


def test_nested_subsets_are_prefixes_of_one_permutation():
    subsets = nested_subsets(100, (0.02, 0.05, 0.10), seed=0)
    assert [len(s) for s in subsets.values()] == [2, 5, 10]
    assert set(subsets[0.02]) < set(subsets[0.05]) < set(subsets[0.10])
    assert np.array_equal(nested_subsets(100, (0.05,), seed=0)[0.05], subsets[0.05])


def _cell(f, arm, seed, miou, dice, comp):
    per = {"a": dice, "b": dice}
    return {"fraction": f, "arm": arm, "seed": seed, "real_images": 10, "synthetic_images": 0 if arm == "real" else 5,
            "epochs": 3, "real_steps": 30, "synthetic_share_of_batch": 0.0, "train_seconds": 1.0,
            "metrics": {"miou_incl_background": miou, "mean_dice_present": dice, "competition_dice": comp, "per_class_dice_present": per}}


@pytest.mark.parametrize("gain, spread, expect", [(0.03, 0.001, True), (0.003, 0.01, False)])
def test_decision_rule_on_chosen_numbers(gain, spread, expect):
    cells = []
    for f in (0.05, 0.1):
        for s, noise in zip((0, 1, 2), (-spread, 0.0, spread)):
            base = 0.7 + 0.01 * s  # seeds differ a lot; the paired differences do not
            cells += [_cell(f, "real", s, base, base, 0.9), _cell(f, "copy-paste", s, base + gain / 2, base + gain / 2, 0.9),
                      _cell(f, "gan", s, base + gain + noise, base + gain + noise, 0.9)]
    agg = aggregate(cells)
    v = verdicts(agg)
    gan = v["per_arm"]["f0.050/gan"]
    assert gan["beats_real_miou"] is expect and gan["beats_real_dice_present"] is expect
    assert gan["keeps_competition_dice"] and gan["beats_copy_paste"] is expect  # gain/2 over copy-paste, the same noise
    assert v["ahead_of_copy_paste"]["f0.050/gan"] == (gain > 0)
    assert v["goal_met"] is expect
    assert best_method(agg)[0] == "gan"
    p = agg["f0.050/gan"]["vs_real"]["miou_incl_background"]
    assert p["mean"] == pytest.approx(gain) and p["seeds"] == [0, 1, 2]


def test_no_gain_means_no_best_method():
    cells = [_cell(f, arm, s, 0.7, 0.7, 0.9) for f in (0.05, 0.1) for arm in ("real", "gan") for s in (0, 1)]
    assert best_method(aggregate(cells))[0] == "none"


def test_pretrain_arm_fits_synthetic_alone_then_fine_tunes_on_real(tmp_path):
    data = make_mask_folder(tmp_path / "data", n_train=16, n_val=4)
    out = tmp_path / "study"
    tiny = [a if a != "real,copy-paste,gan-blend" else "real,copy-paste-pretrain" for a in TINY]
    tiny[tiny.index("--fractions") + 1], tiny[tiny.index("--seeds") + 1] = "0.5", "0"
    r = CliRunner().invoke(app, ["label-curve", "--data", str(data), "--out", str(out), *tiny, "--pretrain-steps", "3"])
    assert r.exit_code == 0, r.output
    cell = json.loads((out / "cells" / "f0.500" / "copy-paste-pretrain" / "seed0.json").read_text())
    assert cell["schedule"] == "pretrain-finetune" and cell["synthetic_share_of_batch"] == 0.0
    run = out / "runs" / "f0.500" / "copy-paste-pretrain" / "seed0"
    pre_s = json.loads((run / "pretrain" / "metrics.json").read_text())["train_seconds"]
    fine_s = json.loads((run / "metrics.json").read_text())["train_seconds"]
    assert cell["pretrain_seconds"] == pre_s and cell["train_seconds"] == pytest.approx(pre_s + fine_s)
    pre_split = json.loads((run / "pretrain" / "split.json").read_text())
    # Pre-training sees synthetic pairs only and calibrates on the same held-out images as the fine-tune.
    assert pre_split["train_ids"] and all(i.startswith("copy-paste/") for i in pre_split["train_ids"])
    fine = json.loads((run / "config.json").read_text())
    assert fine["init_weights"] == str(run / "pretrain") and fine["synthetic_per_batch"] == 0
    assert sorted(i.split("/", 1)[1] for i in pre_split["val_ids"]) == sorted(json.loads((run / "split.json").read_text())["val_ids"])
    assert cell["real_steps"] == json.loads((out / "cells" / "f0.500" / "real" / "seed0.json").read_text())["real_steps"]


def test_negatives_arms_pretrain_on_pairs_plus_erased_images_and_are_judged_against_every_copy_paste(tmp_path):
    data = make_mask_folder(tmp_path / "data", n_train=16, n_val=4)
    out = tmp_path / "study"
    tiny = [a if a != "real,copy-paste,gan-blend" else "real,copy-paste-pretrain,copy-paste-neg-pretrain,gan-blend-neg-pretrain" for a in TINY]
    tiny[tiny.index("--fractions") + 1], tiny[tiny.index("--seeds") + 1] = "0.5", "0"
    r = CliRunner().invoke(app, ["label-curve", "--data", str(data), "--out", str(out), *tiny, "--pretrain-steps", "3", "--negatives", "3",
                                 "--gan-steps", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "gan" / "f0.500" / "gan_metrics.json").read_text())["steps"] == 3  # steps, not minutes
    for arm, eraser in (("copy-paste-neg-pretrain", "telea"), ("gan-blend-neg-pretrain", "gan")):
        cell = json.loads((out / "cells" / "f0.500" / arm / "seed0.json").read_text())
        assert cell["negative_images"] == 3 and cell["synthetic_images"] == 4
        pre_ids = json.loads((out / "runs" / "f0.500" / arm / "seed0" / "pretrain" / "split.json").read_text())["train_ids"]
        assert sum(i.startswith(f"erase-{eraser}/") for i in pre_ids) == 3 and sum(not i.startswith("erase-") for i in pre_ids) == 4
        neg = open_dataset(out / "synthetic" / "f0.500" / f"erase-{eraser}")
        assert len(neg) == 3 and not any(neg[i].masks.any() for i in range(3))
    report = json.loads((out / "report.json").read_text())
    assert set(report["aggregates"]["f0.500/gan-blend-neg-pretrain"]["vs_copy_paste"]) == {"copy-paste-pretrain", "copy-paste-neg-pretrain"}
    assert "negatives.png" in report["pictures"].values() and cv2.imread(str(out / "negatives.png")) is not None


def test_beating_copy_paste_means_beating_every_copy_paste_arm_of_the_schedule():
    cells = []
    for f in (0.05, 0.1):
        for s, noise in zip((0, 1, 2), (-0.001, 0.0, 0.001)):
            base = 0.7 + 0.01 * s
            cells += [_cell(f, "real", s, base, base, 0.9), _cell(f, "copy-paste-pretrain", s, base + 0.005, base + 0.005, 0.9),
                      _cell(f, "copy-paste-neg-pretrain", s, base + 0.03, base + 0.03, 0.9),
                      _cell(f, "gan-blend-neg-pretrain", s, base + 0.03 + noise, base + 0.03 + noise, 0.9)]
    v = verdicts(aggregate(cells))["per_arm"]["f0.050/gan-blend-neg-pretrain"]
    assert v["beats_real_miou"] and not v["beats_copy_paste"]  # far ahead of one copy-paste arm, level with the other


def test_a_study_resumes_from_a_committed_report_where_its_run_folder_is_gone(study, tmp_path):
    _, out, args, _ = study
    fresh = tmp_path / "elsewhere"
    moved = [a if a != str(out) else str(fresh) for a in args]
    r = CliRunner().invoke(app, [*moved, "--reuse-cells", str(out / "report.json")])
    assert r.exit_code == 0, r.output
    assert "reused 12 cell(s)" in r.output and "12 already done" in r.output
    assert json.loads((fresh / "report.json").read_text())["cells"] == json.loads((out / "report.json").read_text())["cells"]
    # Cells trained with another protocol are refused, not silently mixed in.
    longer = [a if a != str(out) else str(tmp_path / "longer") for a in args]
    longer[longer.index("--real-steps") + 1] = "5"
    r = CliRunner().invoke(app, [*longer, "--reuse-cells", str(out / "report.json")])
    assert r.exit_code == 2 and "real_steps 2 (here 5)" in r.output and not (tmp_path / "longer" / "cells").exists()


def test_a_study_takes_more_arms_and_seeds_on_resume_and_the_real_controls_get_as_much_compute(study, tmp_path):
    data, out, args, _ = study
    ext = tmp_path / "extended"
    first = [a if a != str(out) else str(ext) for a in args] + ["--pretrain-steps", "3"]
    first[first.index("--fractions") + 1], first[first.index("--arms") + 1] = "0.5", "real,copy-paste"
    r = CliRunner().invoke(app, first)
    assert r.exit_code == 0, r.output
    wider = list(first)
    wider[wider.index("--arms") + 1] = "real,copy-paste,real-pretrain,copy-paste-pretrain,real-equal-crops"
    wider[wider.index("--seeds") + 1] = "0,1,2"
    r = CliRunner().invoke(app, wider)
    assert r.exit_code == 0, r.output
    assert "15 cells, 4 already done" in r.output  # 2 arms x 2 seeds kept; seed 2 and three new arms run
    # The equal-crops control: the mixed arms' 4 real + 2 synthetic crops per step, all real, for as many steps.
    real, mixed, equal = (json.loads((ext / "cells" / "f0.500" / a / "seed0.json").read_text()) for a in ("real", "copy-paste", "real-equal-crops"))
    assert equal["real_crops_per_step"] == 6 and equal["synthetic_images"] == 0
    assert json.loads((ext / "runs" / "f0.500" / "real-equal-crops" / "seed0" / "config.json").read_text())["batch_size"] == 6
    assert equal["real_steps"] == real["real_steps"] == mixed["real_steps"]
    cell = json.loads((ext / "cells" / "f0.500" / "real-pretrain" / "seed0.json").read_text())
    assert cell["schedule"] == "pretrain-finetune" and cell["synthetic_images"] == 0
    run = ext / "runs" / "f0.500" / "real-pretrain" / "seed0"
    pre_split = json.loads((run / "pretrain" / "split.json").read_text())
    fine_split = json.loads((run / "split.json").read_text())
    # The control pre-trains on exactly the fraction's labelled images, then fine-tunes like every arm.
    assert sorted(i.split("/", 1)[1] for i in pre_split["train_ids"]) == sorted(fine_split["train_ids"])
    assert json.loads((run / "config.json").read_text())["init_weights"] == str(run / "pretrain")
    report = json.loads((ext / "report.json").read_text())
    assert "vs_real_pretrain" in report["aggregates"]["f0.500/copy-paste-pretrain"]
    assert "vs_real_pretrain" not in report["aggregates"]["f0.500/copy-paste"]  # mixed arms have no extra steps
    assert "vs_real_equal_crops" in report["aggregates"]["f0.500/copy-paste"]
    assert "vs_real_equal_crops" not in report["aggregates"]["f0.500/copy-paste-pretrain"]  # pre-train arms: same crops per step
    assert best_method(report["aggregates"])[0] not in ("real-pretrain", "real-equal-crops")  # controls, never the method to ship
    assert "as many (all real) crops per step" in (ext / "report.md").read_text()


def _gan_level_with_its_control(gan: str, copy_paste: str, control: str) -> list[dict]:
    """Cells at 5% and 10% where `gan` beats real-only and `copy_paste` clearly, and `control`
    gains as much (within 0.001 per seed)."""
    cells = []
    for f in (0.05, 0.1):
        for s, noise in zip((0, 1, 2), (-0.001, 0.0, 0.001)):
            base = 0.7 + 0.01 * s
            cells += [_cell(f, "real", s, base, base, 0.9), _cell(f, copy_paste, s, base + 0.005, base + 0.005, 0.9),
                      _cell(f, control, s, base + 0.03 + noise, base + 0.03 + noise, 0.9),
                      _cell(f, gan, s, base + 0.03, base + 0.03, 0.9)]
    return cells


def test_a_synthetic_pretrain_arm_that_only_matches_the_equal_steps_control_does_not_meet_the_goal():
    v = verdicts(aggregate(_gan_level_with_its_control("gan-pretrain", "copy-paste-pretrain", "real-pretrain")))
    gan = v["per_arm"]["f0.050/gan-pretrain"]
    assert gan["beats_real_miou"] and gan["beats_copy_paste"] and not gan["beats_real_pretrain"]
    assert not v["goal_met"]


def test_a_mixed_gan_arm_that_only_matches_the_equal_crops_control_does_not_meet_the_goal():
    cells = _gan_level_with_its_control("gan", "copy-paste", "real-equal-crops")
    v = verdicts(aggregate(cells))
    gan = v["per_arm"]["f0.050/gan"]
    assert gan["beats_real_miou"] and gan["beats_copy_paste"] and not gan["beats_real_equal_crops"]
    assert "beats_real_pretrain" not in gan and "beats_copy_paste" not in v["per_arm"]["f0.050/real-equal-crops"]
    assert not v["goal_met"]
    # The same arm clearly above the control meets it.
    lifted = [dict(c, metrics={**c["metrics"], **{k: c["metrics"][k] + 0.02 for k in ("miou_incl_background", "mean_dice_present")}})
              if c["arm"] == "gan" else c for c in cells]
    assert verdicts(aggregate(lifted))["goal_met"]


def test_the_unlabelled_gan_arm_learns_from_the_fractions_other_training_images_only(study, tmp_path):
    data, out, args, _ = study
    ext = tmp_path / "unlabelled"
    moved = [a if a != str(out) else str(ext) for a in args]
    moved[moved.index("--fractions") + 1], moved[moved.index("--arms") + 1] = "0.5", "real,copy-paste,gan-unlabelled"
    r = CliRunner().invoke(app, [*moved, "--reuse-cells", str(out / "report.json")])
    assert r.exit_code == 0, r.output
    folder = ext / "data" / "f0.500-unlabelled"
    unlabelled = {p.stem for p in folder.glob("*.png")}
    labelled = set(json.loads((ext / "runs" / "f0.500" / "gan-unlabelled" / "seed0" / "split.json").read_text())["train_ids"])
    train_ids = set(open_dataset(data, split="train").ids)
    assert unlabelled == train_ids - labelled and len(unlabelled) == 8  # the other half of the training split
    assert not any(p.is_dir() for p in folder.iterdir())  # plain images: no masks to leak
    gan = ext / "gan-unlabelled" / "f0.500"
    gm = json.loads((gan / "gan_metrics.json").read_text())
    assert gm["unlabelled_images"] == 8 and gm["labelled_images"] == 8
    gcfg = json.loads((gan / "config.json").read_text())
    # Half of each batch is unlabelled, so it trains twice as long to see as many labelled pairs.
    assert gcfg["unlabelled_share"] == 0.5 and gcfg["time_budget_min"] == pytest.approx(0.02)
    report = json.loads((ext / "report.json").read_text())
    agg = report["aggregates"]["f0.500/gan-unlabelled"]
    assert {"vs_real", "vs_copy_paste"} <= set(agg) and "f0.500/gan-unlabelled" in report["verdict"]["per_arm"]
    assert "0.5 + unlabelled images" in report["gan_metrics"]
    assert "GAN that also learned from the unlabelled images" in (ext / "report.md").read_text()


def test_the_unlabelled_gan_is_paired_with_the_plain_gan_and_can_carry_the_goal():
    cells = _gan_level_with_its_control("gan-unlabelled", "copy-paste", "real-equal-crops")
    cells = [c for c in cells if c["arm"] != "real-equal-crops"]  # no control in this study: the rule cannot ask for it
    cells += [_cell(c["fraction"], "gan", c["seed"], c["metrics"]["miou_incl_background"] - 0.02 - 0.001 * c["seed"],
                    c["metrics"]["mean_dice_present"] - 0.02, 0.9) for c in cells if c["arm"] == "gan-unlabelled"]
    agg = aggregate(cells)
    vg = agg["f0.100/gan-unlabelled"]["vs_gan"]["miou_incl_background"]
    assert vg["values"] == pytest.approx([0.02, 0.021, 0.022]) and "vs_gan" not in agg["f0.100/gan"]
    assert verdicts(agg)["goal_met"]  # a GAN-based arm: it counts for the goal like any other


def test_a_study_started_before_a_setting_existed_resumes_as_if_it_had_the_default(study):
    _, out, args, _ = study
    path = out / "study_config.json"
    cfg = json.loads(path.read_text())
    del cfg["unlabelled_share"]  # as a study folder written before the setting was added
    path.write_text(json.dumps(cfg))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "12 already done" in r.output and json.loads(path.read_text())["unlabelled_share"] == 0.5
