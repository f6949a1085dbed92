"""The capture budget of a generation follows what the run can really hold: the most slots
its options allow (every member has q ≥ θ, so a set has at most ⌊1/θ⌋ members), and pass
by pass when even that could pass the budget; and a prompt plus max_steps beyond the
model's context is refused with the numbers."""

from __future__ import annotations

import re

import pytest
import torch
from tiny_models import tiny_llama_model

import attnvar
from attnvar.engine.capture import DEFAULT_MEMORY_BUDGET
from attnvar.engine.model import max_set_width

PROMPT = [5, 6, 7, 8, 9]
MB = 1_000_000


@pytest.fixture(scope="module")
def model():
    return tiny_llama_model()  # 3 layers × 4 heads, context 256, tokenizer-less


def estimate(slots: int, capture: attnvar.Capture | None = None) -> int:
    return (capture or attnvar.Capture()).estimate_bytes(3, 4, slots)


def test_the_widest_possible_set():
    assert max_set_width(0.1, 32) == 10
    assert max_set_width(0.1, 32, sample=True) == 11  # a drawn token joins
    assert max_set_width(0.1, 4) == 4
    assert max_set_width(0.3, 32) == 3
    assert max_set_width(1 / 3, 32) == 3  # rounding slack: three members at exactly 1/3
    assert max_set_width(1.0, 32) == 1
    assert max_set_width(0.001, 32) == 32


def test_the_bundled_models_100_steps_fit_the_default_budget():
    # The case: 30 layers × 9 heads, a short prompt, max_steps=100, θ 0.1. The old
    # worst case (max_width 32 per step) was 3,204 slots and 11 GB; sets of q ≥ 0.1 have
    # at most 10 members, so the run cannot pass 1,004 slots.
    spec = attnvar.Capture()
    assert spec.estimate_bytes(30, 9, 4 + 100 * 32) > 11e9 > DEFAULT_MEMORY_BUDGET
    assert spec.estimate_bytes(30, 9, 4 + 100 * max_set_width(0.1, 32)) < 1.1e9


def test_a_100_step_capture_run_is_not_refused(model):
    # A budget the old estimate (5 + 100 × 32 slots) would have refused, that the run's
    # real bound (5 + 100 × 10) fits.
    budget = 50 * MB
    assert estimate(5 + 100 * 32) > budget >= estimate(5 + 100 * 10)
    run = model.generate(PROMPT, max_steps=100, eos_ids=[],
                         capture=attnvar.Capture(memory_budget=budget))
    assert len(run.tree.steps) == 100 and run.stop_reason == "max_steps"
    assert run.attention.shape[-1] == run.num_slots > 100


def test_past_the_bound_the_budget_is_tracked_pass_by_pass(model, tmp_path):
    # θ 0.05 allows sets of 20: 2,005 slots could need ~190 MB; this run holds a few MB,
    # so with a 10 MB budget it runs to the end, pass by pass.
    budget = 10 * MB
    assert estimate(5 + 100 * max_set_width(0.05, 32)) > budget
    spec = attnvar.Capture(scores=True, memory_budget=budget)
    run = model.generate(PROMPT, threshold=0.05, max_steps=100, eos_ids=[], capture=spec)
    free = model.generate(PROMPT, threshold=0.05, max_steps=100, eos_ids=[],
                          capture=attnvar.Capture(scores=True))
    assert len(run.tree.steps) == 100 and estimate(run.num_slots, spec) <= budget
    assert run.slot_records == free.slot_records
    assert torch.equal(run.attention, free.attention) and torch.equal(run.scores, free.scores)
    # Streamed to disk, the same passes.
    model.generate(PROMPT, threshold=0.05, max_steps=100, eos_ids=[], capture=spec,
                   stream_to=tmp_path / "streamed")
    back = attnvar.load_run(tmp_path / "streamed")
    assert torch.equal(back.attention, free.attention)


def test_a_run_that_really_exceeds_the_budget_stops_with_a_clear_error(model, tmp_path):
    # θ 0.02 on this random model: sets of up to ~15, about 1,000 slots by step 100.
    budget = 10 * MB
    spec = attnvar.Capture(memory_budget=budget)
    with pytest.raises(ValueError) as info:
        model.generate(PROMPT, threshold=0.02, max_steps=100, eos_ids=[], capture=spec)
    message = str(info.value)
    assert "memory budget of 0.010 GB" in message and "at step " in message
    assert "5-token prompt + max_steps 100 × sets of up to 32" in message
    assert "raise memory_budget" in message
    # The slots it names (those of the pass it refused to keep) need more than the budget.
    slots = int(re.search(r"(\d+) slots would need", message).group(1))
    assert estimate(slots) > budget >= estimate(slots - 32)
    # Streaming: nothing is left behind, and the model goes on working.
    with pytest.raises(ValueError, match="memory budget"):
        model.generate(PROMPT, threshold=0.02, max_steps=100, eos_ids=[], capture=spec,
                       stream_to=tmp_path / "run")
    assert list(tmp_path.iterdir()) == []
    assert len(model.generate(PROMPT, max_steps=3, capture=spec).tree.steps) == 3


def test_a_prompt_whose_own_pass_exceeds_the_budget_is_refused_up_front(model):
    spec = attnvar.Capture(memory_budget=estimate(len(PROMPT)) - 1)
    with pytest.raises(ValueError, match=f"up to {len(PROMPT)} slots.*over the memory budget"):
        model.generate(PROMPT, max_steps=1, capture=spec)


def test_generate_many_bounds_the_slots_by_the_widest_set(model):
    budget = 50 * MB
    assert estimate(5 + 100 * 32) > budget >= estimate(5 + 100 * 10)
    runs = model.generate_many([PROMPT, PROMPT[:3]], max_steps=100, eos_ids=[],
                               capture=attnvar.Capture(memory_budget=budget))
    assert [len(r.tree.steps) for r in runs] == [100, 100]
    with pytest.raises(ValueError, match="over the memory budget"):
        model.generate_many([PROMPT], threshold=0.01, max_steps=100,
                            capture=attnvar.Capture(memory_budget=budget))


def test_a_run_past_the_context_is_refused_with_the_numbers(model):
    assert model.core.context_length == 256
    ids = list(range(5, 15))
    with pytest.raises(ValueError) as info:
        model.generate(ids, max_steps=250)
    message = str(info.value)
    assert "10-token prompt + max_steps 250 needs 260 positions" in message
    assert "context of 256" in message and "beyond_context=True" in message
    with pytest.raises(ValueError, match="260 positions"):
        model.generate_many([ids], max_steps=250)
    # Exactly the context is allowed; past it only when asked.
    assert len(model.generate(ids, threshold=0.9, max_steps=246, eos_ids=[]).tree.steps) == 246
    run = model.generate(ids, threshold=0.9, max_steps=250, eos_ids=[], beyond_context=True)
    assert len(run.tree.steps) == 250
