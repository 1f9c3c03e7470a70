"""Named pipelines for ``--recipe``: they live in ``genzip.recipes`` (the Python API and
config files expand them too); this path stays for the command lines that import it."""

from __future__ import annotations

from genzip.recipes import RECIPES, expand_recipe, recipe_parameters

__all__ = ["RECIPES", "expand_recipe", "recipe_parameters"]
