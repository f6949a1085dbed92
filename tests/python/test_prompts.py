"""Prompt suites: the packaged core / core-small / tempo13 suites, the H2 pair rule, user
suite files in every format and every validation error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import FrozenInstanceError
from importlib import resources
from pathlib import Path

import pytest

from attnvar import prompts as P
from attnvar.prompts import Prompt

REQUIRED_CATEGORIES = {"narrative", "factual", "technical", "conversational", "simple",
                       "complex", "questions", "lists", "code", "instructions"}

# The TEMPO research notes' 13-prompt suite, names and texts verbatim (docs/prompts.md).
TEMPO13 = {
    "narrative_1": "Once upon a time in a distant galaxy",
    "narrative_2": "The old wizard slowly climbed the mountain",
    "narrative_3": "Deep in the forest, a mysterious creature",
    "factual_1": "The capital of France is",
    "factual_2": "Photosynthesis is the process by which",
    "factual_3": "The largest planet in our solar system",
    "technical_1": "Machine learning algorithms can be classified into",
    "technical_2": "The algorithm complexity of quicksort is",
    "conversational_1": "How are you doing today? I'm",
    "conversational_2": "What do you think about",
    "simple_1": "The cat sat on the",
    "simple_2": "I went to the",
    "complex_1": "Despite the significant challenges faced by researchers in the field of "
                 "quantum computing",
}


@pytest.fixture(scope="module")
def core() -> list[Prompt]:
    return P.suite("core")


# --- core -------------------------------------------------------------------------------


def test_core_counts_categories_and_pairs(core):
    assert len(core) >= 96
    cats = Counter(p.category for p in core)
    assert REQUIRED_CATEGORIES <= set(cats)
    assert len(cats) >= 10
    assert min(cats.values()) >= 8, cats  # every category is large enough to summarise
    assert len(P.pairs(core)) >= 24
    assert P.suite() == core  # "core" is the default


def test_core_records_are_well_formed(core):
    ids = [p.id for p in core]
    assert len(set(ids)) == len(ids)
    texts = [p.text for p in core]
    assert len(set(texts)) == len(texts)
    for p in core:
        assert isinstance(p, Prompt)
        assert p.structure in P.STRUCTURES
        assert 5 <= len(p.text.split()) <= 25, p.id
        assert p.text == p.text.lstrip(), p.id
        if p.category != "code":  # only code may end in indentation
            assert not re.search(r"[ \t]$", p.text), p.id
        if p.pair is None:
            assert re.fullmatch(rf"{p.category}_\d\d", p.id), p.id
        else:
            assert p.id == f"{p.pair}_{p.structure}", p.id
    # both structures occur outside the pairs too, and some prompts end with a colon or a
    # newline, and some code prompts are indented
    single = [p for p in core if p.pair is None]
    assert {p.structure for p in single} == set(P.STRUCTURES)
    assert any(p.text.rstrip().endswith(":") for p in core)
    assert any(p.text.endswith("\n") for p in core)
    assert any("\n    " in p.text for p in core if p.category == "code")


def test_core_structure_labels_follow_the_rule(core):
    # Prose is labelled by infer_structure's rule; code by hand: a complete code prompt
    # ends with a closed line (a newline), an incomplete one does not end a statement.
    for p in core:
        if p.category == "code":
            if p.structure == "complete":
                assert p.text.endswith("\n") and not p.text.endswith(":\n"), p.id
        else:
            assert P.infer_structure(p.text) == p.structure, p.id


def test_core_pairs_share_content(core):
    found = P.pairs(core)
    members = [p for p in core if p.pair is not None]
    assert len(members) == 2 * len(found)  # no half pairs
    assert len({p.pair for p in members}) == len(found)
    for inc, comp in found:
        assert (inc.structure, comp.structure) == ("incomplete", "complete")
        assert inc.pair == comp.pair and inc.category == comp.category
        # the rule: the complete text is the incomplete text plus a short ending
        assert comp.text.startswith(inc.text), inc.pair
        added = comp.text[len(inc.text):]
        assert 1 <= len(added.split()) <= 8, inc.pair
        if inc.category == "code":
            assert comp.text.endswith("\n")
        else:
            assert added.startswith(" ") and P.infer_structure(comp.text) == "complete"
    assert len({inc.category for inc, _ in found}) >= 10  # pairs span the categories


def test_core_is_not_tempo13(core):
    assert not {p.text for p in core} & set(TEMPO13.values())


# --- tempo13, core-small, names -------------------------------------------------------


def test_tempo13_is_the_reference_list():
    t13 = P.suite("tempo13")
    assert {p.id: p.text for p in t13} == TEMPO13
    assert [p.id for p in t13] == list(TEMPO13)  # the reference order
    for p in t13:
        assert p.category == p.id.rsplit("_", 1)[0]
        assert p.pair is None and p.structure == "incomplete"


def test_core_small_is_a_fixed_balanced_subset(core):
    small = P.suite("core-small")
    assert len(small) == 8
    assert [p.id for p in small] == [p.id for p in P.suite("core-small")]
    assert all(p in core for p in small)
    order = [p.id for p in core]
    assert [p.id for p in small] == sorted((p.id for p in small), key=order.index)
    cats = Counter(p.category for p in small)
    assert len(cats) >= 6 and max(cats.values()) <= 2
    assert Counter(p.structure for p in small) == {"incomplete": 4, "complete": 4}
    assert len(P.pairs(small)) >= 2
    # a fresh interpreter picks the same prompts
    code = ("from attnvar import prompts; "
            "print(','.join(p.id for p in prompts.suite('core-small')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ",".join(p.id for p in small)


def test_suite_names_and_unknown_name():
    assert P.suite_names() == ["core", "core-small", "tempo13"]
    for name in P.suite_names():
        assert P.suite(name)
    with pytest.raises(ValueError) as err:
        P.suite("cor")
    msg = str(err.value)
    assert "'cor'" in msg and all(n in msg for n in P.suite_names())


def test_suite_returns_a_new_list():
    first = P.suite("core")
    first.clear()
    assert len(P.suite("core")) >= 96


# --- the packaged data ----------------------------------------------------------------


@pytest.mark.parametrize("name,filename",
                         [("core", "prompts_core.json"), ("tempo13", "prompts_tempo13.json")])
def test_data_files_ship_inside_the_package(name, filename):
    resource = resources.files("attnvar.study").joinpath("data").joinpath(filename)
    assert resource.is_file(), f"{filename} is not inside the attnvar package"
    data = json.loads(resource.read_text(encoding="utf-8"))
    assert [r["id"] for r in data["prompts"]] == [p.id for p in P.suite(name)]
    assert [r["text"] for r in data["prompts"]] == [p.text for p in P.suite(name)]


def test_module_is_stdlib_only_and_names_a_missing_data_file(tmp_path):
    # prompts.py on its own, outside the package: importing it pulls in neither pandas nor
    # torch; with its data/ folder it works, without it the error names the file.
    src = Path(P.__file__)
    shutil.copy(src, tmp_path / "prompts.py")
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("prompts", {str(tmp_path / "prompts.py")!r})
        mod = sys.modules["prompts"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        heavy = [m for m in ("pandas", "torch", "numpy", "attnvar") if m in sys.modules]
        print("HEAVY", heavy)
        try:
            print("CORE", len(mod.suite("core")))
        except FileNotFoundError as e:
            print("MISSING", e)
        """)

    def run() -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout

    out = run()
    assert "HEAVY []" in out
    assert "MISSING" in out and "prompts_core.json" in out
    shutil.copytree(src.parent / "data", tmp_path / "data")
    assert f"CORE {len(P.suite('core'))}" in run()


# --- the Prompt record, infer_structure, pairs, to_frame --------------------------------


def test_prompt_is_frozen_and_validated():
    p = Prompt(id="a", text="The dog ran", category="simple", structure="incomplete",
               pair=None)
    with pytest.raises(FrozenInstanceError):
        p.text = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="structure"):
        Prompt(id="a", text="x", category="c", structure="partial", pair=None)
    with pytest.raises(ValueError, match="is empty"):
        Prompt(id="a", text="  ", category="c", structure="complete", pair=None)
    with pytest.raises(ValueError, match="pair"):
        Prompt(id="a", text="x", category="c", structure="complete", pair="")


@pytest.mark.parametrize("text,expected", [
    ("The capital of France is", "incomplete"),
    ("The capital of France is Paris.", "complete"),
    ("Is it raining?", "complete"),
    ("Stop!", "complete"),
    ('He said "come in."', "complete"),
    ("Here are three tips:", "incomplete"),
    ("Here are three tips:\n1.", "incomplete"),
    ("Options:\na)", "incomplete"),
    ("The cat sat on the mat.\n", "complete"),
    ("And then...", "incomplete"),
    ("Eggs, milk,", "incomplete"),
])
def test_infer_structure(text, expected):
    assert P.infer_structure(text) == expected


def _p(pid, structure, pair, text="Some text here"):
    return Prompt(id=pid, text=text, category="c", structure=structure, pair=pair)


def test_pairs_order_halves_and_errors():
    a_c, a_i = _p("a_c", "complete", "a"), _p("a_i", "incomplete", "a")
    b_i, b_c = _p("b_i", "incomplete", "b"), _p("b_c", "complete", "b")
    solo = _p("s", "complete", None)
    assert P.pairs([b_i, a_c, solo, a_i, b_c]) == [(b_i, b_c), (a_i, a_c)]
    assert P.pairs([a_c, b_i, b_c]) == [(b_i, b_c)]  # half pair skipped
    with pytest.raises(ValueError, match="'a'.*a_i.*x_i"):
        P.pairs([a_i, _p("x_i", "incomplete", "a"), a_c])


def test_to_frame():
    small = P.suite("core-small")
    frame = P.to_frame(small)
    assert list(frame.columns) == ["id", "text", "category", "structure", "pair"]
    assert list(frame["id"]) == [p.id for p in small]
    assert list(frame["text"]) == [p.text for p in small]
    assert frame["pair"].isna().tolist() == [p.pair is None for p in small]
    assert len(P.to_frame([])) == 0


# --- user suites: formats -------------------------------------------------------------

RECORDS = [
    {"id": "x_inc", "text": "The river flows into the", "category": "factual",
     "structure": "incomplete", "pair": "x"},
    {"id": "x_comp", "text": "The river flows into the sea.", "category": "factual",
     "structure": "complete", "pair": "x"},
    {"id": "code_1", "text": "def f(x):\n    return", "category": "code",
     "structure": "incomplete", "pair": None},
]
EXPECTED = [Prompt(**r) for r in RECORDS]


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_load_json_list_and_object(tmp_path):
    assert P.load_suite(_write(tmp_path, "a.json", json.dumps(RECORDS))) == EXPECTED
    doc = {"name": "mine", "prompts": RECORDS}
    assert P.load_suite(str(_write(tmp_path, "b.json", json.dumps(doc)))) == EXPECTED


def test_load_jsonl(tmp_path):
    content = "\n".join(json.dumps(r) for r in RECORDS[:2]) + "\n\n" + json.dumps(RECORDS[2])
    assert P.load_suite(_write(tmp_path, "a.jsonl", content)) == EXPECTED
    assert P.load_suite(_write(tmp_path, "a.ndjson", content)) == EXPECTED


def test_load_toml(tmp_path):
    content = textwrap.dedent('''
        [[prompts]]
        id = "x_inc"
        text = "The river flows into the"
        category = "factual"
        structure = "incomplete"
        pair = "x"

        [[prompts]]
        id = "x_comp"
        text = "The river flows into the sea."
        category = "factual"
        structure = "complete"
        pair = "x"

        [[prompts]]
        id = "code_1"
        text = """def f(x):
            return"""
        category = "code"
        structure = "incomplete"
        ''')
    assert P.load_suite(_write(tmp_path, "a.toml", content)) == EXPECTED


def test_load_text(tmp_path):
    path = _write(tmp_path, "mine.txt", "The cat sat on the\n\nWhy is the sky blue?\r\n"
                                        "  Indented: keep it\n")
    assert P.load_suite(path) == [
        Prompt("line_001", "The cat sat on the", "user", "incomplete", None),
        Prompt("line_003", "Why is the sky blue?", "user", "complete", None),
        Prompt("line_004", "  Indented: keep it", "user", "incomplete", None),
    ]


def test_defaults_strings_and_format_override(tmp_path):
    content = json.dumps(["The cat sat on the", {"text": "It rained.", "category": "w"}])
    got = P.load_suite(_write(tmp_path, "prompts.data", content), format="json")
    assert got == [Prompt("prompt_001", "The cat sat on the", "user", "incomplete", None),
                   Prompt("prompt_002", "It rained.", "w", "complete", None)]
    # an explicit structure wins over the inferred one
    one = [{"text": "It rained.", "structure": "incomplete"}]
    assert P.load_suite(_write(tmp_path, "o.json", json.dumps(one)))[0].structure == "incomplete"


def test_packaged_files_load_as_user_files(core):
    with resources.as_file(resources.files("attnvar.study").joinpath("data")) as data:
        assert P.load_suite(data / "prompts_core.json") == core


# --- user suites: errors --------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        P.load_suite(missing)


def _error(tmp_path, records, name="bad.json"):
    path = _write(tmp_path, name, json.dumps(records))
    with pytest.raises(ValueError) as err:
        P.load_suite(path)
    msg = str(err.value)
    assert str(path) in msg
    return msg


@pytest.mark.parametrize("record,where,field", [
    ({"id": "e", "text": ""}, "record 2 (id 'e')", "'text'"),
    ({"id": "e", "text": " \n\t"}, "record 2 (id 'e')", "'text'"),
    ({"id": "e"}, "record 2 (id 'e')", "'text'"),
    ({"id": "e", "text": 7}, "record 2 (id 'e')", "'text'"),
    ({"id": "ok", "text": "A b c."}, "record 2 (id 'ok')", "'id'"),  # duplicate
    ({"id": "", "text": "A b c."}, "record 2", "'id'"),
    ({"id": 3, "text": "A b c."}, "record 2", "'id'"),
    ({"id": "e", "text": "A b c.", "structure": "partial"}, "record 2 (id 'e')", "'structure'"),
    ({"id": "e", "text": "A b c.", "category": ""}, "record 2 (id 'e')", "'category'"),
    ({"id": "e", "text": "A b c.", "pair": 5}, "record 2 (id 'e')", "'pair'"),
    ({"id": "e", "text": "A b c.", "catgory": "x"}, "record 2 (id 'e')", "'catgory'"),
])
def test_record_errors_name_file_record_and_field(tmp_path, record, where, field):
    msg = _error(tmp_path, [{"id": "ok", "text": "Fine text."}, record])
    assert where in msg and f"field {field}" in msg


def test_duplicate_id_names_the_first_use(tmp_path):
    msg = _error(tmp_path, [{"id": "a", "text": "One."}, {"id": "b", "text": "Two."},
                            {"id": "a", "text": "Three."}])
    assert "record 3 (id 'a')" in msg and "record 1" in msg and "field 'id'" in msg


@pytest.mark.parametrize("records,culprit", [
    ([{"id": "i", "text": "The sea is", "structure": "incomplete", "pair": "p"}], "i"),
    ([{"id": "i", "text": "The sea is", "structure": "incomplete", "pair": "p"},
      {"id": "j", "text": "The sky is", "structure": "incomplete", "pair": "p"}], "j"),
    ([{"id": "i", "text": "The sea is", "structure": "incomplete", "pair": "p"},
      {"id": "c", "text": "The sea is blue.", "structure": "complete", "pair": "p"},
      {"id": "d", "text": "The sea is grey.", "structure": "complete", "pair": "p"}], "d"),
])
def test_pair_errors(tmp_path, records, culprit):
    msg = _error(tmp_path, records)
    assert f"(id '{culprit}')" in msg and "field 'pair'" in msg and "'p'" in msg


def test_pair_error_in_toml_and_jsonl(tmp_path):
    path = _write(tmp_path, "p.toml", '[[prompts]]\nid = "solo"\ntext = "The sea is"\n'
                                      'pair = "p"\n')
    with pytest.raises(ValueError, match=r"p\.toml: record 1 \(id 'solo'\): field 'pair'"):
        P.load_suite(path)
    path = _write(tmp_path, "p.jsonl", '\n{"id": "a", "text": "Hi."}\n{"id": "a", "text": "Yo."}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl: line 3 \(id 'a'\): field 'id'.*line 2"):
        P.load_suite(path)


@pytest.mark.parametrize("name,content,fragment", [
    ("bad.json", "[{\"text\": ", "invalid JSON"),
    ("bad.json", "{\"items\": []}", "'prompts'"),
    ("bad.json", "{\"prompts\": {\"text\": \"x\"}}", "'prompts' is a dict"),
    ("bad.json", "[]", "no prompts"),
    ("bad.json", "[3]", "record 1: a prompt record must be an object"),
    ("bad.jsonl", "{\"text\": \"ok.\"}\n{oops}\n", "line 2: invalid JSON"),
    ("bad.toml", "[[prompts]\ntext = 1", "invalid TOML"),
    ("bad.toml", "title = \"x\"\n", "'prompts'"),
    ("bad.txt", "\n  \n", "no prompts"),
    ("bad.yaml", "- text: x\n", "unknown prompt file suffix '.yaml'"),
])
def test_file_level_errors(tmp_path, name, content, fragment):
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError) as err:
        P.load_suite(path)
    assert str(path) in str(err.value) and fragment in str(err.value)
