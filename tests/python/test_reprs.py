"""Text and notebook views of Model and Tree: small HTML tables, every value escaped."""

from __future__ import annotations

import html
import re

import torch
from tiny_models import attnvar_model, tiny_hf_model

import attnvar
from attnvar import _core
from attnvar.engine import Model
from attnvar.engine.tree import SHOWN_STEPS

ODD = "models/<tiny & odd>"


def tiny_model(path: str = ODD) -> Model:
    core = attnvar_model(tiny_hf_model("qwen2", seed=5))
    return Model(core, None, {"sha256": "ab" * 32, "quantization": "F32"}, [2], path,
                 torch.float32)


def cells(page: str) -> dict[str, str]:
    """The table's rows as {header: value}, unescaped."""
    return {html.unescape(k): html.unescape(v) for k, v in
            re.findall(r"<tr><th[^>]*>(.*?)</th><td[^>]*>(.*?)</td></tr>", page)}


def test_model_repr_names_family_shape_dtype_and_device():
    text = repr(tiny_model())
    assert text.startswith("Model('<tiny & odd>', family=qwen2, layers=3, heads=4")
    assert "dtype=float32" in text and "device=cpu" in text and "F32" in text


def test_model_html_is_an_escaped_table():
    page = tiny_model()._repr_html_()
    assert page.startswith("<table>") and page.endswith("</table>")
    assert "<tiny" not in page and "&lt;tiny &amp; odd&gt;" in page
    rows = cells(page)
    assert rows["family"] == "qwen2" and rows["layers"] == "3"
    assert rows["heads"] == "4 (2 kv)" and rows["context"] == "256"
    assert rows["dtype"] == "float32" and rows["device"] == "cpu"
    assert rows["source"] == ODD and rows["sha256"].startswith("abababab")


def test_a_hub_model_shows_its_id_and_revision():
    model = tiny_model("/cache/models--org--m/snapshots/abc")
    model.hub = {"hub_id": "org/m<x>", "revision": "0123456789abcdef" * 2}
    assert repr(model).startswith("Model('org/m<x>'")
    page = model._repr_html_()
    assert cells(page)["source"] == "org/m<x> @ 0123456789ab (HF cache)"
    assert "org/m<x>" not in page


def test_tree_repr_shows_prompt_steps_and_widths():
    tree = _core.Tree.build([1, 2, 3], [[4, 5], [6], [7, 8, 9], [2]], [2])
    assert repr(tree) == "Tree(prompt=3 ids, steps=4, parallel=2, widths=[2,1,3,1])"
    page = tree._repr_html_()
    assert page.startswith("<table>") and "3 prompt ids · 4 steps · 2 parallel" in page
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td><td[^>]*>(.*?)</td></tr>", page)
    assert rows == [("0", "2", "4 5"), ("1", "1", "6"), ("2", "3", "7 8 9"),
                    ("3", "1", "2 (eos)")]


def test_a_generated_trees_view_has_probabilities_and_stays_small():
    model = tiny_model()
    run = model.generate([5, 6, 7], threshold=0.05, max_steps=SHOWN_STEPS + 6, eos_ids=[])
    tree = run.tree
    widths = [len(s.members) for s in tree.steps]
    assert f"steps={len(widths)}" in repr(tree) and repr(tree).endswith(",…])")
    page = tree._repr_html_()
    first = tree.steps[0].members[0]
    assert f"{first.token_id}:{first.probability:.3f}" in page
    assert page.count("<tr><td>") == SHOWN_STEPS and "… 6 more sets" in page


def test_trees_from_the_builder_and_from_disk_have_the_views(tmp_path):
    model = tiny_model()
    run = model.generate([5, 6, 7], threshold=0.05, max_steps=3, eos_ids=[])
    run.save(tmp_path / "r")
    back = attnvar.load_run(tmp_path / "r").tree
    assert repr(back) == repr(run.tree) and back._repr_html_() == run.tree._repr_html_()
