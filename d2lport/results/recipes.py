"""The recipes of the recorded runs: one per network a chapter trains, shared by every
framework (``make results`` runs each in each framework; the chapters show the records).

The numbers of every recorded run are typed here and nowhere else.  Two profiles:

* ``cpu`` (the default, what ``make results`` records and what a reader's notebook runs):
  fitted to about four hours for the whole set on a 2-core CPU.  Adam at lr 0.001 and batch
  128 as Dive-into-DL-PyTorch trains GoogLeNet at 96 px (0.831 test accuracy after one epoch,
  0.853 after two), a few epochs, and the narrow VGG at 64 px instead of 224.
* ``book`` (``D2LPORT_PROFILE=book``, for a GPU): D2L 1.0's own settings, SGD at lr 0.01 for
  10 epochs with the book's image sizes.

Both start from the same canonical initial weights in every framework: Xavier-uniform
kernels (D2L 1.0's ``init_cnn``), zero biases, BatchNorm at gamma 1, beta 0, drawn by numpy
from the recipe's seed (:func:`d2lport.results.init.initial_weights`) and loaded into each
framework by name.  The data order is d2lport's seeded order, the same in every framework.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, Optional, Tuple

PROFILE_ENV = "D2LPORT_PROFILE"
PROFILES = ("cpu", "book")


@dataclass(frozen=True)
class Recipe:
    """How one network is trained: the model (a registered name and its keyword
    arguments), the image side, and the optimisation settings."""
    name: str
    model: str
    model_kwargs: Dict[str, object] = field(default_factory=dict)
    resize: int = 28
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 0.001
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    init: str = "xavier"
    why: str = ""            # one line for the chapter: why these settings

    def settings(self) -> Dict[str, object]:
        """The training settings (what :func:`d2lport.results.train` takes)."""
        return dict(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer,
                    lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                    resize=self.resize, limit=None, seed=self.seed, init=self.init)

    def digest(self) -> str:
        """SHA-256 of what decides the run (not the ``why``): a record made under another
        digest is stale."""
        return settings_digest(self.model, self.model_kwargs, self.settings())

    def spec_kwargs(self) -> Dict[str, object]:
        """The model's keyword arguments fitted to Fashion-MNIST at the recipe's side (an
        ``image_size`` in ``model_kwargs`` is that side)."""
        from .. import registry
        kwargs = {k: v for k, v in self.model_kwargs.items() if k != "image_size"}
        return registry.kwargs_for_data(self.model, self.resize, **kwargs)[0]

    def spec(self):
        """The framework-free spec of the network this recipe trains."""
        from .. import registry
        return registry.get_spec(self.model, **self.spec_kwargs())

    def run_name(self, framework: str) -> str:
        return f"{self.name}-{framework}"


def settings_digest(model: str, model_kwargs: Dict[str, object], settings: Dict[str, object]) -> str:
    text = json.dumps({"model": model, "model_kwargs": model_kwargs, "settings": settings},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


_VGG64 = {"image_size": 64}
# The CPU recipes, in the order `make results` runs them (cheapest first, so that an
# interrupted run has finished the most records).
CPU_RECIPES: Tuple[Recipe, ...] = (
    Recipe("residual_net", "residual_net", epochs=5,
           why="the lecture's residual net: 28 px, 5 epochs of Adam (about a minute each)"),
    Recipe("inception_a_net", "inception_a_net", epochs=5,
           why="the lecture's InceptionA net: 28 px, 5 epochs of Adam"),
    Recipe("googlenet", "googlenet", resize=96, epochs=2,
           why="the book's 96 px; two epochs of Adam at lr 0.001 (Dive-into-DL-PyTorch: "
               "0.853 after two), 12 to 16 minutes an epoch on 2 cores"),
    Recipe("vgg_d2l", "vgg_d2l", dict(_VGG64), resize=64, epochs=2,
           why="64 px instead of the book's 224 (13x fewer FLOPs; the first dense layer "
               "sees 2x2x128 features instead of 7x7x128, so it has far fewer "
               "parameters); two epochs of Adam"),
    Recipe("vgg_d2l_bn", "vgg_d2l", dict(_VGG64, batch_norm=True), resize=64, epochs=2,
           why="the same as vgg_d2l with BatchNorm after every convolution, same settings"),
    Recipe("googlenet_v1", "googlenet_v1", dict(image_size=96),
           resize=96, epochs=1,
           why="the 2014 paper's net at 96 px like the book's variant (224 px is 5x the "
               "FLOPs; 65 px is its smallest input, where the auxiliary heads' 5x5 pooling "
               "still fits); one epoch of Adam, with the heads weighted 0.3"),
)

# D2L 1.0's settings (SGD at lr 0.01, 10 epochs, batch 128, Xavier) at the book's sizes;
# the lecture nets as the lecture trains them (SGD lr 0.01, momentum 0.5, batch 64).
BOOK_RECIPES: Tuple[Recipe, ...] = (
    Recipe("residual_net", "residual_net", epochs=10, batch_size=64, optimizer="sgd", lr=0.01,
           momentum=0.5, why="the lecture's settings"),
    Recipe("inception_a_net", "inception_a_net", epochs=10, batch_size=64, optimizer="sgd",
           lr=0.01, momentum=0.5, why="the lecture's settings"),
    Recipe("googlenet", "googlenet", resize=96, epochs=10, optimizer="sgd", lr=0.01,
           why="D2L 1.0: GoogleNet(lr=0.01), 10 epochs, 96 px"),
    Recipe("vgg_d2l", "vgg_d2l", resize=224, epochs=10, optimizer="sgd", lr=0.01,
           why="D2L 1.0: VGG(arch=..., lr=0.01), 10 epochs, 224 px"),
    Recipe("vgg_d2l_bn", "vgg_d2l", {"batch_norm": True}, resize=224, epochs=10,
           optimizer="sgd", lr=0.01, why="D2L 1.0's VGG settings, with BatchNorm"),
    Recipe("googlenet_v1", "googlenet_v1", dict(image_size=224),
           resize=224, epochs=10, optimizer="sgd", lr=0.01, momentum=0.9,
           why="the paper's 224 px and momentum 0.9, D2L's lr 0.01 and 10 epochs"),
)

_BY_PROFILE = {"cpu": CPU_RECIPES, "book": BOOK_RECIPES}


def profile() -> str:
    """``D2LPORT_PROFILE`` (``cpu`` when unset); an unknown one is an error naming both."""
    value = os.environ.get(PROFILE_ENV, "").strip().lower() or "cpu"
    if value not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={value!r} is not a profile: use "
                         f"{' or '.join(PROFILES)} (or unset it for cpu)")
    return value


def recipes(which: Optional[str] = None) -> Dict[str, Recipe]:
    """name -> Recipe of a profile (default: :func:`profile`)."""
    which = which or profile()
    if which not in _BY_PROFILE:
        raise ValueError(f"unknown profile {which!r}: use {' or '.join(PROFILES)}")
    return {r.name: r for r in _BY_PROFILE[which]}


def get(name: str, which: str = "cpu") -> Recipe:
    table = recipes(which)
    if name not in table:
        raise ValueError(f"no recipe named {name!r}: the {which} recipes are "
                         f"{', '.join(table)}")
    return table[name]


def as_dict(recipe: Recipe) -> dict:
    return asdict(recipe)


__all__ = ["Recipe", "CPU_RECIPES", "BOOK_RECIPES", "PROFILE_ENV", "PROFILES", "profile",
           "recipes", "get", "settings_digest", "as_dict", "replace"]
