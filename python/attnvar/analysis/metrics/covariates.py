"""Token covariates for H3 (token semantics): what kind of token sits at a key.

Per slot: piece type, closed-class (function) word flag, Zipf word frequency, sibling
rank and selection probability. M2 enters them as key covariates z_j.

Piece types, decided in this order:

- ``special``: control tokens (``<|im_end|>``, ``<s>``, ``</s>``, ``<unk>``, ``<pad>``),
  byte pieces shown as ``<0xNN>``, and empty pieces;
- ``newline``: the piece contains a line break;
- ``punctuation``: after stripping whitespace, only punctuation or symbol characters
  remain, or nothing (a run of spaces): every piece that is not part of a word;
- ``word_initial``: the piece starts with whitespace, or follows a piece that ends in
  whitespace or a newline, or is the first piece of the text;
- ``continuation``: everything else (a word continued without a space).

The closed-class list below was written for attnvar: English determiners, pronouns,
prepositions, conjunctions, auxiliary and modal verbs, particles, negation, wh-words and
the commonest quantifiers. Only word-initial pieces are looked up (a continuation piece
that happens to spell "in" is part of another word).

Zipf frequency (log10 of occurrences per billion words, 0 = unknown) comes from the
``wordfreq`` package, which ships its data; it is given for word-initial pieces (their
stripped, lower-cased text) and is 0 for the other types, whose dummies absorb the level.
Without ``wordfreq`` the column is NaN and M2 leaves it out.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from .counting import as_view

PIECE_TYPES = ("word_initial", "continuation", "punctuation", "newline", "special")

CLOSED_CLASS_WORDS = frozenset(
    """
    a an the this that these those my your his her its our their whose which what
    whichever whatever some any no every each either neither both all another such
    i me you he him she it we us they them myself yourself himself herself itself
    ourselves yourselves themselves mine yours hers ours theirs one ones someone anyone
    everyone something anything nothing everything somebody anybody nobody everybody
    who whom whoever
    of in on at by for with about against between into through during before after
    above below to from up down out off over under again further than per via upon
    within without across along among around behind beyond near toward towards onto
    since until till despite throughout underneath beside besides inside outside amid
    and or but nor so yet if because although though while whereas unless whether
    as once when whenever where wherever why how then
    be am is are was were been being have has had having do does did doing done
    will would shall should can could may might must ought
    not never very too also just only even still already quite rather almost
    there here now
    many much more most few fewer less least several enough
    """.split()
)

_SPECIAL = re.compile(r"^(<\|[^|]*\|>|</?s>|<unk>|<pad>|<0x[0-9A-Fa-f]{2}>)$")


def piece_type(piece: str, previous: str | None = None) -> str:
    """The type of one piece; ``previous`` is the piece printed before it (None at the
    start of the text)."""
    if piece == "" or _SPECIAL.match(piece):
        return "special"
    if "\n" in piece or "\r" in piece:
        return "newline"
    core = piece.strip()
    if not core or all(unicodedata.category(c)[0] in "PS" for c in core):
        return "punctuation"
    if piece[0].isspace() or previous is None or previous == "" or previous[-1].isspace():
        return "word_initial"
    if _SPECIAL.match(previous) or all(unicodedata.category(c)[0] in "PS"
                                       for c in previous.strip()):
        # After "(" or a quote a word starts; after a word piece it continues.
        return "word_initial" if previous.strip()[-1:] in "([{\"'“‘«—–-/" else "continuation"
    return "continuation"


@lru_cache(maxsize=1)
def _wordfreq():
    try:
        import wordfreq
    except ImportError:
        warnings.warn("wordfreq is not installed (pip install wordfreq): the zipf covariate "
                      "is NaN and M2 leaves it out", stacklevel=3)
        return None
    return wordfreq


@lru_cache(maxsize=65536)
def zipf_frequency(word: str, lang: str = "en") -> float:
    """Zipf frequency of a word (wordfreq), NaN without wordfreq."""
    wf = _wordfreq()
    if wf is None:
        return float("nan")
    return float(wf.zipf_frequency(word, lang))


def token_covariates(run: Any, lang: str = "en"):
    """Covariates of every slot of a run.

    Parameters
    ----------
    run : a Run or CaptureView
    lang : wordfreq language code

    Returns
    -------
    pandas.DataFrame indexed by slot with columns piece, piece_type, closed_class (bool),
    zipf (float), sibling_rank (int, −1 for prompt slots), probability (float, NaN for
    prompt slots), is_parallel, set_width.
    """
    return cached_covariates(as_view(run), lang).copy()


def cached_covariates(view, lang: str = "en"):
    """:func:`token_covariates` of a CaptureView as the view keeps it (computed once per
    view), not copied: for readers that do not modify it."""
    key = ("token_covariates", lang)
    if key not in view.cache:
        view.cache[key] = _token_covariates(view, lang)
    return view.cache[key]


def _token_covariates(view, lang: str):
    import pandas as pd

    previous = _previous_pieces(view)
    types = [piece_type(p, prev) for p, prev in zip(view.pieces, previous, strict=True)]
    words = [p.strip().lower() for p in view.pieces]
    initial = [t == "word_initial" for t in types]
    closed = [i and w in CLOSED_CLASS_WORDS for i, w in zip(initial, words, strict=True)]
    zipf = [zipf_frequency(w, lang) if i else 0.0 for i, w in zip(initial, words, strict=True)]
    return pd.DataFrame(
        {
            "piece": view.pieces,
            "piece_type": pd.Categorical(types, categories=list(PIECE_TYPES)),
            "closed_class": closed,
            "zipf": np.asarray(zipf, dtype=np.float64),
            "sibling_rank": view.rank.astype(np.int64),
            "probability": view.probability,
            "is_parallel": view.is_parallel,
            "set_width": view.set_width,
        }
    ).rename_axis("slot")


def _previous_pieces(view) -> list[str | None]:
    """The piece printed before each slot: the previous prompt piece, or for a member of
    step t the rank-0 member of step t − 1 (the last prompt piece for t = 0)."""
    first_of_step: dict[int, str] = {}
    for piece, step, rank in zip(view.pieces, view.step, view.rank, strict=True):
        if step >= 0 and rank == 0:
            first_of_step[int(step)] = piece
    out: list[str | None] = []
    last_prompt: str | None = None
    for i, (piece, step) in enumerate(zip(view.pieces, view.step, strict=True)):
        if step < 0:
            out.append(view.pieces[i - 1] if i > 0 else None)
            last_prompt = piece
        else:
            out.append(first_of_step.get(int(step) - 1, last_prompt) if step > 0 else last_prompt)
    return out


COVARIATES = ("piece_type", "closed_class", "zipf", "sibling_rank", "probability")


def covariate_matrix(frame, names=COVARIATES) -> tuple[np.ndarray, list[str]]:
    """Numeric key covariates from :func:`token_covariates`.

    ``piece_type`` becomes dummies with ``word_initial`` as the reference level; the
    others enter as they are (closed_class as 0/1). Columns that are NaN everywhere
    (zipf without wordfreq) are left out; remaining NaNs (prompt slots) become 0: only
    generated keys enter M2.

    Returns
    -------
    ([N, c] float64 matrix, column names)
    """
    cols: list[np.ndarray] = []
    out_names: list[str] = []
    for name in names:
        if name == "piece_type":
            for level in PIECE_TYPES[1:]:
                cols.append((frame["piece_type"] == level).to_numpy(dtype=np.float64))
                out_names.append(f"piece_type[{level}]")
        else:
            col = frame[name].to_numpy(dtype=np.float64)
            if np.all(np.isnan(col)):
                continue
            cols.append(np.nan_to_num(col, nan=0.0))
            out_names.append(name)
    if not cols:
        return np.zeros((len(frame), 0)), []
    return np.stack(cols, axis=1), out_names
