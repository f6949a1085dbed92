"""The compat preset's BOS and EOS follow the prototype's tokenizer when asked:
``tempo2025(add_bos=..., eos_ids=...)``; None keeps the model's behaviour."""

from __future__ import annotations

import pytest

import attnvar

pytest.importorskip("transformers")

from tiny_models import tiny_llama_model  # noqa: E402

PROMPT = [1, 17, 42, 9, 33]


@pytest.fixture(scope="module")
def model():
    return tiny_llama_model(seed=11)


@pytest.fixture(scope="module")
def free_run(model):
    """Never stopped by EOS: every member of every set is known."""
    run = model.tempo2025(PROMPT, threshold=0.05, max_steps=8, eos_ids=[])
    assert run.stop_reason == "max_steps" and len(run.tree.steps) == 8
    return run


def test_an_eos_id_other_than_the_models_stops_the_run_there(model, free_run):
    # The prototype's tokenizer may name another EOS than the model file: pick a token
    # the free run selects at step 3 (not before) and call it EOS.
    first_step = {}
    for t, s in enumerate(free_run.tree.steps):
        for m in s.members:
            first_step.setdefault(m.token_id, t)
    token = next(tok for tok, t in first_step.items() if t == 3 and tok not in model.eos_ids)
    run = model.tempo2025(PROMPT, threshold=0.05, max_steps=8, eos_ids=[token])
    assert run.stop_reason == "eos" and len(run.tree.steps) == 4
    assert [[m.token_id for m in s.members] for s in run.tree.steps] == \
        [[m.token_id for m in s.members] for s in free_run.tree.steps[:4]]
    assert any(m.is_eos and m.token_id == token for m in run.tree.steps[-1].members)
    assert run.options["eos_ids"] == [token]
    # None keeps the model's ids; they are recorded with the run.
    default = model.tempo2025(PROMPT, threshold=0.05, max_steps=8)
    assert default.options["eos_ids"] == list(model.eos_ids)


@pytest.mark.parametrize("bad", [[10**9], [-1]])
def test_eos_ids_outside_the_vocabulary_are_refused(model, bad):
    with pytest.raises(attnvar.ConfigError, match="eos id"):
        model.tempo2025(PROMPT, max_steps=2, eos_ids=bad)


@pytest.mark.parametrize("bad", ["2", [2.5], [True], 2])
def test_eos_ids_must_be_token_ids(model, bad):
    with pytest.raises(ValueError, match="eos_ids"):
        model.tempo2025(PROMPT, max_steps=2, eos_ids=bad)


def test_add_bos_is_for_text_prompts(model):
    with pytest.raises(ValueError, match="add_bos applies to text prompts"):
        model.tempo2025(PROMPT, max_steps=2, add_bos=True)


@pytest.fixture(scope="module")
def bundled(bundled_path):
    return attnvar.load_model(bundled_path)


def test_add_bos_follows_the_prototypes_tokenizer(bundled):
    text = "The cat sat on the"
    plain = bundled.encode(text, add_bos=False)
    bos = bundled.tokenizer.bos_id
    assert bos is not None
    runs = {flag: bundled.tempo2025(text, threshold=0.1, max_steps=2, add_bos=flag)
            for flag in (None, True, False)}
    assert list(runs[True].tree.prompt) == [bos, *plain]
    assert list(runs[False].tree.prompt) == plain
    assert list(runs[None].tree.prompt) == list(runs[True].tree.prompt)  # today's default
    assert runs[False].options["add_bos"] is False
    # Without BOS the preset duplicates the last prompt token at slot P as usual.
    assert runs[False].slot_records[len(plain)]["token_id"] == plain[-1]


def test_the_cli_passes_the_compat_options(bundled_path, tmp_path, capsys):
    from attnvar.cli import main

    out = tmp_path / "run"
    assert main(["generate", "The cat sat on the", "--model", str(bundled_path),
                 "--preset", "tempo-2025", "--threshold", "0.1", "--max-steps", "3",
                 "--bos", "off", "--eos-ids", "none", "--emulate-isolation-bug",
                 "--save", str(out)]) == 0
    run = attnvar.load_run(out)
    assert run.options["add_bos"] is False and run.options["eos_ids"] == []
    assert run.options["emulate_isolation_bug"] is True
    assert main(["generate", "x", "--model", str(bundled_path), "--bos", "on"]) == 2
    assert "only with --preset tempo-2025" in capsys.readouterr().err
