"""Sphinx configuration of d2lport's website (``make book``).  The pages are generated into
the source folder by ``python -m d2lport.book`` from chapters/*.md and the committed
notebooks; this file, index.md and _static/ are copied beside them."""
project = "d2lport"
author = "the d2lport authors"
copyright = "the d2lport authors; figures and numbers from the papers cited on each page"

extensions = ["myst_parser", "sphinx_design"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3            # [Training](#training): GitHub-style heading links
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "notebooks"]
master_doc = "index"

html_theme = "furo"
html_title = "d2lport: modern CNNs in four frameworks"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"   # (without one the browser asks for /favicon.ico: a 404)
html_css_files = ["d2lport.css"]
html_show_sourcelink = False        # the pages are generated: the chapters are the source
html_copy_source = False

# Math offline: MathJax from the site's own _static (see the Makefile's book target), never a CDN.
mathjax_path = "mathjax/tex-chtml-full.js"
