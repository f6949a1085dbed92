"""The package is tied to the torch it was built against and says so clearly."""

import subprocess
import sys
import textwrap

import pytest
import torch

import attnvar
from attnvar._torch_check import check_torch_version


def test_version_and_build_torch_are_recorded():
    assert attnvar.__version__ == "0.1.0"
    assert attnvar.BUILT_WITH_TORCH == torch.__version__


def test_check_torch_version_names_both_versions_and_the_fix():
    check_torch_version("2.13.0+cpu", "2.13.0+cpu")
    with pytest.raises(ImportError) as err:
        check_torch_version("2.13.0+cpu", "2.14.1+cu130")
    msg = str(err.value)
    assert "2.13.0+cpu" in msg and "2.14.1+cu130" in msg
    assert "pip install torch==2.13.0" in msg and "--no-build-isolation" in msg


def test_import_with_a_different_torch_raises_import_error():
    # A fresh interpreter whose torch reports another version: importing attnvar must
    # fail with the clear ImportError before the extension is loaded.
    code = textwrap.dedent(
        """
        import torch
        torch.__version__ = "9.9.9+fake"
        try:
            import attnvar
        except ImportError as e:
            print("IMPORT-ERROR:", e)
            import sys
            sys.exit(3 if "attnvar._core" in sys.modules else 0)
        else:
            raise SystemExit("attnvar imported despite a torch mismatch")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "9.9.9+fake" in proc.stdout and torch.__version__ in proc.stdout


def test_the_extension_stub_lists_every_public_name():
    import ast
    from pathlib import Path

    from attnvar import _core

    stub = Path(__file__).resolve().parents[2] / "python" / "attnvar" / "_core.pyi"
    tree = ast.parse(stub.read_text())
    declared = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "__all__"
    )
    public = sorted(n for n in dir(_core) if not n.startswith("_"))
    assert sorted(declared) == public, (
        "python/attnvar/_core.pyi is stale; regenerate it: "
        "PYTHONPATH=build/dev/pkg pybind11-stubgen attnvar._core -o /tmp/stubs && "
        "cp /tmp/stubs/attnvar/_core.pyi python/attnvar/"
    )
