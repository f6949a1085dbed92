"""Trees: the prompt plus every set, built by generation or by hand."""

from __future__ import annotations

import html
from collections.abc import Sequence

from .. import _core

# How many prompt ids and sets the text and notebook views of a tree show before "…".
SHOWN_PROMPT_IDS = 24
SHOWN_STEPS = 64


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


def _widths(tree: _core.Tree) -> list[int]:
    return [len(s.members) for s in tree.steps]


def tree_repr(tree: _core.Tree) -> str:
    """``repr`` of a tree: prompt length, steps and the width of each set."""
    widths = _widths(tree)
    shown = ",".join(str(w) for w in widths[:SHOWN_STEPS])
    more = ",…" if len(widths) > SHOWN_STEPS else ""
    parallel = sum(1 for w in widths if w > 1)
    return (f"Tree(prompt={len(tree.prompt)} ids, steps={len(widths)}, "
            f"parallel={parallel}, widths=[{shown}{more}])")


def tree_repr_html(tree: _core.Tree) -> str:
    """The notebook view of a tree: its prompt ids, then one row per set (step, width,
    members as id:probability, EOS marked; a tree built by hand has no probabilities).
    Token ids only: a tree carries no tokenizer (a Run shows the text)."""
    prompt = [str(i) for i in tree.prompt[:SHOWN_PROMPT_IDS]]
    if len(tree.prompt) > SHOWN_PROMPT_IDS:
        prompt.append("…")
    widths = _widths(tree)
    rows = []
    for t, step in enumerate(tree.steps[:SHOWN_STEPS]):
        members = " ".join(
            str(m.token_id) + ("" if m.probability != m.probability  # NaN: built by hand
                               else f":{m.probability:.3f}") + (" (eos)" if m.is_eos else "")
            for m in step.members)
        rows.append(f"<tr><td>{t}</td><td>{len(step.members)}</td>"
                    f"<td style='text-align:left'>{html.escape(members)}</td></tr>")
    if len(widths) > SHOWN_STEPS:
        rows.append(f"<tr><td colspan='3'>… {len(widths) - SHOWN_STEPS} more sets</td></tr>")
    summary = (f"{len(tree.prompt)} prompt ids · {len(widths)} steps · "
               f"{sum(1 for w in widths if w > 1)} parallel · max width {max(widths, default=0)}")
    return ("<table><caption>attnvar Tree: " + html.escape(summary) + "</caption>"
            "<tr><th>prompt</th><td colspan='2' style='text-align:left'>"
            + html.escape(" ".join(prompt)) + "</td></tr>"
            "<tr><th>step</th><th>width</th><th style='text-align:left'>members "
            "(id:probability)</th></tr>" + "".join(rows) + "</table>")


def _install_reprs() -> None:
    """Give the extension's Tree these views (unless the extension defines its own)."""
    if "__repr__" not in vars(_core.Tree):
        _core.Tree.__repr__ = tree_repr
    if "_repr_html_" not in vars(_core.Tree):
        _core.Tree._repr_html_ = tree_repr_html


_install_reprs()
