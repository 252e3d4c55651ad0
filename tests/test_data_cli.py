import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from train.cli import app

NEU = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "neu-seg"
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_synth_data_then_inspect(tmp_path):
    out = tmp_path / "synth"
    r = _run("synth-data", "--out", out, "--count", 6, "--seed", 3, "--height", 64, "--width", 320,
             "--preview", tmp_path / "p.png", "--video", tmp_path / "v.avi", "--video-frames", 5)
    assert r.exit_code == 0, r.output
    assert len(list((out / "train_images").glob("*.jpg"))) == 6
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "v.avi").stat().st_size > 0
    assert (out / "synth_config.json").is_file()
    first = (out / "train.csv").read_text()
    r = _run("inspect-data", out)
    assert r.exit_code == 0, r.output
    assert "format: severstal" in r.output and "images: 6" in r.output
    for name in ("pits", "cracks", "scratches", "patches"):
        assert name in r.output
    assert "320x64 x6" in r.output and "problems: none" in r.output
    # Same seed, same data.
    r = _run("synth-data", "--out", out, "--count", 6, "--seed", 3, "--height", 64, "--width", 320, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "train.csv").read_text() == first


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--count", "-1"], "--count"),
        (["--height", "4"], "at least 16"),
        (["--defect-free-share", "2"], "defect_free_share"),
        (["--video", "x.gif"], "--video"),
        (["--preview", "x.jpg"], "--preview"),
    ],
)
def test_synth_data_bad_options_exit_2_with_one_line(tmp_path, args, fragment):
    r = _run("synth-data", "--out", tmp_path / "o", *args)
    assert r.exit_code == 2
    assert fragment in r.output and "Traceback" not in r.output


def test_synth_data_refuses_to_overwrite_silently(tmp_path):
    assert _run("synth-data", "--out", tmp_path, "--count", 1, "--height", 32, "--width", 64).exit_code == 0
    r = _run("synth-data", "--out", tmp_path, "--count", 1, "--height", 32, "--width", 64)
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_inspect_data_reports_problems_and_strict_fails(tmp_path):
    assert _run("synth-data", "--out", tmp_path, "--count", 3, "--height", 32, "--width", 64,
                "--defect-free-share", 0).exit_code == 0
    with open(tmp_path / "train.csv", "a") as f:
        f.write("synth_0_00000.jpg,9,1 3\n")
        f.write("nothere.jpg,1,1 1 1\n")
    r = _run("inspect-data", tmp_path)
    assert r.exit_code == 0, r.output
    assert "problems: 2" in r.output and "unknown ClassId '9'" in r.output and "nothere.jpg" in r.output
    assert "images: 2" in r.output
    r = _run("inspect-data", tmp_path, "--strict")
    assert r.exit_code == 2 and "strict" in r.output and "Traceback" not in r.output
    r = _run("inspect-data", tmp_path / "nope")
    assert r.exit_code == 2 and "not a folder" in r.output
    r = _run("inspect-data", tmp_path, "--split", "val")
    assert r.exit_code == 2 and "available: train" in r.output


def test_data_commands_do_not_import_torch():
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch blocked")
        sys.meta_path.insert(0, Block())
        import typer
        from train import data_commands
        app = typer.Typer()
        data_commands.register(app)
        print("ok", "torch" in sys.modules)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ok False" in r.stdout


@pytest.mark.skipif(not NEU.is_dir(), reason=f"real data set not present at {NEU}")
def test_inspect_real_neu_seg_val():
    r = _run("inspect-data", NEU, "--split", "val", "--strict")
    assert r.exit_code == 0, r.output
    assert "format: mask-folder" in r.output and "val 894" in r.output
    for name in ("inclusion", "patches", "scratches"):
        assert name in r.output
    assert "200x200" in r.output


def test_fit_on_a_data_set_with_no_usable_image_says_so_in_one_line(tmp_path):
    data = tmp_path / "data"
    (data / "train_images").mkdir(parents=True)
    (data / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    (data / "train_images" / "a.jpg").write_bytes(b"\xff\xd8not a jpeg")
    r = subprocess.run([sys.executable, "-m", "train.cli", "fit", "--data", str(data), "--out", str(tmp_path / "run"),
                        "--epochs", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("train: ") and "need at least 2 usable images" in last and "found 0" in last
    assert "need at least 2 usable images" in (tmp_path / "run" / "train.log").read_text()
