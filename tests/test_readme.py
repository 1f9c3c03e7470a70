"""The README documents everything a user can type: every pass, recipe and subcommand."""

from __future__ import annotations

import os
import re

import pytest

from genzip.passes.infra.registry import pass_names
from genzip.tools.genzip_cli import SUBCOMMANDS
from genzip.tools.recipes import RECIPES

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def readme() -> str:
    with open(README) as f:
        return f.read()


def test_every_pass_has_a_table_row(readme):
    rows = set(re.findall(r"^\| `([a-z0-9-]+)", readme, flags=re.M))
    assert [n for n in pass_names() if n not in rows] == []


def test_every_recipe_is_in_the_recipes_table(readme):
    for name, (spec, _) in RECIPES.items():
        assert f"| `{name}` | `{spec}` |" in readme, name


def test_every_subcommand_is_in_the_cli_reference(readme):
    assert [c for c in SUBCOMMANDS if f"`genzip {c}" not in readme] == []


def test_the_two_commands_and_no_placeholders(readme):
    quick = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert "pip install torch==2.13.0" in quick and "genzip-compile tiny-pixart --target ort" in quick
    assert "genzip bench" in quick
    test_cmd = readme.split("<!-- readme-test-command -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert "pip install -e" in test_cmd and "pytest" in test_cmd
    assert not re.search(r"[A-Z_]+_PLACEHOLDER|RECIPES_TABLE", readme)
