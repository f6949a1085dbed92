"""attnvar.plots on small runs of the bundled model: each figure has the structure it
promises (axes, marked parallel ticks, masked cells outside the colour map, step lines,
shared colour limits), and the numbers drawn are the run's."""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
mpl = pytest.importorskip("matplotlib")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import attnvar  # noqa: E402
from attnvar import plots  # noqa: E402

PROMPT = "The cat sat on the"
STEPS = [[" mat", " floor"], [" and"], [" the"]]
LAYERS = [2, 5]
ENCODINGS = ("shared_isolated", "shared_visible", "serial", "fractional", "top_only")


@pytest.fixture(scope="module")
def model(bundled_path):
    return attnvar.load_model(bundled_path)


@pytest.fixture(scope="module")
def tree(model):
    return attnvar.Tree.build(model, PROMPT, STEPS)


@pytest.fixture(scope="module")
def replay(model, tree):
    """Slots: 0–4 prompt, 5 ' mat' and 6 ' floor' (step 0), 7 ' and', 8 ' the'."""
    spec = attnvar.Capture(layers=LAYERS, scores=True)
    return model.replay(tree, "shared_isolated", capture=spec)


@pytest.fixture(scope="module")
def encodings(model, tree):
    spec = attnvar.Capture(layers=[2], heads=[0, 3])
    return {enc: model.replay(tree, enc, capture=spec) for enc in ENCODINGS}


@pytest.fixture(scope="module")
def generated(model):
    run = model.generate(PROMPT, threshold=0.1, max_steps=4, capture=attnvar.Capture(layers=[2]))
    assert run.slots["is_parallel"].any(), "the fixture needs a parallel set"
    return run


def _brute_received(run, layer_idx: list[int], head_idx: list[int]) -> np.ndarray:
    """Mean over later-step queries that see the key, by explicit loops."""
    a = run.attention[layer_idx][:, head_idx].double().mean(dim=(0, 1)).numpy()
    slots = run.slots
    vis = run.visibility.numpy()
    num_prompt = int(slots["is_prompt"].sum())

    def time(i: int) -> int:
        return i if slots["is_prompt"].iat[i] else num_prompt + int(slots["step"].iat[i])

    out = []
    for k in range(run.num_slots):
        values = [a[q, k] for q in range(run.num_slots) if vis[q, k] and time(q) > time(k)]
        out.append(np.mean(values) if values else np.nan)
    return np.array(out)


def _parallel_color_flags(labels) -> list[bool]:
    return [to_rgba(t.get_color()) == to_rgba(plots.PARALLEL_COLOR) for t in labels]


def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())


def _cell_pixel(fig: Figure, ax, rgba: np.ndarray, row: int, col: int) -> np.ndarray:
    x, y = ax.transData.transform((col, row))
    height = rgba.shape[0]
    return rgba[int(round(height - y)), int(round(x)), :3] / 255.0


# ---- received attention and the set view --------------------------------------------------
def test_received_attention_is_the_mean_over_later_visible_queries(replay):
    table = plots.received_attention(replay, layer=5, head=[1, 4])
    np.testing.assert_allclose(table["received"], _brute_received(replay, [1], [1, 4]),
                               rtol=1e-6, equal_nan=True)
    # Siblings never count (even where visible); the final step has no later query.
    assert table["num_queries"].tolist()[5:] == [2, 2, 1, 0]
    assert np.isnan(table["received"].iat[8])


def test_received_attention_excludes_visible_siblings(encodings):
    visible = encodings["shared_visible"]
    assert bool(visible.visibility[6, 5]) and bool(visible.visibility[5, 6])
    table = plots.received_attention(visible)
    assert table["num_queries"].tolist()[5:7] == [2, 2]
    np.testing.assert_allclose(table["received"], _brute_received(visible, [0], [0, 1]),
                               rtol=1e-6, equal_nan=True)


def test_layers_and_heads_not_captured_are_refused(replay, encodings):
    with pytest.raises(ValueError, match=r"layer \[3\] was not captured"):
        plots.received_attention(replay, layer=3)
    with pytest.raises(ValueError, match=r"head \[1\] was not captured"):
        plots.attention_heatmap(encodings["serial"], 2, 1)


class _Spans(HTMLParser):
    """Collects the attributes of every span by class."""

    def __init__(self) -> None:
        super().__init__()
        self.by_class: dict[str, list[dict]] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in (attrs.get("class") or "").split():
            self.by_class.setdefault(name, []).append(attrs)


def test_set_view_html_annotates_every_member_with_received_attention_and_probability(generated):
    view = plots.set_view(generated, layer=2)
    assert isinstance(view, str) and view._repr_html_() == view
    spans = _Spans()
    spans.feed(view)
    steps = generated.tree.steps
    parallel_steps = [t for t, s in enumerate(steps) if len(s.members) >= 2]
    assert [int(a["data-step"]) for a in spans.by_class["attnvar-set"]] == parallel_steps
    members = spans.by_class["attnvar-member"]
    want_p = [m.probability for t in parallel_steps for m in steps[t].members]
    np.testing.assert_allclose([float(a["data-probability"]) for a in members], want_p)
    received = plots.received_attention(generated, layer=2)["received"]
    fed = [int(a["data-slot"]) for a in members if "data-slot" in a]
    assert fed == generated.slots.index[generated.slots["is_parallel"]].tolist()
    # Every slot of the shown text appears once, with the value received_attention gives.
    shown = {int(a["data-slot"]): float(a["data-received"]) for a in spans.by_class["attnvar-slot"]}
    assert sorted(shown) == list(range(generated.num_slots))
    np.testing.assert_allclose([shown[i] for i in sorted(shown)], received, equal_nan=True)
    assert len(spans.by_class["attnvar-parallel"]) == int(generated.slots["is_parallel"].sum())


def test_set_view_html_shows_an_eos_member_without_a_slot(model):
    tree = attnvar.Tree.build(model, PROMPT, [[" mat", model.eos_ids[0]], [" and"]])
    run = model.replay(tree, "shared_isolated", capture=attnvar.Capture(layers=[2]))
    spans = _Spans()
    spans.feed(plots.set_view(run))
    assert len(spans.by_class["attnvar-member"]) == 2
    assert len(spans.by_class["attnvar-unfed"]) == 1
    assert "no slot" in plots.set_view(run)


def test_set_view_figure_draws_one_bar_per_member_slot(generated):
    fig = plots.set_view(generated, output="figure")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    slots = generated.slots[~generated.slots["is_prompt"]]
    assert len(ax.patches) == len(slots)
    want = np.nan_to_num(plots.received_attention(generated)["received"].to_numpy()[~generated
                         .slots["is_prompt"].to_numpy()], nan=0.0)
    np.testing.assert_allclose([p.get_height() for p in ax.patches], want)
    assert _parallel_color_flags(ax.get_xticklabels()) == slots["is_parallel"].tolist()
    _render(fig)


# ---- heatmaps ----------------------------------------------------------------------------------
def test_heatmap_masks_invisible_pairs_outside_the_colour_map(replay):
    fig = plots.attention_heatmap(replay, 5, 4)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # heatmap + colour bar
    ax = fig.axes[0]
    (image,) = ax.get_images()
    data = image.get_array()
    assert np.ma.isMaskedArray(data)
    np.testing.assert_array_equal(np.ma.getmaskarray(data), ~replay.visibility.numpy())
    visible = replay.visibility.numpy()
    np.testing.assert_allclose(data.data[visible], replay.attention[1, 4].numpy()[visible],
                               rtol=1e-6)
    # The masked colour is none the colour map gives, and the rendered cells show it: the
    # sibling pair (' floor' → ' mat') is grey while a visible near-zero pair is not.
    bad = np.array(to_rgba(plots.MASKED_COLOR)[:3])
    palette = image.cmap(np.linspace(0, 1, 256))[:, :3]
    assert np.abs(palette - bad).sum(axis=1).min() > 0.1
    rgba = _render(fig)
    assert not visible[6, 5]
    np.testing.assert_allclose(_cell_pixel(fig, ax, rgba, 6, 5), bad, atol=0.02)
    q, k = np.unravel_index(np.where(visible, data.data, np.inf).argmin(), data.shape)
    assert np.abs(_cell_pixel(fig, ax, rgba, q, k) - bad).sum() > 0.1


def test_heatmap_marks_parallel_slots_and_step_boundaries(replay):
    fig = plots.attention_heatmap(replay, 2, 0)
    ax = fig.axes[0]
    pieces = [t.replace("\n", "↵") for t in replay.slots["piece"]]
    assert [t.get_text() for t in ax.get_xticklabels()] == pieces
    assert [t.get_text() for t in ax.get_yticklabels()] == pieces
    flags = replay.slots["is_parallel"].tolist()
    assert flags == [False] * 5 + [True, True, False, False]
    assert _parallel_color_flags(ax.get_xticklabels()) == flags
    assert _parallel_color_flags(ax.get_yticklabels()) == flags
    # prompt | step 0 | step 1 | step 2: three boundaries, one line per axis each.
    lines = [ln for ln in ax.get_lines() if ln.get_gid() == "step_boundary"]
    assert len(lines) == 6
    assert sorted({ln.get_ydata()[0] for ln in lines if ln.get_ydata()[0] == ln.get_ydata()[1]}) \
        == [4.5, 6.5, 7.5]


def test_heatmap_of_scores_mean_over_heads_and_a_slot_window(replay):
    fig = plots.attention_heatmap(replay, 5, field="scores", slots=range(4, 9))
    (image,) = fig.axes[0].get_images()
    data = image.get_array()
    assert data.shape == (5, 5)
    want = replay.scores[1].double().mean(dim=0).numpy()[4:9, 4:9]
    hidden = ~np.isfinite(want)
    np.testing.assert_array_equal(np.ma.getmaskarray(data), hidden)
    np.testing.assert_allclose(data.data[~hidden], want[~hidden], rtol=1e-6)
    assert image.norm.vmin == pytest.approx(want[~hidden].min())


def test_heatmap_of_a_long_run_labels_only_its_parallel_slots(model):
    steps = [[" and"]] * 60 + [[" mat", " floor"]] + [[" the"]] * 60
    run = model.replay(attnvar.Tree.build(model, PROMPT, steps), "shared_isolated",
                       capture=attnvar.Capture(layers=[2], heads=[0]))
    assert run.num_slots > plots.MAX_TICK_LABELS
    ax = plots.attention_heatmap(run, 2, 0).axes[0]
    assert list(ax.get_xticks()) == list(ax.get_yticks()) == [65, 66]
    assert [t.get_text() for t in ax.get_xticklabels()] == [" mat", " floor"]
    assert _parallel_color_flags(ax.get_yticklabels()) == [True, True]


def test_heatmap_of_a_compat_run_masks_what_the_engine_masked(model):
    run = model.tempo2025(PROMPT, threshold=0.05, max_steps=6, emulate_isolation_bug=True,
                          capture=attnvar.Capture(layers=[2], scores=True))
    n = run.num_slots
    hidden = ~torch.isfinite(run.scores[0, 0]).numpy()  # the engine's mask, from the capture
    assert hidden.sum() > n * (n - 1) // 2, "the emulated bug hid nothing: widen the sets"
    (image,) = plots.attention_heatmap(run, 2, 0).axes[0].get_images()
    np.testing.assert_array_equal(np.ma.getmaskarray(image.get_array()), hidden)


def test_encodings_side_by_side_share_one_colour_scale(encodings):
    fig = plots.encodings_side_by_side(encodings, 2, 3)
    assert len(fig.axes) == len(encodings) + 1  # one colour bar for all
    heatmaps = fig.axes[: len(encodings)]
    assert [ax.get_title() for ax in heatmaps] == list(encodings)
    images = [ax.get_images()[0] for ax in heatmaps]
    assert len({im.get_clim() for im in images}) == 1
    top = max(float(r.attention[0, 1][r.visibility].max()) for r in encodings.values())
    assert images[0].get_clim() == pytest.approx((0.0, top))
    sizes = [im.get_array().shape for im in images]
    assert sizes == [(9, 9)] * 4 + [(8, 8)]  # top_only keeps rank-0 members only
    # Siblings: masked under shared_isolated and fractional, visible under shared_visible.
    masks = {enc: np.ma.getmaskarray(im.get_array()) for enc, im in zip(encodings, images,
                                                                         strict=True)}
    assert masks["shared_isolated"][6, 5] and masks["fractional"][6, 5]
    assert not masks["shared_visible"][6, 5] and not masks["serial"][6, 5]
    _render(fig)


def test_encodings_side_by_side_names_the_run_missing_a_layer(encodings, replay):
    with pytest.raises(ValueError, match="run 'serial'"):
        plots.encodings_side_by_side({"a": replay, "serial": encodings["serial"]}, 5, 0)


# ---- forest plot -------------------------------------------------------------------------------
@pytest.fixture
def effects():
    import pandas as pd

    return pd.DataFrame({
        "prompt": ["p0", "p1", "p2", "pooled"],
        "estimate": [0.1, -0.2, 0.3, 0.05],
        "lower": [0.0, -0.4, 0.1, -0.01],
        "upper": [0.2, 0.0, 0.5, 0.11],
        "weight": [1.0, 4.0, 2.0, 7.0],
    })


def test_forest_plot_rows_intervals_and_pooled_diamond(effects):
    fig = plots.forest_plot(effects, "estimate", "lower", "upper", "prompt", pooled="pooled",
                            weight="weight")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["p0", "p1", "p2", "pooled"]
    (intervals,) = [c for c in ax.collections if c.get_gid() == "interval"]
    segments = intervals.get_segments()
    assert len(segments) == 3
    np.testing.assert_allclose([s[:, 0] for s in segments], [[0.0, 0.2], [-0.4, 0.0], [0.1, 0.5]])
    (points,) = [c for c in ax.collections if c.get_gid() == "estimate"]
    np.testing.assert_allclose(points.get_offsets()[:, 0], [0.1, -0.2, 0.3])
    sizes = points.get_sizes()
    assert sizes[1] > sizes[2] > sizes[0]  # area grows with the weight
    (diamond,) = [p for p in ax.patches if p.get_gid() == "pooled"]
    xs = diamond.get_xy()[:, 0]
    assert xs.min() == pytest.approx(-0.01) and xs.max() == pytest.approx(0.11)
    (reference,) = [ln for ln in ax.get_lines() if ln.get_gid() == "reference"]
    assert reference.get_xdata()[0] == 0.0
    _render(fig)


def test_forest_plot_takes_a_pooled_mapping_and_names_missing_columns(effects):
    rows = effects.iloc[:3]
    pooled = {"estimate": 0.05, "lower": -0.01, "upper": 0.11, "prompt": "random effects"}
    fig = plots.forest_plot(rows, "estimate", "lower", "upper", "prompt", pooled=pooled,
                            reference=None)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "random effects"
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == "reference"]
    with pytest.raises(ValueError, match="'hi'"):
        plots.forest_plot(rows, "estimate", "lower", "hi", "prompt")


def test_plots_import_matplotlib_lazily_and_never_pyplot():
    code = (
        "import sys, pandas as pd\n"
        "from attnvar import plots\n"
        "assert 'matplotlib' not in sys.modules\n"
        "f = pd.DataFrame({'e': [1.0], 'l': [0.5], 'u': [2.0], 'n': ['a']})\n"
        "fig = plots.forest_plot(f, 'e', 'l', 'u', 'n')\n"
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_forest_plot_clips_an_extreme_interval_visibly():
    rows = pd.DataFrame({"name": list("abcdef"), "est": [1.0, -2.0, 3.0, 0.5, 0.0, 2.0],
                         "lo": [-4.0, -7000.0, -1.0, -3.0, -3.0, -2.0],
                         "hi": [6.0, 4.0, 8.0, 900.0, 3.0, 6.0]})
    fig = plots.forest_plot(rows, "est", "lo", "hi", "name", clip=True)
    ax = fig.axes[0]
    left, right = ax.get_xlim()
    assert -40 < left < -2 and 3 < right < 40  # the outliers do not set the range
    clipped = [c for c in ax.collections if c.get_gid() == "clipped"]
    assert len(clipped) == 2
    texts = {t.get_text() for t in ax.texts}
    assert {"-7e+03", "900"} <= texts
    (lines,) = [c for c in ax.collections if c.get_gid() == "interval"]
    for seg in lines.get_segments():
        assert left <= seg[:, 0].min() and seg[:, 0].max() <= right
    # Without clip the range covers every interval, as before.
    wide = plots.forest_plot(rows, "est", "lo", "hi", "name").axes[0].get_xlim()
    assert wide[0] <= -7000 and wide[1] >= 900


def test_spec_curve_labels_every_specification():
    spec = pd.DataFrame({"mode": ["isolated"] * 3, "metric": ["M1", "M1", "M2"],
                         "variant": ["distance_matched", "plain", "pooled"],
                         "sinks_excluded": [True, False, True],
                         "design": ["replay", "replay", "observational"],
                         "exclusions": [True, True, False], "mean_pct": [1.0, -2.0, 0.5],
                         "ci_pct_low": [-1.0, -5.0, -2.0], "ci_pct_high": [3.0, 1.0, 3.0],
                         "primary": [True, False, False]})
    ax = plots.spec_curve(spec).axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["M1 plain +sinks", "M2 pooled obs all", "M1 distance_matched"]
