"""Recorded training runs: the recipes, the record of a run, ``make results``.

``from d2lport import results``; ``results.run_recipe("googlenet", "torch")`` trains the
recipe and writes ``results/googlenet-torch.json``; ``results.train(model, framework, ...,
record=path)`` records any run; ``results.load_all()`` reads the committed records (what the
chapters show).  Imports no framework until a run starts.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from .recipes import (BOOK_RECIPES, CPU_RECIPES, PROFILE_ENV, PROFILES, Recipe, get, profile,
                      recipes)
from .record import (RecordError, code_changed, internal_problems, load, path_for, staleness,
                     summarize)
from .train import run_recipe, train


def load_all(names: Optional[Sequence[str]] = None, frameworks: Optional[Sequence[str]] = None,
             directory=None) -> Dict[str, Dict[str, dict]]:
    """``{recipe: {framework: record}}`` for the records that exist (missing ones left out)."""
    from .. import registry
    out: Dict[str, Dict[str, dict]] = {}
    for name, recipe in recipes("cpu").items():
        if names is not None and name not in names:
            continue
        for fw in frameworks or registry.FRAMEWORKS:
            path = path_for(recipe.run_name(fw), directory)
            if path.exists():
                out.setdefault(name, {})[fw] = load(path)
    return out


__all__ = ["Recipe", "CPU_RECIPES", "BOOK_RECIPES", "PROFILE_ENV", "PROFILES", "profile",
           "recipes", "get", "RecordError", "load", "load_all", "path_for", "staleness",
           "internal_problems", "code_changed", "summarize", "train", "run_recipe"]
