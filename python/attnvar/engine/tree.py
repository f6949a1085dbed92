"""Trees: the prompt plus every set, built by generation or by hand."""

from __future__ import annotations

from collections.abc import Sequence

from .. import _core


def piece_to_id(tokenizer, piece: str | int) -> int:
    """The id of one member given as an id or as its piece text (leading space included)."""
    if isinstance(piece, int):
        if not 0 <= piece < tokenizer.vocab_size:
            raise ValueError(
                f"token id {piece} is outside the vocabulary [0, {tokenizer.vocab_size})")
        return piece
    ids = tokenizer.encode(piece, add_special=False)
    if len(ids) != 1:
        raise ValueError(
            f"piece {piece!r} is not a single token of this tokenizer (it encodes to {ids}); "
            "give members as single-token pieces or ids"
        )
    return ids[0]


def build_tree(
    tokenizer,
    prompt: str | Sequence[int],
    steps: Sequence[Sequence[str | int]],
    eos_ids: Sequence[int] = (),
) -> _core.Tree:
    """A tree built by hand, so a study can force parallel tokens at chosen positions.

    Parameters
    ----------
    tokenizer : the model's tokenizer (``model.tokenizer``)
    prompt : text (tokenized as the model does, BOS included when it adds one) or ids
    steps : ``steps[t]`` lists S_t's members in rank order, as pieces (``" mat"``) or ids
    eos_ids : ids marked EOS (never fed)
    """
    prompt_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    if not prompt_ids:
        raise ValueError("the prompt tokenizes to nothing")
    step_ids = [[piece_to_id(tokenizer, m) for m in step] for step in steps]
    return _core.Tree.build(prompt_ids, step_ids, list(eos_ids))
