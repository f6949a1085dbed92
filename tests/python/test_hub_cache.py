"""load_model("org/name") from the local Hugging Face cache, offline: the test writes the
cache layout the Hub client leaves (blobs, refs/<branch>, snapshots/<commit>/ of links
into the blobs) around a tiny random model, and points $HF_HUB_CACHE / $HF_HOME / HOME at
it. Nothing is downloaded and huggingface_hub is not used."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from tiny_models import save_tiny_hf_dir

import attnvar
from attnvar.engine.hub import hub_cache_dir, looks_like_hub_id, resolve_hub_model

MODEL_ID = "tiny-org/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_hf_dir(tmp_path_factory.mktemp("tiny_hf"))


def write_cache(cache: Path, source: Path, model_id: str = MODEL_ID,
                refs: dict[str, str] | None = None, links: bool = True) -> Path:
    """The cache entry of ``model_id`` holding ``source``'s files at commit COMMIT (its
    files as links into blobs/, as the Hub client writes them; ``links=False``: copies,
    as on a file system without links). Returns the snapshot directory."""
    repo = cache / ("models--" + model_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in sorted(source.iterdir()):
        data = f.read_bytes()
        if links:
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
        else:
            (snapshot / f.name).write_bytes(data)
    (repo / "refs").mkdir()
    for name, commit in (refs or {"main": COMMIT}).items():
        (repo / "refs" / name).write_text(commit)  # the client writes no newline
    return snapshot


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "hub"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    return path


def test_a_hub_id_loads_from_the_cache_as_the_directory_would(cache, model_dir):
    snapshot = write_cache(cache, model_dir)
    model = attnvar.load_model(MODEL_ID)
    direct = attnvar.load_model(model_dir)
    assert Path(model.path) == snapshot
    assert model.identity["sha256"] == direct.identity["sha256"]
    assert model.info()["hub_id"] == MODEL_ID and model.info()["revision"] == COMMIT
    assert "hub_id" not in direct.info()
    a = model.generate("the cat sat", threshold=0.05, max_steps=4)
    b = direct.generate("the cat sat", threshold=0.05, max_steps=4)
    assert a.bracketed == b.bracketed
    # The run records where its model came from; the repr names the id.
    assert a.model["hub_id"] == MODEL_ID
    assert MODEL_ID in repr(model) and MODEL_ID in model._repr_html_()


def test_copies_instead_of_links_load_too(cache, model_dir):
    write_cache(cache, model_dir, links=False)
    assert attnvar.load_model(MODEL_ID).num_layers == 3


def test_revisions_a_branch_a_commit_and_a_prefix(cache, model_dir):
    snapshot = write_cache(cache, model_dir, refs={"main": COMMIT, "v1": COMMIT})
    assert Path(attnvar.load_model(MODEL_ID, revision="v1").path) == snapshot
    assert Path(attnvar.load_model(MODEL_ID, revision=COMMIT).path) == snapshot
    assert attnvar.load_model(MODEL_ID, revision=COMMIT[:10]).info()["revision"] == COMMIT
    with pytest.raises(attnvar.MissingError, match=r"revision 'v2'.*refs: main, v1"):
        attnvar.load_model(MODEL_ID, revision="v2")


def test_a_ref_to_a_snapshot_that_is_not_there_says_so(cache, model_dir):
    write_cache(cache, model_dir, refs={"main": OTHER})
    with pytest.raises(FileNotFoundError, match=OTHER):
        attnvar.load_model(MODEL_ID)


def test_an_absent_id_names_itself_and_the_cache_searched(cache):
    with pytest.raises(attnvar.MissingError) as info:
        attnvar.load_model("nobody/nothing")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "nobody/nothing" in message
    assert str(cache / "models--nobody--nothing") in message


def test_a_partial_snapshot_is_not_blamed_on_the_loader(cache, model_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    write_cache(cache, partial)
    with pytest.raises(attnvar.MissingError, match=r"no \*\.safetensors"):
        attnvar.load_model(MODEL_ID)


def test_a_gguf_snapshot_resolves_to_its_one_file(cache, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "model.Q4_1.gguf").write_bytes(b"GGUF")
    (one / "README.md").write_text("a model card")
    snapshot = write_cache(cache, one)
    assert resolve_hub_model(MODEL_ID) == (snapshot / "model.Q4_1.gguf", COMMIT)
    (snapshot / "model.Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(attnvar.MissingError, match="2 GGUF files"):
        resolve_hub_model(MODEL_ID)


def test_the_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hub_cache_dir() == tmp_path / "direct"


def test_hf_home_is_searched(tmp_path, monkeypatch, model_dir):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    write_cache(tmp_path / "hf" / "hub", model_dir)
    assert attnvar.load_model(MODEL_ID).info()["hub_id"] == MODEL_ID


def test_an_existing_path_wins_over_the_cache(cache, model_dir, tmp_path, monkeypatch):
    write_cache(cache, model_dir)
    local = tmp_path / "cwd" / "tiny-org" / "tiny-model"
    local.mkdir(parents=True)
    for f in model_dir.iterdir():
        (local / f.name).write_bytes(f.read_bytes())
    monkeypatch.chdir(tmp_path / "cwd")
    model = attnvar.load_model(MODEL_ID)
    assert model.hub is None and model.path == MODEL_ID
    with pytest.raises(ValueError, match="revision"):
        attnvar.load_model(MODEL_ID, revision="v1")


def test_only_org_slash_name_is_taken_for_a_hub_id(cache):
    assert looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert looks_like_hub_id("org/name.v2")
    for text in ("model.gguf", "/abs/path", "./org/name", "a/b/c", "org/", "../x",
                 "org/model.gguf", "org/..", "org name/x"):
        assert not looks_like_hub_id(text), text
    # Not an id: the plain missing-path error.
    with pytest.raises(attnvar.MissingError, match="model path does not exist"):
        attnvar.load_model("missing/dir/model.gguf")


def test_the_cli_reads_a_hub_id(cache, model_dir, capsys):
    from attnvar.cli import main

    write_cache(cache, model_dir)
    assert main(["inspect", MODEL_ID]) == 0
    assert f'"hub_id": "{MODEL_ID}"' in capsys.readouterr().out
    assert main(["generate", "the cat", "--model", MODEL_ID, "--max-steps", "2"]) == 0
    assert main(["inspect", "nobody/nothing"]) == 2
    assert "nobody/nothing" in capsys.readouterr().err
