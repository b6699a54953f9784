"""The website's pages as generated from the chapters and notebooks (d2lport.book), without
Sphinx or a browser (tests/test_book.py checks the built site in Chromium)."""
import json

import pytest

from d2lport import book, registry
from d2lport.notebook import chapter_files, chapter_notebook

pytestmark = pytest.mark.core
FRAMEWORKS = registry.FRAMEWORKS

CHAPTER = """# A Chapter

Some prose with $x^2$ and [the notebook](../notebooks/torch/9_demo.ipynb).

```python
#@tab torch
import torch
```

```python
#@tab tensorflow, mxnet, jax
import numpy
```

<!-- static: table -->
| a printed copy |
<!-- /static -->

A shared block:

```python
print("shared")
```

## Next
"""


def _notebooks(outputs):
    """Notebooks as the chapter generates them, with outputs[fw] -> list per code cell."""
    nbs = {}
    for fw in FRAMEWORKS:
        cells = [{"cell_type": "markdown", "source": "header"}]
        code = ["import torch"] if fw == "torch" else ["import numpy"]
        code.append('print("shared")')
        for i, src in enumerate(code):
            cells.append({"cell_type": "code", "source": src,
                          "outputs": outputs(fw, i)})
        nbs[fw] = {"cells": cells}
    return nbs


def _page(tmp_path, outputs):
    path = tmp_path / "9_demo.md"
    path.write_text(CHAPTER)
    return book.chapter_page(path, FRAMEWORKS, _notebooks(outputs))


def _stream(text):
    return [{"output_type": "stream", "name": "stdout", "text": text}]


def test_tabbed_blocks_become_one_tab_set_and_static_regions_go(tmp_path):
    page = _page(tmp_path, lambda fw, i: _stream(f"out {fw}\n") if i == 1 else [])
    text = page.text
    assert text.count("{tab-set}") == 2           # the imports, then the shared cell's outputs
    assert text.count("{tab-item}") == 8
    assert text.count(":sync-group: framework") == 2
    for fw in FRAMEWORKS:
        assert f":sync: {fw}" in text and f"out {fw}" in text
    assert "printed copy" not in text
    assert "](notebooks/torch/9_demo.ipynb)" in text
    # the chapter links one notebook, not four: the page adds the four downloads
    assert text.count("{download}") == len(FRAMEWORKS)
    assert text.index("{download}") < text.index("Some prose")


def test_the_same_output_everywhere_is_shown_once(tmp_path):
    page = _page(tmp_path, lambda fw, i: _stream("shared\n") if i == 1 else [])
    assert page.text.count("{tab-set}") == 1 and page.text.count("shared\n") == 1


def test_pictures_become_files_of_the_page(tmp_path):
    png = "iVBORw0KGgo="                                   # base64 of the PNG signature
    page = _page(tmp_path, lambda fw, i: [{"output_type": "display_data",
                                           "data": {"image/png": png, "text/plain": "<F>"}}]
                 if i == 1 else [])
    (path, data), = page.files.items()
    assert path.startswith("_out/9_demo/") and data.startswith(b"\x89PNG")
    assert page.text.count(f"{{image}} {path}") == 1


def test_a_notebook_out_of_date_with_its_chapter_is_named_with_the_fix(tmp_path):
    path = tmp_path / "9_demo.md"
    path.write_text(CHAPTER.replace('print("shared")', 'print("edited")'))
    with pytest.raises(book.BookError, match=r"notebooks/torch/9_demo.ipynb is out of date "
                       r"with chapters/9_demo.md \(line \d+\): run `make notebooks`"):
        book.chapter_page(path, FRAMEWORKS, _notebooks(lambda fw, i: []))


def test_missing_mathjax_says_how_to_get_it(tmp_path):
    with pytest.raises(book.BookError, match=r"no MathJax in .*: run `make setup`"):
        book.copy_mathjax(tmp_path, tmp_path / "out")


def test_every_chapter_pairs_with_its_committed_notebooks():
    for chapter in chapter_files():
        page = book.chapter_page(chapter)
        assert page.text.startswith("# ")
        assert page.text.count("{tab-set}") >= 1, chapter
        code_cells = sum(c.cell_type == "code" for c in chapter_notebook(chapter, "torch").cells)
        assert code_cells > 0


def test_an_unclosed_static_region_is_one_error_in_the_notebooks_and_the_book():
    """Both drop static regions with notebook.without_static: one message, naming the region."""
    from d2lport.notebook import ChapterError, notebook_markdown, without_static
    text = CHAPTER.replace("<!-- /static -->\n", "")
    with pytest.raises(ChapterError, match=r"^9_demo: <!-- static: table --> never closed$"):
        book.segments(text, "9_demo")
    with pytest.raises(ChapterError, match=r"^9_demo: <!-- static: table --> never closed$"):
        notebook_markdown(text, "torch", "9_demo")
    # closed: the region and the blank line after it go, the rest stays
    assert without_static(["a", "<!-- static: t -->", "x", "<!-- /static -->", "", "b"]) == ["a", "b"]
