"""`attnvar findings` at CI size: the pipeline runs end to end, the page quotes only the
tables it writes, and the prototype's way of reporting is reproduced exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from attnvar.report import claims
from attnvar.util.markdown import markdown_table


@pytest.fixture(scope="module")
def findings(bundled_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("findings")
    page = out / "page.md"
    path = claims.write_findings(out, model_path=str(bundled_path), small=True,
                                 progress=False, page=page)
    return out, path, page


def test_the_page_is_written_twice_identically_and_names_the_model(findings, bundled_path):
    out, path, page = findings
    text = path.read_text()
    assert page.read_text() == text
    assert bundled_path.name in text and "small (CI) size" in text
    assert claims.PUBLISHED_MODEL in text  # the published numbers are labelled


def test_every_table_on_the_page_is_a_table_the_command_wrote(findings):
    """Each table on the page is, cell for cell, the CSV the command wrote (read back)."""
    out, path, _ = findings
    text = path.read_text()
    for name, cols in claims.SHOWN.items():
        frame = pd.read_csv(out / "tables" / f"{name}.csv")
        assert len(frame), name
        assert markdown_table(frame[cols] if cols else frame) in text, name
    summary = pd.read_csv(out / "tables" / "compat_summary.csv")
    for s in summary.itertuples():
        if s.prompts >= 2:
            assert f"over {s.prompts} prompts" in text


def test_the_prototype_summary_is_computed_as_the_prototype_reported_it():
    rng = np.random.default_rng(3)
    nonpar, par = rng.uniform(0.01, 0.02, 6), rng.uniform(0.01, 0.02, 6)
    legacy = (nonpar - par) / nonpar * 100
    frame = pd.DataFrame({"mode": "isolated", "leak": False, "m0_legacy_pct": legacy,
                          "mean_parallel": par, "mean_nonparallel": nonpar,
                          "m0_corrected_pct": legacy + 1, "primary_pct": legacy - 1})
    frame.loc[5, "m0_legacy_pct"] = np.nan  # a prompt without a value is left out
    s = claims.prototype_summary(frame).iloc[0]
    v = legacy[:5]
    assert s["prompts"] == 5
    assert s["mean_pct"] == pytest.approx(v.mean(), abs=1e-12)
    assert s["sd_pct"] == pytest.approx(math.sqrt(((v - v.mean()) ** 2).mean()), abs=1e-12)
    assert s["median_pct"] == pytest.approx(np.median(v)) and s["min_pct"] == v.min()
    diff = nonpar[:5] - par[:5]
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(5))
    assert s["t"] == pytest.approx(t, rel=1e-10)
    assert s["p"] == pytest.approx(2 * sps.t.sf(abs(t), 4), rel=1e-10)


def test_the_published_per_prompt_values_give_the_published_summary():
    """Our record of the prototype's figures is consistent with itself: its 12 per-prompt
    values have mean −12.1, population SD 24.1, median −11.3, range −60.9 … +30.1."""
    v = np.array(list(claims.PUBLISHED_PER_PROMPT.values()))
    pub = claims.PUBLISHED.iloc[0]
    assert len(v) == pub["prompts"] == 12
    assert round(v.mean(), 1) == pub["mean_pct"]
    assert round(v.std(ddof=0), 1) == pub["sd_pct"]
    assert np.median(v) == pub["median_pct"]
    assert (v.min(), v.max()) == (pub["min_pct"], pub["max_pct"])


def test_the_cli_resumes_the_same_findings(findings, bundled_path, capsys):
    from attnvar.cli import main

    out, path, _ = findings
    before = pd.read_csv(out / "tables" / "compat_per_prompt.csv")
    assert main(["findings", "--small", "--out", str(out), "--model", str(bundled_path),
                 "--no-progress"]) == 0
    assert "findings:" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out / "tables" / "compat_per_prompt.csv"), before)
