"""Architecture pictures drawn from the spec, with Graphviz.

``d2lport.draw("inception")`` returns a :class:`Diagram`: Jupyter shows it (``_repr_svg_``),
``.svg()`` is the SVG text, ``.source`` the Graphviz (DOT) text, ``.save(path)`` writes
either.  Every label, channel count and shape is read from :mod:`d2lport.specs` (shapes
through :func:`specs.infer`), so a picture changes when the spec changes.

What can be drawn:

* ``"inception"``: one Inception block, four branches with the channel count on every edge
  (keyword arguments go to :func:`specs.inception_block`: ``in_channels, c1, c2, c3, c4``);
  ``"inception_a"``: the lecture's InceptionA; ``"residual_block"``: the residual block;
* ``"vgg"``: the VGG configurations A–E side by side, as Table 1 of the paper (keyword
  arguments go to :func:`specs.vgg`, e.g. ``width_ratio=4``);
* any other registered model (``"googlenet"``, ``"googlenet_v1"``, ``"vgg11"``,
  ``"vgg_d2l"``, ``"residual_net"``...) or a :class:`specs.NetSpec`: the network's
  top-level blocks in order, every edge labelled with the shape that flows along it;
  stages made of Inception modules are boxes holding one node per module, auxiliary heads
  hang off the block they tap.

Rendering needs the ``dot`` program (Debian/Ubuntu: ``apt-get install graphviz``) and the
``graphviz`` Python package (``pip install 'graphviz<0.9'``; MXNet 1.9.1 pins it); the
DOT source is built without running ``dot``.  This module imports no framework.
"""
from __future__ import annotations

import html
import sys
import types
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from . import registry, specs

__all__ = ["Diagram", "draw", "DIAGRAMS"]

FONT = "Helvetica"
# Fill colours per layer kind (D2L's figures: convs blue-ish, pools orange-ish).
COLOURS = {"conv1": "#dbe9f6", "conv": "#b9d3ee", "pool": "#fde2c0", "dense": "#d8ecd0",
           "lrn": "#eeeeee", "concat": "#f4f4f4", "io": "#ffffff", "aux": "#f8dede",
           "add": "#f4f4f4"}


# =========================================================================== the result
class Diagram:
    """A Graphviz picture: displays itself in Jupyter, ``.svg()``, ``.source``, ``.save()``."""

    def __init__(self, graph, name: str):
        self.graph = graph
        self.name = name
        self._svg: Optional[str] = None

    @property
    def source(self) -> str:
        """The DOT text (deterministic: what tests compare)."""
        return self.graph.source

    def svg(self) -> str:
        """The picture as SVG text (runs Graphviz' ``dot`` once, then cached)."""
        if self._svg is None:
            try:
                data = self.graph.pipe(format="svg")
            except Exception as err:          # graphviz.ExecutableNotFound, CalledProcessError
                if type(err).__name__ == "ExecutableNotFound":
                    raise RuntimeError(
                        "drawing needs Graphviz' `dot` program on the PATH: install Graphviz "
                        "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install "
                        "graphviz; conda: conda install graphviz)") from None
                raise
            self._svg = data.decode("utf-8")
        return self._svg

    def _repr_svg_(self) -> str:
        return self.svg()

    def save(self, path) -> Path:
        """Write the SVG (or, for a ``.gv``/``.dot`` path, the DOT source) to ``path``."""
        path = Path(path)
        text = self.source if path.suffix in (".gv", ".dot") else self.svg()
        path.write_text(text, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"<d2lport.draw.Diagram {self.name!r}: .svg(), .source, .save(path)>"


def _graphviz():
    try:
        import graphviz
    except ImportError:
        raise ImportError("d2lport.draw needs the graphviz Python package: "
                          "pip install 'graphviz<0.9' (and Graphviz' dot program)") from None
    return graphviz


def _digraph(name: str, rankdir: str = "TB", **graph_attr):
    g = _graphviz().Digraph(name=name)
    attrs = dict(rankdir=rankdir, fontname=FONT, fontsize="12", nodesep="0.25", ranksep="0.3")
    attrs.update(graph_attr)
    g.attr("graph", **attrs)
    g.attr("node", shape="box", style="rounded,filled", fontname=FONT, fontsize="11",
           fillcolor=COLOURS["io"], margin="0.12,0.05", height="0.3")
    g.attr("edge", fontname=FONT, fontsize="10", color="#555555", arrowsize="0.6")
    return g


# =========================================================================== labels
def _x(*values) -> str:
    return " × ".join(str(v) for v in values)


def shape_label(shape: Sequence[int]) -> str:
    return _x(*shape)


def layer_label(layer: specs.Layer) -> str:
    """A short human label for one spec layer (``3×3 conv, 128``, ``3×3 max-pool, /2``)."""
    if isinstance(layer, specs.Conv):
        text = f"{_x(layer.kernel, layer.kernel)} conv, {layer.out_channels}"
        if layer.stride > 1:
            text += f", /{layer.stride}"
        if layer.bn:
            text += ", BN"
        if not layer.relu:
            text += " (linear)"
        return text
    if isinstance(layer, specs.Pool):
        text = f"{_x(layer.kernel, layer.kernel)} {layer.kind}-pool"
        if layer.stride > 1:
            text += f", /{layer.stride}"
        return text
    if isinstance(layer, specs.LRN):
        return f"LRN (n={layer.size})"
    if isinstance(layer, specs.GlobalAvgPool):
        return "global avg-pool"
    if isinstance(layer, specs.Dense):
        text = f"FC {layer.out_features}"
        if layer.relu:
            text += ", ReLU"
        if layer.dropout:
            text += f", dropout {layer.dropout:g}"
        return text
    if isinstance(layer, specs.Dropout):
        return f"dropout {layer.rate:g}"
    return layer.name


def _colour(layer: specs.Layer) -> str:
    if isinstance(layer, specs.Conv):
        return COLOURS["conv1"] if layer.kernel == 1 else COLOURS["conv"]
    if isinstance(layer, (specs.Pool, specs.GlobalAvgPool)):
        return COLOURS["pool"]
    if isinstance(layer, (specs.Dense, specs.Dropout)):
        return COLOURS["dense"]
    return COLOURS["lrn"]


# =========================================================================== one block
def _concat_block(g, block: specs.Concat, in_shape, prefix: str = "", title: str = ""):
    """Input at the bottom, one column per branch, the concatenation on top (D2L Fig. 8.4.1)."""
    inp, out = f"{prefix}input", f"{prefix}concat"
    g.node(inp, f"input\n{shape_label(in_shape)}", fillcolor=COLOURS["io"])
    out_shape = specs.output_shape(block, in_shape)
    widths = " + ".join(str(specs.output_shape(b, in_shape)[0]) for b in block.branches)
    g.node(out, f"concatenate\n{widths} = {shape_label(out_shape)}",
           fillcolor=COLOURS["concat"])
    for i, branch in enumerate(block.branches, 1):
        prev, shape = inp, tuple(in_shape)
        for j, layer in enumerate(branch.layers):
            node = f"{prefix}{branch.name}_{j}"
            g.node(node, layer_label(layer), fillcolor=_colour(layer))
            g.edge(prev, node, label=f" {shape[0]}" if prev != inp else "")
            prev, shape = node, specs.output_shape(layer, shape)
        g.edge(prev, out, label=f" {shape[0]}")
    if title:
        g.attr(label=title, labelloc="t")


def _residual_block(g, block: specs.Residual, in_shape, title: str = ""):
    g.node("input", f"input x\n{shape_label(in_shape)}")
    prev, shape = "input", tuple(in_shape)
    for j, layer in enumerate(block.body):
        node = f"body_{j}"
        text = layer_label(layer)
        if isinstance(layer, specs.Conv) and layer.relu:
            text += ", ReLU"
        g.node(node, text, fillcolor=_colour(layer))
        g.edge(prev, node, label=f" {shape_label(shape)}" if j else "")
        prev, shape = node, specs.output_shape(layer, shape)
    g.node("add", "+", shape="circle", fillcolor=COLOURS["add"], width="0.3")
    g.edge(prev, "add", label=f" f(x): {shape_label(shape)}")
    g.edge("input", "add", label=" x (identity)", style="dashed", constraint="false")
    g.node("relu", f"ReLU\n{shape_label(shape)}")
    g.edge("add", "relu")
    if title:
        g.attr(label=title, labelloc="t")


# =========================================================================== networks
def _block_text(layers: Sequence[specs.Layer]) -> str:
    return "\n".join(layer_label(l) for l in layers)


def _inception_text(block: specs.Concat, in_shape) -> str:
    widths = [specs.output_shape(b, in_shape)[0] for b in block.branches]
    return (f"{block.name}\n" + " | ".join(str(w) for w in widths)
            + f" → {sum(widths)}")


def _network(g, spec: specs.NetSpec, input_shape=None):
    rows = specs.infer(spec, input_shape, include_aux=True)
    shapes = {r.name: r.out_shape for r in rows}
    in_shape = tuple(spec.input_shape) if input_shape is None else tuple(input_shape)[-3:]
    g.node("input", f"input\n{shape_label(in_shape)}")
    prev, shape = "input", in_shape
    heads = spec.aux_heads
    for block in spec.blocks:
        first, last = _network_block(g, block, shape)
        g.edge(prev, first, label=f" {shape_label(shape)}" if prev != "input" else "")
        prev, shape = last, shapes[block.name]
        if block.name in heads:
            head = heads[block.name]
            g.node(head.name, f"{head.name} (training only)\n" + _block_text(head.layers),
                   fillcolor=COLOURS["aux"], style="rounded,filled,dashed")
            g.edge(last, head.name, label=f" {shape_label(shape)}", style="dashed")
            g.node(f"{head.name}_out", f"{head.name} logits {shape_label(shapes[head.name])}",
                   shape="plaintext", style="")
            g.edge(head.name, f"{head.name}_out", style="dashed")
    g.node("output", f"output\n{shape_label(shape)}")
    g.edge(prev, "output", label=f" {shape_label(shape)}")


def _network_block(g, block: specs.Layer, in_shape) -> Tuple[str, str]:
    """Draw one top-level block; returns its (first, last) node names."""
    name = block.name
    if isinstance(block, specs.Sequential) and any(
            isinstance(l, (specs.Concat, specs.Residual)) for l in block.layers):
        # A stage of modules (GoogLeNet's b3-b5): a box holding one node per module.
        with g.subgraph(name=f"cluster_{name}") as c:
            c.attr(label=name, style="rounded", color="#888888", fontname=FONT)
            prev, shape, first = None, tuple(in_shape), None
            for i, layer in enumerate(block.layers):
                node = f"{name}_{i}"
                if isinstance(layer, specs.Concat):
                    c.node(node, _inception_text(layer, shape), fillcolor=COLOURS["concat"])
                else:
                    c.node(node, layer_label(layer), fillcolor=_colour(layer))
                if prev is not None:
                    c.edge(prev, node, label=f" {shape_label(shape)}")
                first = first or node
                prev, shape = node, specs.output_shape(layer, shape)
        return first, prev
    if isinstance(block, specs.Sequential):
        g.node(name, f"{name}\n" + _block_text(block.layers), fillcolor=COLOURS["conv"])
    elif isinstance(block, specs.Concat):
        g.node(name, _inception_text(block, in_shape), fillcolor=COLOURS["concat"])
    elif isinstance(block, specs.Residual):
        g.node(name, f"{name}: relu(x + f(x))\nf: " + " → ".join(layer_label(l)
                                                               for l in block.body),
               fillcolor=COLOURS["add"])
    else:
        g.node(name, f"{name}: {layer_label(block)}", fillcolor=_colour(block))
    return name, name


# =========================================================================== VGG table
def _vgg_cell_lines(layers: Sequence[specs.Layer]) -> List[str]:
    out = []
    for l in layers:
        if isinstance(l, specs.Conv):
            out.append(f"conv{l.kernel}-{l.out_channels}" + ("-BN" if l.bn else ""))
        elif isinstance(l, specs.LRN):
            out.append("LRN")
    return out


def _vgg_table(g, **kwargs):
    """VGG configurations side by side, like Table 1 of Simonyan & Zisserman (2015):
    one column per configuration, one row per block; layers new relative to the column on
    the left in bold."""
    configs = list(specs.VGG_CONFIGS)
    nets = {c: specs.vgg(c, **kwargs) for c in configs}
    esc = html.escape
    n = len(configs)
    rows = [f'<TR><TD COLSPAN="{n}" BGCOLOR="#eeeeee"><B>ConvNet configuration</B></TD></TR>']
    rows.append("<TR>" + "".join(f"<TD><B>{esc(c)}</B></TD>" for c in configs) + "</TR>")
    weight_layers = {c: sum(1 for leaf in specs.iter_leaves(s)
                            if isinstance(leaf.layer, (specs.Conv, specs.Dense)))
                     for c, s in nets.items()}
    rows.append("<TR>" + "".join(f"<TD>{weight_layers[c]} weight layers</TD>" for c in configs)
                + "</TR>")
    spec0 = nets[configs[0]]
    ch, h, w = spec0.input_shape
    rows.append(f'<TR><TD COLSPAN="{n}">input ({h} × {w}, {ch} channel{"s" if ch > 1 else ""})'
                "</TD></TR>")
    conv_blocks = [b for b in spec0.blocks if isinstance(b, specs.Sequential)]
    for k, _ in enumerate(conv_blocks):
        cells, previous = [], None
        for c in configs:
            lines = _vgg_cell_lines(nets[c].blocks[k].layers)
            shown = []
            for i, text in enumerate(lines):
                new = previous is not None and (i >= len(previous) or previous[i] != text)
                shown.append(f"<B>{esc(text)}</B>" if new else esc(text))
            cells.append("<TD>" + "<BR/>".join(shown) + "</TD>")
            previous = lines
        rows.append('<TR>' + "".join(cells) + "</TR>")
        pool = nets[configs[0]].blocks[k].layers[-1]
        rows.append(f'<TR><TD COLSPAN="{n}" BGCOLOR="{COLOURS["pool"]}">'
                    f'{esc(layer_label(pool))}</TD></TR>')
    for b in spec0.blocks:
        if isinstance(b, specs.Dense):
            text = f"FC-{b.out_features}" + (f", dropout {b.dropout:g}" if b.dropout else "")
            rows.append(f'<TR><TD COLSPAN="{n}" BGCOLOR="{COLOURS["dense"]}">{esc(text)}'
                        "</TD></TR>")
    rows.append(f'<TR><TD COLSPAN="{n}">soft-max</TD></TR>')
    table = ('<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">'
             + "".join(rows) + "</TABLE>>")
    g.node("table", table, shape="plaintext", style="")


# =========================================================================== entry point
DIAGRAMS = {
    "inception": "one Inception block (GoogLeNet 3a): in_channels, c1, c2, c3, c4, image_size",
    "inception_a": "the lecture's InceptionA block: in_channels, image_size",
    "residual_block": "the lecture's residual block: channels, image_size",
    "vgg": "VGG configurations A-E side by side (specs.vgg keyword arguments)",
}


def draw(what: Union[str, specs.NetSpec] = "inception", input_shape=None, **kwargs) -> Diagram:
    """Draw a block, the VGG configurations or a whole network from the spec.

    ``what``: ``"inception"``, ``"inception_a"``, ``"residual_block"``, ``"vgg"``, any
    registered model name, or a :class:`specs.NetSpec`.  Keyword arguments go to the spec
    factory (``draw("inception", c1=32)``, ``draw("vgg", width_ratio=4)``,
    ``draw("googlenet_v1", num_classes=10, in_channels=1, image_size=96)``);
    ``input_shape`` ((C, H, W) or (N, C, H, W)) draws a network at another input size.
    """
    if isinstance(what, specs.NetSpec):
        g = _digraph(what.name)
        _network(g, what, input_shape)
        return Diagram(g, what.name)
    key = what.strip().lower().replace("-", "_")
    if key in ("vgg", "vgg_configs", "vgg_configurations"):
        g = _digraph("vgg_configurations")
        _vgg_table(g, **kwargs)
        return Diagram(g, "vgg")
    if key in ("inception", "inception_a", "residual_block"):
        spec = registry.get_spec(key, **kwargs)
        block = spec.blocks[0]
        in_shape = tuple(spec.input_shape) if input_shape is None else tuple(input_shape)[-3:]
        if isinstance(block, specs.Residual):
            g = _digraph(key, rankdir="BT")
            _residual_block(g, block, in_shape)
        else:
            g = _digraph(key, rankdir="BT", nodesep="0.2")
            _concat_block(g, block, in_shape)
        return Diagram(g, key)
    spec = registry.get_spec(key, **kwargs)
    g = _digraph(spec.name)
    _network(g, spec, input_shape)
    return Diagram(g, spec.name)


# `d2lport.draw("inception")` reads as a function, but the package attribute `draw` is this
# module once imported (`import d2lport.draw`): calling the module calls draw(), as
# d2lport.compare does.
class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return draw(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
