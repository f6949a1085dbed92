"""Prompt suites: the packaged ``core``, ``core-small`` and ``tempo13`` suites, user suites
from JSON, JSONL, TOML or plain text, and the matched incomplete/complete pairs of H2.

Only the standard library is imported here; pandas is imported by :func:`to_frame` when
it is called. See ``docs/prompts.md`` for the suites, the categories, the pair rule and the
file formats.

Examples
--------
>>> from attnvar import prompts
>>> core = prompts.suite("core")
>>> inc, comp = prompts.pairs(core)[0]
>>> comp.text.startswith(inc.text)
True
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FIELDS",
    "STRUCTURES",
    "Prompt",
    "infer_structure",
    "load_suite",
    "pairs",
    "suite",
    "suite_names",
    "to_frame",
]

#: The two values of :attr:`Prompt.structure`.
STRUCTURES = ("incomplete", "complete")
#: The fields of a prompt record, in order (also the columns of :func:`to_frame`).
FIELDS = ("id", "text", "category", "structure", "pair")

_PACKAGED = {"core": "prompts_core.json", "tempo13": "prompts_tempo13.json"}
_SUITE_NAMES = ("core", "core-small", "tempo13")
# core-small: two matched pairs and four single prompts, six categories, at most two
# prompts per category, four incomplete and four complete; in core's order.
_CORE_SMALL_IDS = (
    "technical_01",
    "conversational_04",
    "questions_01",
    "code_01",
    "pair_02_incomplete",
    "pair_02_complete",
    "pair_05_incomplete",
    "pair_05_complete",
)
_FORMATS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".toml": "toml",
    ".txt": "text",
    ".text": "text",
}
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_LIST_MARKER = re.compile(r"^(?:\d+|[A-Za-z])[.)]$")


@dataclass(frozen=True)
class Prompt:
    """One prompt of a suite.

    Attributes
    ----------
    id : str
        Stable identifier, unique within its suite (``"factual_03"``,
        ``"pair_07_complete"``, ``"line_004"``).
    text : str
        The text given to the model, verbatim (newlines and indentation included).
    category : str
        Content category (``"narrative"``, ``"code"``, …; ``"user"`` for plain-text files).
    structure : str
        ``"incomplete"`` (the text stops where a continuation is demanded: mid-phrase,
        after a colon, an open list or code line) or ``"complete"`` (it ends a sentence,
        a question or a closed code statement).
    pair : str or None
        The matched pair this prompt belongs to (one incomplete and one complete prompt
        share it), or None.
    """

    id: str
    text: str
    category: str
    structure: str
    pair: str | None = None

    def __post_init__(self) -> None:
        for name in ("id", "text", "category"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"prompt {self.id!r}: {name} must be a string, "
                                 f"got {type(value).__name__}")
        if not self.id:
            raise ValueError("prompt id is empty")
        if not self.text.strip():
            raise ValueError(f"prompt {self.id!r}: text is empty")
        if not self.category:
            raise ValueError(f"prompt {self.id!r}: category is empty")
        if self.structure not in STRUCTURES:
            raise ValueError(f"prompt {self.id!r}: structure must be one of "
                             f"{', '.join(STRUCTURES)}, got {self.structure!r}")
        if self.pair is not None and (not isinstance(self.pair, str) or not self.pair):
            raise ValueError(f"prompt {self.id!r}: pair must be a non-empty string or None, "
                             f"got {self.pair!r}")



def _missing(message: str) -> FileNotFoundError:
    """attnvar.MissingError (a FileNotFoundError) when this module is part of the
    package, whose extension is then loaded; a plain FileNotFoundError where the module
    is loaded on its own (it needs only the standard library, so imports nothing else)."""
    core = sys.modules.get("attnvar._core")
    return getattr(core, "MissingError", FileNotFoundError)(message)

def infer_structure(text: str) -> str:
    """The structure of a prose prompt by the documented rule.

    A text is ``"complete"`` when, trailing whitespace removed, it ends with ``.``, ``!``
    or ``?`` (optionally followed by closing quotes or brackets), the final
    whitespace-separated token is not a list marker (``1.``, ``b)``) and the text does not
    end with an ellipsis; otherwise it is ``"incomplete"`` (mid-phrase, a colon, a comma, a
    dash, a list marker, …). Used for records that give no ``structure``; code needs
    explicit labels, since a closed code statement has no sentence punctuation.

    Parameters
    ----------
    text : str
        The prompt text.

    Returns
    -------
    str
        ``"complete"`` or ``"incomplete"``.

    Examples
    --------
    >>> infer_structure("The capital of France is")
    'incomplete'
    >>> infer_structure("Why is the sky blue?")
    'complete'
    >>> infer_structure("Steps:\\n1.")
    'incomplete'
    """
    stripped = text.rstrip()
    if not stripped or stripped.endswith(("...", "\u2026")):
        return "incomplete"
    if _LIST_MARKER.match(stripped.split()[-1]):
        return "incomplete"
    return "complete" if _SENTENCE_END.search(stripped) else "incomplete"


def suite_names() -> list[str]:
    """The names :func:`suite` accepts.

    Returns
    -------
    list of str
        ``["core", "core-small", "tempo13"]``.
    """
    return list(_SUITE_NAMES)


def suite(name: str = "core") -> list[Prompt]:
    """A packaged prompt suite.

    Parameters
    ----------
    name : str, default "core"
        ``"core"`` (132 prompts, 12 categories, 30 matched pairs), ``"core-small"`` (a
        fixed, category-balanced subset of 8 core prompts holding 2 matched pairs: the
        fast default) or ``"tempo13"`` (the TEMPO notes' 13-prompt suite, for comparison).

    Returns
    -------
    list of Prompt
        A new list, in the suite's fixed order.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known names.
    FileNotFoundError
        When the packaged data file is missing (an incomplete installation).
    """
    if name == "core-small":
        core = {p.id: p for p in _packaged("core")}
        return [core[i] for i in _CORE_SMALL_IDS]
    if isinstance(name, str) and name in _PACKAGED:
        return list(_packaged(name))
    raise ValueError(f"unknown prompt suite {name!r}; known suites: {', '.join(_SUITE_NAMES)}")


def load_suite(path: str | os.PathLike[str], format: str | None = None) -> list[Prompt]:
    """Read and validate a user's prompt suite.

    Formats, chosen by suffix unless ``format`` is given:

    - ``.json``: a list of records, or an object whose ``"prompts"`` key holds that list
      (other keys are ignored);
    - ``.jsonl`` / ``.ndjson``: one record per non-blank line;
    - ``.toml``: ``[[prompts]]`` tables (or ``prompts = [...]``);
    - ``.txt`` / ``.text``: one prompt per non-blank line, verbatim, with id
      ``line_NNN`` (its line number), category ``"user"`` and the inferred structure.

    A record is an object with ``text`` (required) and optionally ``id`` (default
    ``prompt_NNN``, its 1-based position), ``category`` (default ``"user"``),
    ``structure`` (default :func:`infer_structure` of the text) and ``pair`` (default
    none); a bare string stands for ``{"text": ...}``. Other keys are errors.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    format : {"json", "jsonl", "toml", "text"}, optional
        Overrides the suffix.

    Returns
    -------
    list of Prompt
        In file order.

    Raises
    ------
    FileNotFoundError
        The file does not exist (the message names it).
    ValueError
        Unparsable file, unknown format, no prompts, or an invalid record: empty text,
        a duplicate id, a structure other than incomplete/complete, a pair without
        exactly one incomplete and one complete member, a wrong type or an unknown key.
        The message names the file, the record (position and id) and the field.
    """
    path = Path(path)
    if not path.exists():
        raise _missing(f"prompt suite file not found: {path}")
    fmt = format if format is not None else _FORMATS.get(path.suffix.lower())
    if fmt not in ("json", "jsonl", "toml", "text"):
        what = f"format {format!r}" if format is not None else f"suffix {path.suffix!r}"
        raise ValueError(f"{path}: unknown prompt file {what}; use one of "
                         f"{', '.join(sorted(_FORMATS))} or format='json'|'jsonl'|'toml'|'text'")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text: {e}") from e
    return _parse(content, fmt, str(path))


def pairs(prompts: list[Prompt]) -> list[tuple[Prompt, Prompt]]:
    """The matched pairs among ``prompts``, as (incomplete, complete) tuples.

    Pairs appear in the order of their first member. A pair with only one member in
    ``prompts`` (for example after filtering by category) is skipped.

    Parameters
    ----------
    prompts : list of Prompt

    Returns
    -------
    list of tuple of (Prompt, Prompt)

    Raises
    ------
    ValueError
        When a pair has two incomplete or two complete members.
    """
    groups: dict[str, list[Prompt]] = {}
    for p in prompts:
        if p.pair is not None:
            groups.setdefault(p.pair, []).append(p)
    out = []
    for pair_id, members in groups.items():
        inc = [m for m in members if m.structure == "incomplete"]
        comp = [m for m in members if m.structure == "complete"]
        if len(inc) > 1 or len(comp) > 1:
            raise ValueError(f"pair {pair_id!r} must have one incomplete and one complete "
                             f"prompt; it has {_describe(members)}")
        if inc and comp:
            out.append((inc[0], comp[0]))
    return out


def to_frame(prompts: list[Prompt]) -> pd.DataFrame:
    """The prompts as a pandas DataFrame, one row each.

    Parameters
    ----------
    prompts : list of Prompt

    Returns
    -------
    pandas.DataFrame
        Columns ``id, text, category, structure, pair`` (missing pairs are NA), in the
        order given.
    """
    import pandas as pd

    return pd.DataFrame([asdict(p) for p in prompts], columns=list(FIELDS))


# ---------------------------------------------------------------------------------------
# Internals


@cache
def _packaged(name: str) -> tuple[Prompt, ...]:
    filename = _PACKAGED[name]
    package = __name__.rpartition(".")[0]
    if package:
        resource: Any = resources.files(package).joinpath("data").joinpath(filename)
        label = f"{package}/data/{filename}"
    else:  # this file loaded on its own, outside the package
        resource = Path(__file__).resolve().parent / "data" / filename
        label = str(resource)
    try:
        content = resource.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise _missing(f"packaged prompt suite {name!r} is missing its data file "
                                f"{label}: the attnvar installation is incomplete") from e
    return tuple(_parse(content, "json", label))


def _parse(content: str, fmt: str, label: str) -> list[Prompt]:
    if fmt == "text":
        entries: list[tuple[str, Any]] = []
        for lineno, line in enumerate(content.splitlines(), 1):
            if line.strip():
                entries.append((f"line {lineno}",
                                {"id": f"line_{lineno:03d}", "text": line, "category": "user"}))
    elif fmt == "jsonl":
        entries = []
        for lineno, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{label}: line {lineno}: invalid JSON: {e.msg} "
                                 f"(column {e.colno})") from e
    elif fmt == "json":
        try:
            data = json.loads(content)
        except json.JSONDecodeError as e:
            raise ValueError(f"{label}: invalid JSON: {e.msg} (line {e.lineno}, column "
                             f"{e.colno})") from e
        entries = _listed(data, label, "a JSON list of records or an object with a "
                          "'prompts' list")
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError as e:
                raise ValueError(f"{label}: reading TOML needs Python ≥ 3.11 or the "
                                 "'tomli' package") from e
        try:
            data = tomllib.loads(content)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{label}: invalid TOML: {e}") from e
        entries = _listed(data, label, "TOML [[prompts]] tables")
    if not entries:
        raise ValueError(f"{label}: no prompts")
    return _validate(entries, label)


def _listed(data: Any, label: str, expected: str) -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        if "prompts" not in data:
            raise ValueError(f"{label}: no 'prompts' key; expected {expected}")
        data = data["prompts"]
    if not isinstance(data, list):
        raise ValueError(f"{label}: 'prompts' is a {type(data).__name__}; expected {expected}")
    return [(f"record {n}", rec) for n, rec in enumerate(data, 1)]


def _validate(entries: list[tuple[str, Any]], label: str) -> list[Prompt]:
    prompts: list[Prompt] = []
    where_of: dict[str, str] = {}
    for n, (where, rec) in enumerate(entries, 1):
        if isinstance(rec, str):
            rec = {"text": rec}
        if not isinstance(rec, dict):
            raise ValueError(f"{label}: {where}: a prompt record must be an object (or a "
                             f"string), got {type(rec).__name__}")
        pid = rec.get("id", f"prompt_{n:03d}")
        at = f"{label}: {where}" + (f" (id {pid!r})" if isinstance(pid, str) else "")

        def fail(field: str, problem: str, at: str = at) -> NoReturn:
            raise ValueError(f"{at}: field {field!r}: {problem}")

        unknown = sorted(set(rec) - set(FIELDS))
        if unknown:
            fail(unknown[0], f"unknown field; a record has {', '.join(FIELDS)}")
        if not isinstance(pid, str) or not pid.strip():
            fail("id", f"must be a non-empty string, got {pid!r}")
        if pid in where_of:
            fail("id", f"duplicate id, first used at {where_of[pid]}")
        if "text" not in rec:
            fail("text", "missing")
        text = rec["text"]
        if not isinstance(text, str):
            fail("text", f"must be a string, got {type(text).__name__}")
        if not text.strip():
            fail("text", "empty")
        category = rec.get("category", "user")
        if not isinstance(category, str) or not category.strip():
            fail("category", f"must be a non-empty string, got {category!r}")
        structure = rec.get("structure")
        if structure is None:
            structure = infer_structure(text)
        elif structure not in STRUCTURES:
            fail("structure", f"must be one of {', '.join(STRUCTURES)}, got {structure!r}")
        pair = rec.get("pair")
        if pair is not None and (not isinstance(pair, str) or not pair.strip()):
            fail("pair", f"must be a non-empty string or null, got {pair!r}")
        where_of[pid] = where
        prompts.append(Prompt(id=pid, text=text, category=category, structure=structure,
                              pair=pair))
    groups: dict[str, list[Prompt]] = {}
    for p in prompts:
        if p.pair is not None:
            groups.setdefault(p.pair, []).append(p)
    for pair_id, members in groups.items():
        if sorted(m.structure for m in members) != ["complete", "incomplete"]:
            bad = members[-1]
            raise ValueError(f"{label}: {where_of[bad.id]} (id {bad.id!r}): field 'pair': "
                             f"pair {pair_id!r} must have exactly one incomplete and one "
                             f"complete prompt; it has {_describe(members)}")
    return prompts


def _describe(members: list[Prompt]) -> str:
    return ", ".join(f"{m.id} ({m.structure})" for m in members)
