"""The chapters as a website (``make book``): ``chapters/*.md`` and the committed notebooks'
outputs -> the source of a Sphinx site (MyST Markdown pages and sphinx-design tabs).

On each page, like D2L's website:

* prose, math and tables are the chapter's own Markdown;
* every run of consecutive code blocks of which some are tabbed (``#@tab``) becomes one tab
  set with a tab per framework, holding the blocks that framework runs, each followed by
  its outputs in that framework's committed notebook (text, tables, plots, diagrams). All
  tab sets share one sync key, so the reader's choice follows them through the page and
  the site;
* a block shared by all frameworks is shown once; its outputs too when they are the same
  in every notebook, otherwise in a tab set of outputs;
* ``<!-- static -->`` regions (a code host's printed copy of an output) are dropped, as in
  the notebooks: the output under the code is the live one;
* links to the notebooks become downloads of the copies the site carries, and each page
  starts with links to its four notebooks.

The pairing of a chapter's blocks with notebook cells is checked cell by cell: a notebook
that its chapter no longer generates is an error that says to run ``make notebooks``.

    python -m d2lport.book SRC --mathjax ES5   # write the Sphinx source tree into SRC

This module imports no framework.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import registry
from .notebook import (NOTEBOOKS, ROOT, TITLES, ChapterError, chapter_files, code_blocks,
                       notebook_path, without_static)

FRAMEWORKS = registry.FRAMEWORKS
TEMPLATE = ROOT / "book"                 # conf.py, index and the site's CSS: copied into SRC
SYNC_GROUP = "framework"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NOTEBOOK_LINK = re.compile(r"\]\(\.\./notebooks/(\w+)/(\w+)\.ipynb\)")
IMG_LINK = re.compile(r"\]\(\.\./notebooks/img/([\w.-]+)\)")


class BookError(ChapterError):
    pass


# ------------------------------------------------------------------- the chapter's parts
def segments(text: str, name: str) -> List[Tuple[str, object]]:
    """The chapter as ``("md", text)`` and ``("code", block)`` items, static regions left
    out; a block is :func:`~d2lport.notebook.code_blocks`' (its ``#@tab`` line removed)."""
    lines = text.splitlines()
    items: List[Tuple[str, object]] = []
    at = 0
    for block in code_blocks(text, name):
        prose = without_static(lines[at:block["line"] - 1], name)
        items += [("md", "\n".join(prose)), ("code", block)]
        at = block["end"]
    items.append(("md", "\n".join(without_static(lines[at:], name))))
    return items


def runs(items: List[Tuple[str, object]]) -> List[Tuple[str, object]]:
    """Consecutive code blocks (only blank lines between them) joined into ``("run",
    [block, ...])`` items."""
    out: List[Tuple[str, object]] = []
    for kind, value in items:
        if kind == "code":
            if out and out[-1][0] == "run":
                out[-1][1].append(value)
            elif len(out) >= 2 and out[-1] == ("md", "") and out[-2][0] == "run":
                out.pop()
                out[-1][1].append(value)
            else:
                out.append(("run", [value]))
        elif kind == "md" and not value.strip() and out and out[-1][0] == "run":
            out.append(("md", ""))
        else:
            out.append((kind, value))
    return [item for item in out if item != ("md", "")]


def attach_outputs(items, notebooks: Dict[str, dict], name: str) -> None:
    """Give every block ``outputs[fw]``: the outputs of its cell in each framework's
    notebook, paired in order and checked by source."""
    cells = {fw: [c for c in nb["cells"] if c["cell_type"] == "code"]
             for fw, nb in notebooks.items()}
    taken = {fw: 0 for fw in notebooks}
    for kind, block in items:
        if kind != "code":
            continue
        block["outputs"] = {}
        for fw in block["tabs"]:
            if fw not in notebooks:
                continue
            k = taken[fw]
            source = _joined(cells[fw][k]["source"]) if k < len(cells[fw]) else None
            if source != block["code"]:
                raise BookError(f"notebooks/{fw}/{name}.ipynb is out of date with "
                                f"chapters/{name}.md (line {block['line']}): run "
                                "`make notebooks`")
            block["outputs"][fw] = cells[fw][k].get("outputs", [])
            taken[fw] = k + 1
    for fw, k in taken.items():
        if k != len(cells[fw]):
            raise BookError(f"notebooks/{fw}/{name}.ipynb has cells that chapters/{name}.md "
                            "does not: run `make notebooks`")


# --------------------------------------------------------------------------- rendering
class Page:
    """One chapter's MyST Markdown; the output files it refers to go to ``files``."""

    def __init__(self, name: str):
        self.name = name
        self.files: Dict[str, bytes] = {}        # path under SRC -> content

    # outputs ----------------------------------------------------------------------
    def _file(self, data: bytes, ext: str) -> str:
        path = f"_out/{self.name}/{hashlib.sha256(data).hexdigest()[:16]}.{ext}"
        self.files[path] = data
        return path

    def output(self, out: dict) -> str:
        kind = out["output_type"]
        if kind == "stream":
            text = ANSI.sub("", _joined(out["text"]))
            cls = "output stderr" if out.get("name") == "stderr" else "output"
            return _literal(text, cls) if text.strip() else ""
        if kind == "error":
            return _literal(ANSI.sub("", "\n".join(out.get("traceback", []))), "output error")
        data = out.get("data", {})
        if "image/png" in data:
            path = self._file(base64.b64decode(_joined(data["image/png"])), "png")
            return f"```{{image}} {path}\n:class: output\n:alt: output\n```"
        if "image/svg+xml" in data:
            path = self._file(_joined(data["image/svg+xml"]).encode(), "svg")
            return f"```{{image}} {path}\n:class: output svg\n:alt: diagram\n```"
        if "text/html" in data:
            return f"```{{raw}} html\n<div class=\"output html\">\n{_joined(data['text/html'])}\n</div>\n```"
        if "text/markdown" in data:
            body = _joined(data["text/markdown"]).strip()
            fence = ":" * max(4, _longest_run(body, ":") + 1)
            return f"{fence}{{container}} output markdown\n{body}\n{fence}"
        if "text/plain" in data:
            return _literal(ANSI.sub("", _joined(data["text/plain"])), "output")
        return ""

    def outputs(self, outs: Sequence[dict]) -> str:
        return "\n\n".join(r for r in (self.output(o) for o in outs) if r)

    # blocks -----------------------------------------------------------------------
    def run(self, blocks: List[dict], frameworks: Sequence[str]) -> str:
        if all(set(b["tabs"]) >= set(frameworks) for b in blocks):
            return "\n\n".join(self.shared(b, frameworks) for b in blocks)
        tabs = {fw: "\n\n".join(part for b in blocks if fw in b["tabs"]
                                for part in (_code(b["code"]),
                                             self.outputs(b["outputs"].get(fw, ())))
                                if part)
                for fw in frameworks}
        return tab_set({fw: body for fw, body in tabs.items() if body})

    def shared(self, block: dict, frameworks: Sequence[str]) -> str:
        rendered = {fw: self.outputs(block["outputs"].get(fw, ())) for fw in frameworks}
        parts = [_code(block["code"])]
        if len(set(rendered.values())) == 1:
            parts.append(next(iter(rendered.values())))
        elif any(rendered.values()):
            parts.append(tab_set({fw: body or _literal("(no output)", "output")
                                  for fw, body in rendered.items()}, cls="outputs"))
        return "\n\n".join(p for p in parts if p)


def tab_set(bodies: Dict[str, str], cls: str = "code") -> str:
    """A sphinx-design tab set, one tab per framework, all synchronised by framework."""
    depth = max([_longest_run(b, ":") for b in bodies.values()] + [2]) + 1
    item, outer = ":" * depth, ":" * (depth + 1)
    parts = [f"{outer}{{tab-set}}\n:sync-group: {SYNC_GROUP}\n:class: {cls}\n"]
    for fw, body in bodies.items():
        parts.append(f"{item}{{tab-item}} {TITLES[fw]}\n:sync: {fw}\n\n{body}\n{item}\n")
    return "\n".join(parts) + outer


def _code(code: str) -> str:
    fence = "`" * max(3, _longest_run(code, "`") + 1)
    # IPython's lexer for a cell with shell escapes (`!cmd`) or magics (`%matplotlib`)
    lexer = "ipython3" if re.search(r"^\s*[!%]", code, re.M) else "python"
    return f"{fence}{lexer}\n{code}\n{fence}"


def _literal(text: str, cls: str) -> str:
    text = text.rstrip("\n")
    fence = "`" * max(3, _longest_run(text, "`") + 1)
    return f"{fence}{{code-block}} text\n:class: {cls}\n\n{text}\n{fence}"


def _joined(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _longest_run(text: str, char: str) -> int:
    runs_ = re.findall(re.escape(char) + "+", text)
    return max((len(r) for r in runs_), default=0)


# ---------------------------------------------------------------------------- a page
def notebook_links(name: str, frameworks: Sequence[str]) -> str:
    links = " · ".join(f"{{download}}`{TITLES[fw]} <notebooks/{fw}/{name}.ipynb>`"
                       for fw in frameworks)
    return f"```{{admonition}} Notebooks\n:class: notebooks\nThis chapter as a notebook: {links}\n```"


def _prose(text: str) -> str:
    text = NOTEBOOK_LINK.sub(lambda m: f"](notebooks/{m.group(1)}/{m.group(2)}.ipynb)", text)
    return IMG_LINK.sub(lambda m: f"](notebooks/img/{m.group(1)})", text)


def chapter_page(chapter: Path, frameworks: Sequence[str] = FRAMEWORKS,
                 notebooks: Optional[Dict[str, dict]] = None) -> Page:
    """The page of one chapter (``page.text``, and the output files in ``page.files``)."""
    name = chapter.stem
    if notebooks is None:
        notebooks = {}
        for fw in frameworks:
            path = notebook_path(chapter, fw)
            if not path.exists():
                raise BookError(f"{path.relative_to(ROOT)} is missing: run `make notebooks`")
            notebooks[fw] = json.loads(path.read_text(encoding="utf-8"))
    text = chapter.read_text(encoding="utf-8")
    items = segments(text, name)
    attach_outputs(items, notebooks, name)
    page = Page(name)
    parts: List[str] = []
    for kind, value in runs(items):
        if kind == "md":
            parts.append(_prose(value))
        else:
            parts.append(page.run(value, frameworks))
    # the notebooks' links after the title, unless the chapter has them already
    linked = {m.group(1) for m in NOTEBOOK_LINK.finditer(text) if m.group(2) == name}
    first = parts[0].split("\n", 1) if parts and parts[0].startswith("# ") else None
    if first and not linked >= set(frameworks):
        parts[0] = first[0] + "\n\n" + notebook_links(name, frameworks) + "\n\n" + (
            first[1] if len(first) > 1 else "")
    page.text = "\n\n".join(p.strip("\n") for p in parts if p.strip()) + "\n"
    return page


# What the site needs of MathJax 3's es5 folder (npm's mathjax package): the TeX input with
# every extension, CommonHTML output and its fonts, the menu and accessibility parts it loads
MATHJAX_FILES = ("tex-chtml-full.js", "output/chtml/fonts/woff-v2", "a11y", "ui",
                 "input/tex/extensions", "sre")


def copy_mathjax(es5: Path, dest: Path) -> None:
    """MathJax into the site (no CDN: the site works offline)."""
    if not (es5 / MATHJAX_FILES[0]).exists():
        raise BookError(f"no MathJax in {es5}: run `make setup` (it runs npm install "
                        "mathjax@3 into .cache/mathjax)")
    for rel in MATHJAX_FILES:
        if (es5 / rel).is_dir():
            shutil.copytree(es5 / rel, dest / rel)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(es5 / rel, dest / rel)


def write_source(src: Path, frameworks: Sequence[str] = FRAMEWORKS,
                 chapters: Optional[Sequence[Path]] = None,
                 mathjax: Optional[Path] = None) -> List[str]:
    """The whole Sphinx source tree in ``src`` (replaced): the template (conf.py, index,
    CSS), MathJax (from ``mathjax``, MathJax 3's es5 folder), a page per chapter, their
    output files and the notebooks to download."""
    chapters = list(chapters or chapter_files())
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(TEMPLATE, src, ignore=shutil.ignore_patterns("__pycache__"))
    if mathjax is not None:
        copy_mathjax(Path(mathjax), src / "_static" / "mathjax")
    names = []
    for chapter in chapters:
        page = chapter_page(chapter, frameworks)
        (src / f"{chapter.stem}.md").write_text(page.text, encoding="utf-8")
        for rel, data in page.files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
        for fw in frameworks:
            dest = src / "notebooks" / fw / f"{chapter.stem}.ipynb"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(notebook_path(chapter, fw), dest)
        names.append(chapter.stem)
    shutil.copytree(NOTEBOOKS / "img", src / "notebooks" / "img")
    index = src / "index.md"
    index.write_text(index.read_text(encoding="utf-8").replace(
        "{chapters}", "\n".join(names)), encoding="utf-8")
    return names


def main(argv: Sequence[str] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m d2lport.book",
                                     description="chapters + notebooks -> Sphinx source")
    parser.add_argument("src", help="folder to write (replaced)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--mathjax", type=Path, help="MathJax 3's es5 folder (npm mathjax@3)")
    args = parser.parse_args(argv)
    try:
        names = write_source(Path(args.src), [registry.normalize_framework(f)
                                              for f in args.frameworks.split(",") if f],
                             mathjax=args.mathjax)
    except ChapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.src}: {len(names)} chapter pages ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
