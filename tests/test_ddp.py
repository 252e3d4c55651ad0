"""The same `train fit` command under torchrun: 2 CPU processes, gloo, DistributedDataParallel."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from test_fit import make_mask_folder  # noqa: E402


@pytest.mark.timeout(180)
def test_torchrun_two_cpu_processes_train_and_write_one_run_folder(tmp_path):
    data = make_mask_folder(tmp_path / "data", n_train=16, n_val=4)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "train.cli", "fit", "--data", str(data), "--out", str(out), "--epochs", "2", "--batch-size", "4",
        "--crop-width", "64", "--lr", "5e-3", "--device", "cpu", "--threads", "1",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (out / "train.log").read_text()
    # Each process sees half of the 16 training images: 8 / batch 4 = 2 steps per epoch.
    assert "2 process(es) on cpu, 2 step(s) per epoch per process" in log
    assert log.count("epoch 2/2") == 1  # only rank 0 writes
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and all(h["train_loss"] > 0 for h in metrics["history"])
    for name in ("best.pt", "last.pt", "model_info.json", "calibration.json", "curves.png", "val_samples.png"):
        assert (out / name).is_file(), name

    from train.checkpoint import load_run

    model, info = load_run(out)
    assert info.classes == ("dent", "scratch")
