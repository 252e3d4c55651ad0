"""The edge runtime must import and run its CLI where torch does not exist."""

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked: the edge runtime must not need it")
    sys.meta_path.insert(0, BlockTorch())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120)


def test_every_inspect_edge_module_imports_without_torch():
    r = _run(
        textwrap.dedent(
            """
            import importlib, pkgutil, inspect_edge
            names = [m.name for m in pkgutil.walk_packages(inspect_edge.__path__, "inspect_edge.")]
            for n in names:
                importlib.import_module(n)
            assert "torch" not in sys.modules
            print(len(names), "modules")
            """
        )
    )
    assert r.returncode == 0, r.stderr
    assert "modules" in r.stdout


def test_cli_help_works_without_torch():
    r = _run("import sys; sys.argv=['inspect-edge','--help']\nfrom inspect_edge.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n")
    assert r.returncode == 0, r.stderr
    assert "run" in r.stdout or "Usage" in r.stdout


def test_blocker_really_blocks_torch():
    # Guards the two tests above against a blocker that silently stopped working.
    r = _run("import torch")
    assert r.returncode != 0 and "torch is blocked" in r.stderr
