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


def test_the_package_declares_every_third_party_module_it_imports():
    """Every module attnvar's code imports is the standard library, torch (pinned by
    tools/torch_pin.py), a declared dependency, or optional behind an extra with a clear
    error (PyYAML for YAML study files): a clean install must not crash on a missing
    import halfway through a study."""
    import ast
    import re
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    root = Path(__file__).resolve().parents[2]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    provider = next(m for m in meta["tool"]["dynamic-metadata"]
                    if m["provider"]["module"] == "torch_pin")
    declared = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower()
                for r in provider["requires"]}
    optional = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower()
                for extra in meta["project"]["optional-dependencies"].values() for r in extra}
    dist_of = {"yaml": "pyyaml"}  # import name → distribution name, where they differ
    imported = set()
    for path in (root / "python" / "attnvar").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported
                   if m not in sys.stdlib_module_names and m not in ("attnvar", "torch")}
    missing = {m for m in third_party
               if dist_of.get(m, m) not in declared and dist_of.get(m, m) not in optional
               and m != "tomli"}  # tomli: declared for Python < 3.11 only
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
    assert {"scipy", "statsmodels", "wordfreq", "matplotlib", "threadpoolctl"} <= declared
    assert "tomli" in declared


def test_the_torch_pin_has_no_local_tag_and_an_isolated_build_says_what_to_do(monkeypatch):
    from importlib import metadata
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    try:
        import torch_pin
    finally:
        sys.path.pop(0)
    deps = torch_pin.dynamic_metadata({"requires": ["numpy>=1.24"]}, {})["dependencies"]
    assert deps == [f"torch=={torch.__version__.split('+')[0]}", "numpy>=1.24"]

    def no_torch(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", no_torch)
    with pytest.raises(RuntimeError, match="--no-build-isolation"):
        torch_pin.dynamic_metadata({}, {})
