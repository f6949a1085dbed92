"""MkDocs hooks (mkdocs.yml, `hooks:`).

- The C++ API reference: Doxygen runs on cpp/include/attnvar at every build (a few
  seconds) and tools/docs/cpp_reference.py turns its XML into the page reference/cpp.md,
  which is added to the site without being written into docs/. A missing Doxygen, or a
  name the entry header lists that Doxygen does not find, stops the build with the reason.
- Pages missing from the nav: a page added to docs/ but not (yet) to mkdocs.yml's `nav`
  is listed under "More" rather than failing the strict build or being unreachable; the
  build says which (add it to the nav where it belongs).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpp_reference  # noqa: E402

CPP_PAGE = "reference/cpp.md"
log = logging.getLogger("mkdocs.hooks.attnvar")


def _nav_pages(nav) -> set[str]:
    out: set[str] = set()
    for item in nav or []:
        value = item if isinstance(item, str) else next(iter(item.values()))
        if isinstance(value, list):
            out |= _nav_pages(value)
        elif isinstance(value, str) and value.endswith(".md"):
            out.add(value)
    return out


def on_config(config):
    docs = Path(config["docs_dir"])
    listed = _nav_pages(config["nav"])
    extra = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md")
                   if p.relative_to(docs).as_posix() not in listed)
    if extra and config["nav"] is not None:
        log.info("pages not in mkdocs.yml's nav, listed under 'More': %s", ", ".join(extra))
        config["nav"].append({"More": extra})
    return config


def on_files(files, config):
    try:
        page = cpp_reference.build_page()
    except cpp_reference.ReferenceError_ as err:
        raise PluginError(f"C++ API reference: {err}") from None
    files.append(File.generated(config, CPP_PAGE, content=page))
    return files


def on_serve(server, config, builder):
    server.watch(str(cpp_reference.INCLUDE / "attnvar"))
    return server
