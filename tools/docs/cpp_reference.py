"""The C++ API reference page, from Doxygen's XML of the entry header and its area headers.

The entry header ``cpp/include/attnvar/attnvar.h`` states the API's contract in plain ``//``
comments, section by section, and lists in its "Contents" which names each section covers
and which area header declares them. This script

1. runs Doxygen (Debian's ``doxygen``) over ``cpp/include/attnvar`` with XML output only,
   every entity extracted, and ``version.h.in`` read as C++;
2. splits the entry header into its general rules and its numbered sections;
3. looks every name a section lists up in Doxygen's XML — structs and classes, enums,
   functions with all their overloads, type aliases, the version macros — and writes
   each declaration as the header has it (with its own comments), and where it lives.

A name listed in the Contents that Doxygen does not find is an error, so the page (and a
strict docs build) fails when the header and its declarations drift apart.

    python3 tools/docs/cpp_reference.py OUT.md     # the page alone
    mkdocs build --strict                          # through tools/docs/cpp_reference_hook.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ROOT / "cpp" / "include"
ENTRY = INCLUDE / "attnvar" / "attnvar.h"
BANNER = re.compile(r"^// ={20,}\s*$")
SECTION = re.compile(r"^// (\d+)\. (.+?)\s*(?:\((.+)\))?\s*$")

DOXYFILE = """\
PROJECT_NAME           = attnvar
INPUT                  = {input}
RECURSIVE              = YES
FILE_PATTERNS          = *.h *.h.in
EXTENSION_MAPPING      = in=C++
STRIP_FROM_PATH        = {strip}
OUTPUT_DIRECTORY       = {out}
GENERATE_XML           = YES
GENERATE_HTML          = NO
GENERATE_LATEX         = NO
EXTRACT_ALL            = YES
EXTRACT_STATIC         = YES
ENABLE_PREPROCESSING   = YES
MACRO_EXPANSION        = NO
QUIET                  = YES
WARNINGS               = NO
WARN_IF_UNDOCUMENTED   = NO
"""


class ReferenceError_(RuntimeError):
    """The header and its declarations disagree, or Doxygen is missing or failed."""


def run_doxygen(out: Path) -> Path:
    """Doxygen's XML for every header under cpp/include/attnvar; returns the XML folder."""
    exe = shutil.which("doxygen")
    if exe is None:
        raise ReferenceError_(
            "the C++ API reference needs Doxygen: apt-get install doxygen "
            "(bash scripts/setup.sh installs it)")
    (out / "Doxyfile").write_text(DOXYFILE.format(
        input=INCLUDE / "attnvar", strip=INCLUDE, out=out))
    proc = subprocess.run([exe, str(out / "Doxyfile")], cwd=out, capture_output=True, text=True)
    if proc.returncode != 0 or not (out / "xml" / "index.xml").exists():
        raise ReferenceError_(f"doxygen failed (exit {proc.returncode}):\n{proc.stderr}")
    return out / "xml"


# ---------------------------------------------------------------------------------------
# The entry header: general rules, Contents, sections


@dataclass
class Section:
    number: int
    title: str
    headers: str            # the area headers named in the banner
    source: list[str]       # the section's lines, verbatim
    names: list[str] = field(default_factory=list)


def _strip_parenthesised(text: str) -> str:
    """Removes "(area/header.h)" notes, keeping the "()" that marks a function."""
    prev = None
    while prev != text:
        prev, text = text, re.sub(r"\s*\((?!\))[^()]*\)", "", text)
    return text


def _names(text: str) -> list[str]:
    out = []
    for item in _strip_parenthesised(text).split(","):
        item = item.strip()
        if not item:
            continue
        m = re.match(r"[A-Za-z_][\w]*\*?", item)
        if m:
            out.append(m.group(0))  # Tokenizer::encode/decode/piece -> Tokenizer
    return out


def parse_entry_header(lines: list[str]) -> tuple[list[str], list[Section]]:
    """The header's opening comment (the general rules) and its numbered sections, each
    with the names its Contents entry lists."""
    intro = []
    for line in lines:
        if line.startswith("#pragma once"):
            break
        intro.append(line)
    # Contents: "//   N. Title   names..." with continuation lines, up to the first line
    # that is not indented under it.
    contents: dict[int, str] = {}
    in_contents, current = False, None
    for line in intro:
        if line.startswith("// Contents"):
            in_contents = True
            continue
        if not in_contents:
            continue
        m = re.match(r"^//\s+(\d+)\.\s+\S+\s{2,}(.*)$", line)
        if m:
            current = int(m.group(1))
            contents[current] = m.group(2)
        elif current is not None and re.match(r"^//\s{10,}\S", line):
            contents[current] += " " + line[2:].strip()
        else:
            break
    if not contents:
        raise ReferenceError_(f"{ENTRY.relative_to(ROOT)}: no 'Contents' list found")

    sections: list[Section] = []
    i = 0
    while i < len(lines):
        if BANNER.match(lines[i]) and i + 2 < len(lines) and BANNER.match(lines[i + 2]):
            m = SECTION.match(lines[i + 1])
            if not m:
                raise ReferenceError_(f"{ENTRY.name}:{i + 2}: a banner without 'N. Title'")
            start = i + 3
            j = start
            while j < len(lines) and not BANNER.match(lines[j]) \
                    and not lines[j].startswith("}  // namespace"):
                j += 1
            body = lines[start:j]
            while body and not body[0].strip("/ \n"):
                body.pop(0)
            while body and not body[-1].strip():
                body.pop()
            number = int(m.group(1))
            sections.append(Section(number, m.group(2), m.group(3) or "", body,
                                    _names(contents.get(number, ""))))
            i = j
        else:
            i += 1
    missing = sorted(set(contents) - {s.number for s in sections})
    if missing:
        raise ReferenceError_(f"{ENTRY.name}: Contents lists sections {missing} that have no "
                              "banner in the header")
    return intro, sections


# ---------------------------------------------------------------------------------------
# Doxygen's XML


@dataclass
class Entity:
    kind: str        # struct, class, enum, function, typedef, variable, define
    name: str        # unqualified
    file: str        # relative to cpp/include
    line: int
    body: tuple[int, int] | None = None  # first and last line of a definition's body


class Index:
    def __init__(self, xml_dir: Path):
        self.by_name: dict[str, list[Entity]] = {}
        index = ET.parse(xml_dir / "index.xml").getroot()
        for comp in index.findall("compound"):
            kind = comp.get("kind")
            if kind in ("struct", "class"):
                self._compound(xml_dir / f"{comp.get('refid')}.xml")
            elif kind in ("namespace", "file"):
                self._members(xml_dir / f"{comp.get('refid')}.xml", kind)

    def _add(self, e: Entity) -> None:
        same = self.by_name.setdefault(e.name, [])
        if all((x.file, x.line) != (e.file, e.line) for x in same):
            same.append(e)

    @staticmethod
    def _where(loc: ET.Element, decl: bool = False) -> tuple[str, int, tuple[int, int] | None]:
        file = loc.get("declfile" if decl and loc.get("declfile") else "file")
        line = int(loc.get("declline" if decl and loc.get("declline") else "line"))
        body = None
        if loc.get("bodystart") and loc.get("bodyfile") == loc.get("file"):
            start, end = int(loc.get("bodystart")), int(loc.get("bodyend", "-1"))
            if end >= start > 0:
                body = (start, end)
        return file, line, body

    def _compound(self, path: Path) -> None:
        cdef = ET.parse(path).getroot().find("compounddef")
        if cdef.get("prot") not in (None, "public"):
            return
        qualified = cdef.findtext("compoundname")
        if qualified.count("::") != 1 or not qualified.startswith("attnvar::"):
            return  # nested or outside the namespace: shown inside its parent
        file, line, body = self._where(cdef.find("location"))
        self._add(Entity(cdef.get("kind"), qualified.split("::")[-1], file, line, body))

    def _members(self, path: Path, kind: str) -> None:
        cdef = ET.parse(path).getroot().find("compounddef")
        if kind == "namespace" and cdef.findtext("compoundname") != "attnvar":
            return
        for m in cdef.iter("memberdef"):
            mkind = m.get("kind")
            if kind == "file" and mkind != "define":
                continue
            if mkind not in ("function", "enum", "typedef", "variable", "define"):
                continue
            file, line, body = self._where(m.find("location"), decl=mkind == "function")
            self._add(Entity(mkind, m.findtext("name"), file, line,
                             body if mkind == "enum" else None))

    def find(self, name: str) -> list[Entity]:
        if name.endswith("*"):
            return sorted((e for n, es in self.by_name.items() if n.startswith(name[:-1])
                           for e in es), key=lambda e: (e.file, e.line))
        return sorted(self.by_name.get(name, []), key=lambda e: (e.file, e.line))


# ---------------------------------------------------------------------------------------
# Source text of a declaration


def _source(file: str) -> list[str]:
    return (INCLUDE / file).read_text(encoding="utf-8").splitlines()


def _comment_above(lines: list[str], first: int) -> list[str]:
    """The run of // lines right above line `first` (1-based)."""
    out = []
    i = first - 2
    while i >= 0 and lines[i].lstrip().startswith("//") and not BANNER.match(lines[i]):
        out.insert(0, lines[i])
        i -= 1
    return out


def _public_only(body: list[str]) -> list[str]:
    out, hidden = [], False
    for line in body:
        label = line.strip()
        if label in ("private:", "protected:"):
            hidden = True
            continue
        if label == "public:":
            hidden = False
        if not hidden or label.startswith("};"):
            if label.startswith("};"):
                while out and not out[-1].strip():
                    out.pop()
            out.append(line)
    return out


def declaration(e: Entity) -> str:
    lines = _source(e.file)
    if e.kind == "define":
        text = [lines[e.line - 1]]
        i = e.line - 1
        while text[-1].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            text.append(lines[i])
        return "\n".join(_comment_above(lines, e.line) + text)
    if e.body is not None and e.kind in ("struct", "class", "enum"):
        start, end = e.body
        first = e.line if e.line <= start else start
        text = lines[first - 1:end]
        return "\n".join(_comment_above(lines, first) + _public_only(text))
    # A function, alias or variable: from its line to the end of the declaration — the
    # first ";" outside brackets, or the "{" of an inline function's body (default
    # arguments such as `= {}` are inside the parentheses).
    i, text, depth, seen_paren = e.line - 1, [], 0, False
    while i < len(lines):
        line, end = lines[i], None
        for k, ch in enumerate(line):
            if ch == "/" and line[k:k + 2] == "//":
                break
            if ch in "([":
                depth += 1
                seen_paren = True
            elif ch in ")]":
                depth -= 1
            elif depth == 0 and ch == ";":
                end = k + 1
                break
            elif depth == 0 and ch == "{" and e.kind == "function" and seen_paren:
                line, end = line[:k].rstrip() + ";", None
                text.append(line)
                break
        else:
            text.append(line if end is None else line[:end])
            if end is None:
                i += 1
                continue
        if end is not None:
            text.append(line[:end])
        break
    # A template line above belongs to it.
    first = e.line
    if first >= 2 and lines[first - 2].lstrip().startswith("template"):
        text.insert(0, lines[first - 2])
        first -= 1
    return "\n".join(_comment_above(lines, first) + text)


# ---------------------------------------------------------------------------------------
# The page


def _anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")


def _text_block(lines: list[str]) -> str:
    body = "\n".join(line[3:] if line.startswith("// ") else line[2:]
                     if line.startswith("//") else line for line in lines)
    return "```text\n" + body.rstrip() + "\n```"


def render(xml_dir: Path) -> str:
    entry_lines = ENTRY.read_text(encoding="utf-8").splitlines()
    intro, sections = parse_entry_header(entry_lines)
    index = Index(xml_dir)
    out = [
        "# C++ API reference",
        "",
        "Generated at each docs build: Doxygen reads `cpp/include/attnvar/` "
        "(`tools/docs/cpp_reference.py` turns its XML into this page). Each section below "
        "is one section of the entry header `attnvar/attnvar.h` — its contract as the "
        "header states it, then the declarations of the names it covers, as they stand in "
        "their area headers. The guide to the C++ API (building, linking, versioning, the "
        "example program) is [The C++ API](../cpp_api.md).",
        "",
        "## General rules",
        "",
        "The opening of `attnvar/attnvar.h`:",
        "",
        _text_block(intro),
        "",
    ]
    missing = []
    for s in sections:
        out += [f"## {s.number}. {s.title}", ""]
        if s.headers:
            out += [f"Declared in: {', '.join(f'`{h.strip()}`' for h in s.headers.split(','))}.",
                    ""]
        out += ["### Contract", "", "```cpp", "\n".join(s.source), "```", ""]
        for name in s.names:
            found = index.find(name)
            if not found:
                missing.append(f"{name} (section {s.number})")
                continue
            label = name.replace("*", "…")
            out += [f"### `{label}` {{#{_anchor(f'{s.number}-{name.rstrip(chr(42))}')}}}", ""]
            by_file: dict[str, list[Entity]] = {}
            for e in found:
                by_file.setdefault(e.file, []).append(e)
            for file, es in by_file.items():
                shown = "attnvar/version.h (generated from version.h.in)" \
                    if file.endswith("version.h.in") else file
                out += [f"`{shown}`:", "", "```cpp",
                        "\n\n".join(dict.fromkeys(declaration(e) for e in es)), "```", ""]
    if missing:
        raise ReferenceError_(
            f"{ENTRY.relative_to(ROOT)} lists names Doxygen did not find under "
            f"cpp/include/attnvar: {', '.join(missing)}")
    return "\n".join(out).rstrip() + "\n"


def build_page() -> str:
    with tempfile.TemporaryDirectory(prefix="attnvar-doxygen-") as tmp:
        return render(run_doxygen(Path(tmp)))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-2].strip(), file=sys.stderr)
        return 2
    try:
        page = build_page()
    except ReferenceError_ as err:
        print(f"cpp_reference: {err}", file=sys.stderr)
        return 1
    Path(argv[1]).write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
