"""The layering the README states is the import graph: import-linter's contracts
(pyproject.toml) hold and no two genzip modules import each other, even through
function-level imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

from layout import ROOT, stage

_CYCLES = textwrap.dedent('''
    import sys
    import grimp
    graph = grimp.build_graph("genzip", include_external_packages=False)
    sys.setrecursionlimit(20000)
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    print(len(graph.modules))
    for c in cycles:
        print(" <-> ".join(c))
''')


def _staged(tmp_path) -> dict[str, str]:
    stage(str(tmp_path))
    return dict(os.environ, PYTHONPATH=str(tmp_path))


def test_import_contracts_hold(tmp_path):
    env = _staged(tmp_path)
    lint = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    result = subprocess.run([lint, os.path.join(ROOT, "pyproject.toml"), "--no-cache"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_import_cycles_between_genzip_modules(tmp_path):
    env = _staged(tmp_path)
    result = subprocess.run([sys.executable, "-c", _CYCLES], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    count, *cycles = result.stdout.strip().splitlines()
    assert int(count) > 100  # the whole package was found, not just its root folder
    assert cycles == []


def test_the_code_is_clean_under_ruff():
    ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
    result = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", ROOT], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
