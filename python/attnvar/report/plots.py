"""Figures for runs: the set view, attention heatmaps, encodings side by side, forest plots.

Every function returns a fresh ``matplotlib.figure.Figure`` (or, for the set view's HTML
form, a string) built without ``pyplot``: no global figure registry, no backend chosen
here, nothing downloaded. matplotlib is imported on first use, so ``import attnvar``
never needs it. In Jupyter, run ``%matplotlib inline`` once so figures display.

Layers and heads are *model* indices (as in ``Capture(layers=..., heads=...)``); they are
mapped onto the run's captured ones and a layer or head the run did not capture is a
``ValueError``. Masked pairs (``run.visibility`` false: the mask the engine applied, the
compat preset's emulated isolation bug included) are drawn in ``MASKED_COLOR``, never as
zero-valued cells.
"""

from __future__ import annotations

import base64
import html
import io
import math
import multiprocessing as mp
import os
import textwrap
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..util.atomic import write_atomic

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..engine import Run

PARALLEL_COLOR = "#d95f02"  # tick labels, brackets and bars of parallel members
MASKED_COLOR = "#d4d4d4"  # heatmap cells whose pair is masked (outside the colour map)
BOUNDARY_COLOR = "white"  # lines between steps on heatmaps
MAX_TICK_LABELS = 120  # heatmaps with more slots label only the parallel ones
SET_COLORS = ("#d95f02", "#7570b3", "#1b9e77", "#e7298a", "#66a61e", "#e6ab02")

FIELD_LABELS = {"attention": "attention α", "scores": "pre-softmax score s"}


class HTMLString(str):
    """A string of HTML that Jupyter renders as HTML when it is a cell's value."""

    def _repr_html_(self) -> str:
        return str(self)


# ---- selecting layers, heads and slots ---------------------------------------------------
def _as_list(value: int | Sequence[int] | None) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    return [int(v) for v in value]


def _captured_indices(run: Run, layer: int | Sequence[int] | None,
                      head: int | Sequence[int] | None,
                      num_heads: int) -> tuple[list[int], list[int]]:
    """Indices into the run's dense [L', H', N, N] views for model layers and heads
    (None: every captured one)."""
    layer_ids = list(run.capture_layers)
    head_ids = list(run.capture_heads) if run.capture_heads is not None else list(range(num_heads))
    out = []
    wanted_ids = (("layer", _as_list(layer), layer_ids), ("head", _as_list(head), head_ids))
    for name, wanted, have in wanted_ids:
        if wanted is None:
            out.append(list(range(len(have))))
            continue
        missing = [w for w in wanted if w not in have]
        if missing:
            raise ValueError(f"{name} {missing} was not captured in this {run.encoding} run "
                             f"(captured {name}s: {have})")
        out.append([have.index(w) for w in wanted])
    return out[0], out[1]


def _dense(run: Run, field: str) -> Any:
    if field not in FIELD_LABELS:
        raise ValueError(f"field must be one of {', '.join(FIELD_LABELS)}; got {field!r}")
    return getattr(run, field)


def _visibility(run: Run) -> np.ndarray:
    """[N, N] bool (query, key): the mask the engine applied to the run."""
    return run.visibility.numpy().astype(bool)


def _slot_times(slots: pd.DataFrame) -> np.ndarray:
    """A slot's place in the text: its index for prompt slots, P + step for members, so
    siblings share one time whatever the encoding's positions say."""
    is_prompt = slots["is_prompt"].to_numpy()
    num_prompt = int(is_prompt.sum())
    return np.where(is_prompt, np.arange(len(slots)), num_prompt + slots["step"].to_numpy())


def _step_groups(slots: pd.DataFrame) -> np.ndarray:
    """Step of each slot, with every prompt slot in one group (-1)."""
    return np.where(slots["is_prompt"].to_numpy(), -1, slots["step"].to_numpy())


def _mean_matrix(run: Run, layer: int | Sequence[int] | None, head: int | Sequence[int] | None,
                 field: str) -> tuple[np.ndarray, np.ndarray]:
    """The [N, N] (query, key) field averaged over the chosen layers and heads, and the
    [N, N] bool mask of pairs to hide (masked, or a −inf score)."""
    import torch

    dense = _dense(run, field)
    li, hi = _captured_indices(run, layer, head, dense.shape[1])
    all_heads = hi == list(range(dense.shape[1]))
    # Layer by layer, so a long run's [L', H', N, N] view is never copied whole.
    total = torch.zeros(dense.shape[2:], dtype=torch.float64)
    for i in li:
        total += (dense[i] if all_heads else dense[i, hi]).sum(dim=0, dtype=torch.float64)
    matrix = (total / (len(li) * len(hi))).numpy()
    hidden = ~_visibility(run) | ~np.isfinite(matrix)
    return matrix, hidden


def _piece_label(piece: str) -> str:
    """A piece as a tick label: control characters made visible, '$' kept literal."""
    return (piece.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
            .replace("$", r"\$"))


def _selection_text(layer: int | Sequence[int] | None, head: int | Sequence[int] | None) -> str:
    def one(name: str, value: int | Sequence[int] | None) -> str:
        values = _as_list(value)
        if values is None:
            return f"all {name}s"
        if len(values) == 1:
            return f"{name} {values[0]}"
        return f"{name}s {values}"

    return f"{one('layer', layer)} · {one('head', head)}"


# ---- the set view ----------------------------------------------------------------------------
def received_attention(run: Run, layer: int | Sequence[int] | None = None,
                       head: int | Sequence[int] | None = None,
                       field: Literal["attention", "scores"] = "attention") -> pd.DataFrame:
    """Per slot: the mean attention it receives from later queries.

    A *later query* is a query slot that sees the key and belongs to a later step (for a
    prompt key: a later prompt slot or any member). Siblings and the slot itself never
    count, so the value means the same under every encoding. The field is first averaged
    over the chosen layers and heads. Pairs knocked out by an intervention are visible
    with α = 0 and count; for ``field="scores"`` their −inf scores cannot be averaged and
    are left out.

    Parameters
    ----------
    run : a run with ``field`` captured
    layer, head : model indices, a sequence of them, or None for every captured one
    field : "attention" (probabilities) or "scores" (pre-softmax)

    Returns
    -------
    pandas.DataFrame
        ``run.slots`` plus ``received`` (NaN where no later query sees the slot, e.g. the
        final step) and ``num_queries`` (how many later queries were averaged).
    """
    matrix, hidden = _mean_matrix(run, layer, head, field)
    slots = run.slots
    times = _slot_times(slots)
    later = (times[:, None] > times[None, :]) & ~hidden  # (query, key)
    count = later.sum(axis=0)
    total = np.where(later, matrix, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        received = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    out = slots.copy()
    out["received"] = received
    out["num_queries"] = count
    return out


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def set_view(
    run: Run,
    layer: int | Sequence[int] | None = None,
    head: int | Sequence[int] | None = None,
    *,
    output: Literal["html", "figure"] = "html",
    field: Literal["attention", "scores"] = "attention",
    vmax: float | None = None,
    include_prompt: bool = False,
) -> HTMLString | Figure:
    """The bracketed text with the attention each member receives from later queries.

    Parameters
    ----------
    run : a run with ``field`` captured
    layer, head : model indices (or sequences) to average over; None: every captured one
    output : "html" — the text with each slot shaded by the attention it receives and
        every member of a parallel set bracketed, outlined and annotated with its received
        attention (ā) and selection probability (p), which its tooltip repeats to four
        decimals; EOS members, which have no slot, are shown in italics with p only.
        Returned as an ``HTMLString`` (a ``str`` that Jupyter renders). "figure" — a bar
        per slot of received attention, parallel members coloured by set and annotated
        with p, their tick labels in ``PARALLEL_COLOR``.
    field : "attention" or "scores" (scores: the mean pre-softmax score received)
    vmax : the value of full shading (html); default: the largest value received by a
        member. Prompt slots above it (attention sinks) are shaded fully.
    include_prompt : figure only: also draw a bar for every prompt slot

    Returns
    -------
    HTMLString or matplotlib.figure.Figure
    """
    if output not in ("html", "figure"):
        raise ValueError(f"output must be 'html' or 'figure'; got {output!r}")
    table = received_attention(run, layer, head, field)
    if output == "figure":
        return _set_view_figure(run, table, layer, head, field, include_prompt)
    return _set_view_html(run, table, layer, head, field, vmax)


def _member_slots(run: Run) -> dict[tuple[int, int], int]:
    """(step, member index in the tree) → slot, for members that were fed."""
    return {(r["step"], r["member"]): i for i, r in enumerate(run.slot_records) if r["member"] >= 0}


def _set_view_html(run: Run, table: pd.DataFrame, layer, head, field: str,
                   vmax: float | None) -> HTMLString:
    received = table["received"].to_numpy()
    members = received[~table["is_prompt"].to_numpy()]
    if vmax is None:
        finite = members[np.isfinite(members)]
        vmax = float(finite.max()) if finite.size else 1.0
    vmin = 0.0
    if field == "scores":  # scores are signed: shade from the smallest value received
        finite = received[np.isfinite(received)]
        vmin = float(finite.min()) if finite.size else 0.0
    span = vmax - vmin if vmax > vmin else 1.0

    def shade(value: float) -> str:
        if not math.isfinite(value):
            return "transparent"
        alpha = min(max((value - vmin) / span, 0.0), 1.0) * 0.85
        return f"rgba(37,99,235,{alpha:.3f})"

    def token(slot: int, extra_class: str = "", probability: float | None = None) -> str:
        piece = str(table.at[slot, "piece"])
        value = float(received[slot])
        p = "" if probability is None else f" · p {_fmt(probability, 4)}"
        return (f'<span class="attnvar-slot{extra_class}" data-slot="{slot}" '
                f'data-received="{value!r}" title="slot {slot} · ā {_fmt(value, 4)} from '
                f'{int(table.at[slot, "num_queries"])} later queries{p}" '
                f'style="background:{shade(value)};border-radius:2px">'
                f"{html.escape(piece).replace(chr(10), '↵')}</span>")

    def annotated(slot: int | None, piece: str, probability: float) -> str:
        p = f"p {_fmt(probability, 2)}"
        if slot is None:
            body = (f'<span class="attnvar-unfed" title="no slot · p {_fmt(probability, 4)}" '
                    f'style="font-style:italic;color:#888">{html.escape(piece)}</span>')
            note = f"{p}<br>no slot"
            received_attr = ""
        else:
            body = token(slot, " attnvar-parallel", probability)
            note = f"ā {_fmt(float(received[slot]))}<br>{p}"
            received_attr = f' data-slot="{slot}"'
        return ('<span class="attnvar-member"' + received_attr +
                f' data-probability="{probability!r}" style="display:inline-flex;'
                'flex-direction:column;align-items:center;vertical-align:top">'
                f'{body}<span style="font-size:65%;color:#555;line-height:1.1">{note}</span>'
                '</span>')

    # Like run.bracketed, the text starts after a BOS slot (usually a sink anyway).
    bos = run.model.get("bos_id")
    shown_from = 1 if bos is not None and int(table["token_id"].iat[0]) == bos else 0
    prompt_slots = [i for i in np.flatnonzero(table["is_prompt"].to_numpy()) if i >= shown_from]
    parts = [token(int(i)) for i in prompt_slots]
    slot_of = _member_slots(run)
    for t, step in enumerate(run.tree.steps):
        if len(step.members) == 1:
            m = step.members[0]
            slot = slot_of.get((t, 0))
            parts.append(token(slot) if slot is not None
                         else annotated(None, run.pieces[m.token_id], m.probability))
            continue
        inner = "<span style='color:#999'>/</span>".join(
            annotated(slot_of.get((t, i)), run.pieces[m.token_id], m.probability)
            for i, m in enumerate(step.members)
        )
        parts.append(f'<span class="attnvar-set" data-step="{t}" style="border:1px solid '
                     f'{PARALLEL_COLOR};border-radius:4px;padding:0 2px;margin:0 1px;'
                     f'display:inline-block">[{inner}]</span>')
    caption = (f"{run.kind} · {run.encoding} · mean {FIELD_LABELS[field]} received from later "
               f"queries · {_selection_text(layer, head)} · full shade = {_fmt(vmax, 3)}")
    return HTMLString(
        f"<div class='attnvar-set-view'><div style='font-size:smaller;color:#555'>"
        f"{html.escape(caption)}</div><div style='font-family:monospace;white-space:pre-wrap;"
        f"line-height:2.4'>{''.join(parts)}</div></div>"
    )


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _set_view_figure(run: Run, table: pd.DataFrame, layer, head, field: str,
                     include_prompt: bool) -> Figure:
    shown = table if include_prompt else table[~table["is_prompt"]]
    n = len(shown)
    fig = _new_figure(float(np.clip(0.32 * n + 1.5, 6.0, 30.0)), 3.6)
    ax = fig.add_subplot()
    steps = shown["step"].to_numpy()
    parallel = shown["is_parallel"].to_numpy()
    set_index = {s: i for i, s in enumerate(sorted(set(steps[parallel])))}
    colors = [SET_COLORS[set_index[s] % len(SET_COLORS)] if p else "#9ca3af"
              for s, p in zip(steps, parallel, strict=True)]
    values = shown["received"].to_numpy()
    x = np.arange(n)
    bars = ax.bar(x, np.nan_to_num(values, nan=0.0), color=colors, width=0.8)
    probabilities = shown["probability"].to_numpy()
    for bar, value, p, prob in zip(bars, values, parallel, probabilities, strict=True):
        note = f"p {_fmt(prob, 2)}" if p else ""
        if not math.isfinite(value):  # nothing later sees it (the final step)
            note = f"{note} (no later query)" if note else "no later query"
        if note:
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=7, color="#444", rotation=90)
    ax.set_xticks(x, [_piece_label(p) for p in shown["piece"]], rotation=90, fontsize=8)
    for label, p in zip(ax.get_xticklabels(), parallel, strict=True):
        if p:
            label.set_color(PARALLEL_COLOR)
            label.set_fontweight("bold")
    ax.set_xlim(-0.6, n - 0.4)
    ax.margins(y=0.25)
    ax.set_ylabel(f"mean {FIELD_LABELS[field]}\nreceived from later queries")
    ax.set_title(f"{run.encoding} · {_selection_text(layer, head)} · coloured: members of "
                 "parallel sets", fontsize=9)
    fig.suptitle(textwrap.shorten(_piece_label(run.bracketed), 120, placeholder=" …"), fontsize=9)
    return fig


def png_bytes(fig: Figure, dpi: int) -> bytes:
    """A figure rendered as PNG bytes (the report's figures and the exported run views)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def png_bytes_all(figures: Sequence[Figure], dpi: int, workers: int = 1) -> list[bytes]:
    """:func:`png_bytes` of each figure, in order. ``workers`` > 1, where processes can
    fork: rendered side by side by that many forked processes, which inherit the
    figures (nothing is pickled but the PNGs coming back), the same bytes."""
    if workers <= 1 or len(figures) <= 1 or "fork" not in mp.get_all_start_methods():
        return [png_bytes(fig, dpi) for fig in figures]
    with ProcessPoolExecutor(min(workers, len(figures)), mp_context=mp.get_context("fork"),
                             initializer=_start_renderer, initargs=(list(figures), dpi)) as pool:
        return list(pool.map(_render, range(len(figures))))


_to_render: tuple[list, int] = ([], 0)  # a rendering worker's figures and dpi


def _start_renderer(figures: list, dpi: int) -> None:
    global _to_render
    _to_render = figures, dpi


def _render(index: int) -> bytes:
    figures, dpi = _to_render
    return png_bytes(figures[index], dpi)


def export_run_view(
    run: Run,
    path: str | os.PathLike,
    layer: int | Sequence[int] | None = None,
    head: int | Sequence[int] | None = None,
    *,
    field: Literal["attention", "scores"] = "attention",
) -> Path:
    """Write one run's views as a standalone HTML page (no external files, no scripts):
    its summary (the notebook repr: bracketed text, options, what was captured), the set
    view as HTML (hover a member: its slot, received attention and selection
    probability) and as a bar chart embedded as a PNG. Opens in any browser; the same
    page is what ``attnvar inspect RUN --html FILE`` writes.

    Parameters
    ----------
    run : a run with ``field`` captured (a run whose capture was removed raises the
        ``ValueError`` reading its capture does)
    path : the page to write (atomically)
    layer, head, field : as for :func:`set_view`

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    table = received_attention(run, layer, head, field)  # once for both views
    text_view = _set_view_html(run, table, layer, head, field, None)
    png = png_bytes(_set_view_figure(run, table, layer, head, field, False), dpi=80)
    title = f"attnvar {run.kind} run · {run.encoding}"
    body = (f"<h1 style='font-size:1.2em'>{html.escape(title)}</h1>"
            f"<section id='run'>{run._repr_html_()}</section>"
            f"<section id='set-view'><h2 style='font-size:1.05em'>Set view</h2>{text_view}"
            "</section>"
            f"<figure id='set-view-figure'><img alt='set view' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'/>"
            "<figcaption>Mean "
            f"{html.escape(FIELD_LABELS[field])} each slot receives from later queries "
            f"({html.escape(_selection_text(layer, head))})</figcaption></figure>")
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'/>"
            f"<title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif;max-width:70em;margin:1em auto'>{body}"
            "</body></html>\n")
    out = Path(path)
    write_atomic(out, page)
    return out


# ---- heatmaps --------------------------------------------------------------------------------
def _draw_heatmap(ax: Axes, run: Run, matrix: np.ndarray, hidden: np.ndarray, slots: np.ndarray,
                  norm: Any, cmap: str) -> Any:
    """Draw the [n, n] submatrix of ``slots`` on ``ax``: masked pairs in MASKED_COLOR, step
    boundaries as lines, tick labels = pieces, parallel ones in PARALLEL_COLOR."""
    import matplotlib as mpl

    sub = np.ma.masked_array(matrix[np.ix_(slots, slots)], mask=hidden[np.ix_(slots, slots)])
    colormap = mpl.colormaps[cmap].with_extremes(bad=MASKED_COLOR)
    image = ax.imshow(sub, cmap=colormap, norm=norm, interpolation="nearest", aspect="equal")
    table = run.slots.iloc[slots]
    groups = _step_groups(table)
    for b in np.flatnonzero(groups[1:] != groups[:-1]) + 1:
        ax.axhline(b - 0.5, color=BOUNDARY_COLOR, linewidth=0.8, gid="step_boundary")
        ax.axvline(b - 0.5, color=BOUNDARY_COLOR, linewidth=0.8, gid="step_boundary")
    n = len(slots)
    parallel = table["is_parallel"].to_numpy()
    # Beyond MAX_TICK_LABELS slots only parallel slots keep a label (zoom with ``slots``).
    ticked = np.arange(n) if n <= MAX_TICK_LABELS else np.flatnonzero(parallel)
    labels = [_piece_label(table["piece"].iat[i]) for i in ticked]
    size = float(np.clip(9 * 30 / max(n, 1), 4, 9))
    ax.set_xticks(ticked, labels, rotation=90, fontsize=size)
    ax.set_yticks(ticked, labels, fontsize=size)
    for axis_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for label, p in zip(axis_labels, parallel[ticked], strict=True):
            if p:
                label.set_color(PARALLEL_COLOR)
                label.set_fontweight("bold")
    ax.set_xlabel("key slot")
    ax.set_ylabel("query slot")
    return image


def _slot_selection(run: Run, slots: Sequence[int] | None) -> np.ndarray:
    if slots is None:
        return np.arange(run.num_slots)
    chosen = np.asarray(sorted(set(int(s) for s in slots)), dtype=int)
    if chosen.size == 0 or chosen[0] < 0 or chosen[-1] >= run.num_slots:
        raise ValueError(f"slots must be a non-empty subset of [0, {run.num_slots})")
    return chosen


def _norm(values: np.ndarray, field: str, gamma: float, vmin: float | None,
          vmax: float | None) -> Any:
    from matplotlib.colors import Normalize, PowerNorm

    finite = values[np.isfinite(values)]
    lo = vmin if vmin is not None else (0.0 if field == "attention" else
                                        float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1e-9
    if gamma != 1.0:
        return PowerNorm(gamma=gamma, vmin=lo, vmax=hi)
    return Normalize(vmin=lo, vmax=hi)


def attention_heatmap(
    run: Run,
    layer: int,
    head: int | Sequence[int] | None = None,
    *,
    field: Literal["attention", "scores"] = "attention",
    slots: Sequence[int] | None = None,
    gamma: float = 1.0,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
) -> Figure:
    """The [N, N] attention (or scores) of one layer and head, query rows × key columns.

    Tick labels are the slots' pieces (beyond ``MAX_TICK_LABELS`` slots, only the parallel
    ones); those of parallel slots are bold in ``PARALLEL_COLOR`` on both axes. Masked
    pairs are drawn in ``MASKED_COLOR`` (outside the colour map, so a masked pair never
    looks like a visible pair with α = 0). With ``field="scores"``, pairs knocked out by
    an intervention (score −inf) are drawn in ``MASKED_COLOR`` too; their attention is a
    visible 0. White lines separate the prompt and each step's set.

    Parameters
    ----------
    run : a run with ``field`` captured for ``layer``
    layer : model layer index
    head : model head index, a sequence of them, or None: the mean over captured heads
    field : "attention" or "scores"
    slots : show only these slots on both axes (e.g. ``range(20, 40)``); default all
    gamma : ≠ 1 uses a power-law colour scale (0.5 brings out small attention weights)
    vmin, vmax : colour limits; default 0 (attention) or the smallest visible score, and
        the largest visible value
    cmap : a matplotlib colour map name

    Returns
    -------
    matplotlib.figure.Figure
        One heatmap axes and its colour bar.
    """
    matrix, hidden = _mean_matrix(run, layer, head, field)
    chosen = _slot_selection(run, slots)
    shown = np.where(hidden, np.nan, matrix)[np.ix_(chosen, chosen)]
    n = len(chosen)
    side = float(np.clip(0.2 * n + 2.0, 4.5, 14.0))
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    norm = _norm(shown, field, gamma, vmin, vmax)
    image = _draw_heatmap(ax, run, matrix, hidden, chosen, norm, cmap)
    fig.colorbar(image, ax=ax, shrink=0.8, label=f"{FIELD_LABELS[field]} (grey: masked)")
    ax.set_title(f"{run.encoding} · {_selection_text(layer, head)}", fontsize=10)
    return fig


def encodings_side_by_side(
    runs: Mapping[str, Run],
    layer: int,
    head: int | Sequence[int] | None = None,
    *,
    field: Literal["attention", "scores"] = "attention",
    gamma: float = 1.0,
    cmap: str = "viridis",
) -> Figure:
    """One tree under several encodings: a row of heatmaps on one shared colour scale.

    Parameters
    ----------
    runs : title → run, e.g. ``{enc: model.replay(tree, enc, capture=...) for enc in ...}``;
        runs may have different slot counts (``top_only`` keeps rank-0 members only)
    layer, head : as in :func:`attention_heatmap`
    field, gamma, cmap : as in :func:`attention_heatmap`

    Returns
    -------
    matplotlib.figure.Figure
        ``len(runs)`` heatmap axes (in the mapping's order, titled by its keys) and one
        colour bar shared by all; every image has the same colour limits.
    """
    if not runs:
        raise ValueError("encodings_side_by_side needs at least one run")
    drawn = []
    for name, run in runs.items():
        try:
            matrix, hidden = _mean_matrix(run, layer, head, field)
        except ValueError as err:
            raise ValueError(f"run {name!r}: {err}") from None
        drawn.append((name, run, matrix, hidden))
    pooled = np.concatenate([np.where(h, np.nan, m).ravel() for _, _, m, h in drawn])
    norm = _norm(pooled, field, gamma, None, None)
    largest = max(r.num_slots for _, r, _, _ in drawn)
    side = float(np.clip(0.2 * largest + 2.0, 3.5, 9.0))
    fig = _new_figure(side * len(drawn) + 1.2, side + 0.6)
    axes = fig.subplots(1, len(drawn), squeeze=False)[0]
    image = None
    for ax, (name, run, matrix, hidden) in zip(axes, drawn, strict=True):
        image = _draw_heatmap(ax, run, matrix, hidden, np.arange(run.num_slots), norm, cmap)
        ax.set_title(name if name == run.encoding else f"{name}\n({run.encoding})", fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label=f"{FIELD_LABELS[field]} (grey: masked)")
    fig.suptitle(_selection_text(layer, head), fontsize=10)
    return fig


# ---- forest plot -----------------------------------------------------------------------------
def forest_plot(
    frame: pd.DataFrame,
    estimate: str,
    lower: str,
    upper: str,
    label: str,
    *,
    pooled: str | Mapping[str, Any] | None = None,
    weight: str | None = None,
    reference: float | None = 0.0,
    xlabel: str | None = None,
    title: str | None = None,
    clip: bool = False,
) -> Figure:
    """Per-row effects with confidence intervals, top to bottom in frame order, and an
    optional pooled row drawn as a diamond below a separator.

    Parameters
    ----------
    frame : one row per unit (e.g. prompt)
    estimate, lower, upper : columns of the point estimate and the interval bounds
    label : column of the row labels
    pooled : the pooled effect — the label of a row of ``frame`` (taken out of the list),
        or a mapping / Series with the ``estimate``, ``lower`` and ``upper`` columns (and
        optionally ``label``; default "pooled")
    weight : column of row weights (e.g. inverse variance) that scale the markers' area
    reference : x of the dashed no-effect line; None draws none
    xlabel, title : axis label (default: ``estimate``) and title
    clip : keep the x range to what the estimates need (every estimate and the pooled
        interval, plus three median interval half-widths): an interval reaching beyond
        ends in an arrow at the edge, labelled with its true end, instead of squashing
        every other row

    Returns
    -------
    matplotlib.figure.Figure
        One axes; y tick labels are the row labels then the pooled label. Rows with a
        missing estimate keep their label and draw nothing.
    """
    from matplotlib.patches import Polygon

    wanted = (estimate, lower, upper, label, weight)
    missing = [c for c in wanted if c is not None and c not in frame]
    if missing:
        raise ValueError(f"forest_plot: column(s) {missing} not in the frame "
                         f"(columns: {list(frame.columns)})")
    rows = frame
    pooled_row: Mapping[str, Any] | None = None
    if isinstance(pooled, str):
        hit = frame[label].astype(str) == pooled
        if not hit.any():
            raise ValueError(f"forest_plot: no row has {label} == {pooled!r}")
        pooled_row = frame[hit].iloc[0]
        rows = frame[~hit]
    elif pooled is not None:
        pooled_row = pooled
        for c in (estimate, lower, upper):
            if c not in pooled:
                raise ValueError(f"forest_plot: the pooled row lacks {c!r}")

    n = len(rows)
    height = 0.28 * (n + (2 if pooled_row is not None else 0)) + 1.4
    fig = _new_figure(6.4, max(2.5, height))
    ax = fig.add_subplot()
    y = np.arange(n, 0, -1, dtype=float)
    est = rows[estimate].to_numpy(dtype=float)
    lo = rows[lower].to_numpy(dtype=float)
    hi = rows[upper].to_numpy(dtype=float)
    limits = _clip_limits(est, lo, hi, pooled_row, (estimate, lower, upper)) if clip else None
    if limits is not None:
        lo, hi = _draw_clipped(ax, y, lo, hi, limits)
    ax.hlines(y, lo, hi, color="#374151", linewidth=1.2, gid="interval")
    sizes = np.full(n, 36.0)
    if weight is not None:
        w = rows[weight].to_numpy(dtype=float)
        top = np.nanmax(w) if np.isfinite(w).any() else 1.0
        sizes = 16.0 + 100.0 * np.nan_to_num(w / top, nan=0.0)
    ax.scatter(est, y, s=sizes, marker="s", color="#1f2937", zorder=3, gid="estimate")
    ticks = list(y)
    names = [str(v) for v in rows[label]]
    if pooled_row is not None:
        pe, pl, pu = (float(pooled_row[c]) for c in (estimate, lower, upper))
        py = -0.5
        ax.axhline(0.25, color="#9ca3af", linewidth=0.8)
        ax.add_patch(Polygon([(pl, py), (pe, py + 0.3), (pu, py), (pe, py - 0.3)], closed=True,
                             color=PARALLEL_COLOR, gid="pooled"))
        ticks.append(py)
        names.append(str(pooled_row[label]) if label in pooled_row else "pooled")
    if reference is not None:
        ax.axvline(reference, color="#6b7280", linestyle="--", linewidth=0.9, gid="reference")
    ax.set_yticks(ticks, names, fontsize=8)
    if pooled_row is not None:
        ax.get_yticklabels()[-1].set_fontweight("bold")
    ax.set_ylim(min(ticks) - 0.8, (max(ticks) if ticks else 0) + 0.8)
    ax.set_xlabel(xlabel or estimate)
    if title:
        ax.set_title(title, fontsize=10)
    if limits is not None:
        ax.set_xlim(*limits)
    else:
        ax.autoscale(enable=True, axis="x")
    return fig


def _clip_limits(est, lo, hi, pooled_row, cols) -> tuple[float, float] | None:
    """Every estimate and the pooled interval, plus three typical (median) half-widths of
    the intervals on each side, no further than the intervals themselves reach."""
    ok = np.isfinite(est) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return None
    keep = [est[ok]]
    if pooled_row is not None:
        keep.append(np.array([float(pooled_row[c]) for c in cols]))
    keep = np.concatenate(keep)
    half = float(np.median((hi[ok] - lo[ok]) / 2))
    low = max(keep.min() - 3 * half, lo[ok].min())
    high = min(keep.max() + 3 * half, hi[ok].max())
    pad = 0.05 * (high - low or 1.0)
    return low - pad, high + pad


def _draw_clipped(ax, y, lo, hi, limits):
    """Clip interval ends to ``limits``; mark each clipped end with an arrow and its value."""
    left, right = limits
    for yi, a, b in zip(y, lo, hi, strict=True):
        if np.isfinite(a) and a < left:
            ax.scatter([left], [yi], marker="<", s=28, color="#374151", zorder=3, gid="clipped")
            ax.annotate(f"{a:.3g}", (left, yi), xytext=(3, 4), textcoords="offset points",
                        fontsize=6, color="#374151")
        if np.isfinite(b) and b > right:
            ax.scatter([right], [yi], marker=">", s=28, color="#374151", zorder=3, gid="clipped")
            ax.annotate(f"{b:.3g}", (right, yi), xytext=(-18, 4), textcoords="offset points",
                        fontsize=6, color="#374151")
    return np.clip(lo, left, right), np.clip(hi, left, right)


# ---- study figures (attnvar.hypotheses, the report) --------------------------------------------
def _groups(frame: pd.DataFrame, group: str | None):
    if group is None or group not in frame:
        return [(None, frame)]
    return list(frame.groupby(group, sort=True))


def profile_plot(
    frame: pd.DataFrame, x: str, y: str, lower: str, upper: str, *, group: str | None = None,
    xlabel: str | None = None, ylabel: str | None = None, title: str | None = None,
) -> Figure:
    """A line per ``group`` of ``y`` over ``x`` with a shaded ``lower``–``upper`` band
    (e.g. the effect by query step with its 95 % CI), and a dashed zero line."""
    fig = _new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    for i, (name, sub) in enumerate(_groups(frame, group)):
        sub = sub.sort_values(x)
        color = SET_COLORS[i % len(SET_COLORS)]
        ax.plot(sub[x], sub[y], marker="o", markersize=3, color=color,
                label=None if name is None else str(name), gid="profile")
        ax.fill_between(sub[x], sub[lower], sub[upper], color=color, alpha=0.18, linewidth=0)
    ax.axhline(0, color="#6b7280", linestyle="--", linewidth=0.9)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if group is not None and group in frame:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def paired_plot(
    frame: pd.DataFrame, first: str, second: str, *, group: str | None = None,
    ylabel: str | None = None, title: str | None = None,
) -> Figure:
    """One line per row joining ``first`` and ``second`` (e.g. the incomplete and
    complete versions of a matched pair), one panel per ``group``, means in bold."""
    parts = _groups(frame, group)
    fig = _new_figure(3.2 * len(parts) + 0.6, 3.6)
    axes = fig.subplots(1, len(parts), squeeze=False, sharey=True)[0]
    for ax, (name, sub) in zip(axes, parts, strict=True):
        for a, b in zip(sub[first], sub[second], strict=True):
            ax.plot([0, 1], [a, b], color="#9ca3af", marker="o", markersize=3, linewidth=0.8)
        ax.plot([0, 1], [sub[first].mean(), sub[second].mean()], color=PARALLEL_COLOR,
                marker="s", linewidth=2.2, gid="mean")
        ax.axhline(0, color="#6b7280", linestyle="--", linewidth=0.9)
        ax.set_xticks([0, 1], [first, second])
        ax.set_xlim(-0.3, 1.3)
        if name is not None:
            ax.set_title(str(name), fontsize=9)
    axes[0].set_ylabel(ylabel or "effect")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def dose_plot(
    summary: pd.DataFrame, x: str, *, group: str | None = None, xlabel: str | None = None,
    title: str | None = None,
) -> Figure:
    """Mean reduction in % with its 95 % CI over a dose variable, from a
    ``stats.summarize_family`` table (columns ``mean_pct, ci_pct_low, ci_pct_high``)."""
    fig = _new_figure(5.6, 3.6)
    ax = fig.add_subplot()
    for i, (name, sub) in enumerate(_groups(summary, group)):
        sub = sub.sort_values(x)
        color = SET_COLORS[i % len(SET_COLORS)]
        err = np.vstack([sub["mean_pct"] - sub["ci_pct_low"], sub["ci_pct_high"] - sub["mean_pct"]])
        ax.errorbar(sub[x], sub["mean_pct"], yerr=err, marker="o", capsize=3, color=color,
                    label=None if name is None else str(name), gid="dose")
    ax.axhline(0, color="#6b7280", linestyle="--", linewidth=0.9)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel("reduction in % (positive = less)")
    if group is not None and group in summary:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def spec_curve(spec: pd.DataFrame) -> Figure:
    """The specification curve: every specification's mean reduction in % with its CI,
    sorted, one panel per mode, each labelled on the x axis (metric variant, then
    "+sinks" when sinks are kept, "obs" for the observational design, "all" without the
    degeneracy exclusions); the preregistered specification in colour."""
    parts = _groups(spec, "mode")
    fig = _new_figure(max(7.2, 0.16 * len(spec) / max(len(parts), 1) + 2), 3.6 * len(parts) + 0.6)
    axes = fig.subplots(len(parts), 1, squeeze=False)[:, 0]
    for ax, (name, sub) in zip(axes, parts, strict=True):
        sub = sub.sort_values("mean_pct").reset_index(drop=True)
        x = np.arange(len(sub))
        colors = [PARALLEL_COLOR if p else "#374151" for p in sub["primary"]]
        ax.vlines(x, sub["ci_pct_low"], sub["ci_pct_high"], colors=colors, linewidth=1)
        ax.scatter(x, sub["mean_pct"], c=colors, s=14, zorder=3, gid="specification")
        ax.axhline(0, color="#6b7280", linestyle="--", linewidth=0.9)
        ax.set_xticks(x, [_spec_label(r) for r in sub.to_dict("records")], rotation=90,
                      fontsize=5)
        ax.set_ylabel("reduction in %")
        ax.set_title(f"{name}: {len(sub)} specifications (orange: preregistered)", fontsize=9)
    return fig


def _spec_label(r: Mapping[str, Any]) -> str:
    parts = [f"{r['metric']} {r['variant']}"]
    if "sinks_excluded" in r and not r["sinks_excluded"]:
        parts.append("+sinks")
    if r.get("design") == "observational":
        parts.append("obs")
    if "exclusions" in r and not r["exclusions"]:
        parts.append("all")
    return " ".join(parts)


def head_heatmap(table: pd.DataFrame, value: str, mark: str | None = None, *,
                 title: str | None = None) -> Figure:
    """Layer × head map of ``value`` (diverging, centred on 0), with a dot on heads where
    ``mark`` is true (e.g. rejected after BH)."""
    from matplotlib.colors import TwoSlopeNorm

    layers = sorted(table["layer"].unique())
    heads_ = sorted(table["head"].unique())
    grid = np.full((len(layers), len(heads_)), np.nan)
    li = {v: i for i, v in enumerate(layers)}
    hi = {v: i for i, v in enumerate(heads_)}
    for r in table.itertuples(index=False):
        grid[li[r.layer], hi[r.head]] = getattr(r, value)
    finite = grid[np.isfinite(grid)]
    bound = float(np.max(np.abs(finite))) if finite.size else 1.0
    bound = bound if bound > 0 else 1.0
    fig = _new_figure(min(max(5.0, 1.6 + 0.45 * len(heads_)), 9.0),
                      min(1.6 + 0.22 * len(layers), 10.0))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -bound, bound),
                      aspect="auto", interpolation="nearest")
    if mark is not None:
        m = table[table[mark].astype(bool)]
        ax.scatter([hi[h] for h in m["head"]], [li[v] for v in m["layer"]], s=10, c="black",
                   gid="marked")
    ax.set_xticks(range(len(heads_)), [str(h) for h in heads_], fontsize=7)
    ax.set_yticks(range(len(layers)), [str(v) for v in layers], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, shrink=0.8, label=value)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=8)
    return fig


def degeneracy_plot(rates: pd.DataFrame, flags: Sequence[str]) -> Figure:
    """Flag and exclusion rates (share of runs) per condition, as grouped bars."""
    cols = [*flags, "excluded"]
    labels = [f"{r['mode']} θ={r['threshold']:g}" for _, r in rates.iterrows()]
    fig = _new_figure(7.2, 3.4)
    ax = fig.add_subplot()
    width = 0.8 / len(cols)
    x = np.arange(len(rates))
    for i, c in enumerate(cols):
        ax.bar(x + i * width, rates[c], width, label=c.removeprefix("flag_"),
               color=SET_COLORS[i % len(SET_COLORS)] if c != "excluded" else "#111827")
    ax.set_xticks(x + 0.4 - width / 2, labels, fontsize=8)
    ax.set_ylabel("share of runs")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=4)
    ax.set_title("Degeneracy flags and exclusions", fontsize=10)
    return fig


def distance_plot(table: pd.DataFrame) -> Figure:
    """Mean query-demeaned score by logical distance, parallel vs non-parallel keys, one
    panel per mode, solid for the generated run and dashed for each replay."""
    parts = _groups(table, "mode")
    fig = _new_figure(4.2 * len(parts) + 0.6, 3.6)
    axes = fig.subplots(1, len(parts), squeeze=False, sharey=True)[0]
    colors = {"parallel": PARALLEL_COLOR, "non_parallel": "#374151"}
    for ax, (name, sub) in zip(axes, parts, strict=True):
        for (source, kind), line in sub.groupby(["source", "set"]):
            line = line.sort_values("distance")
            ax.plot(line["distance"], line["mean_score"], color=colors.get(kind, "#6b7280"),
                    linestyle="-" if source == "generated" else "--", marker="o", markersize=2,
                    label=f"{kind}, {source}", gid="distance")
        ax.set_xscale("symlog", linthresh=2)
        ax.set_xlabel("logical distance")
        ax.set_title(str(name), fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("score − query mean")
    fig.suptitle("Distance profile of counted pairs", fontsize=10)
    return fig
