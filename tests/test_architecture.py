"The package's layout (issue 13): layers import downwards only, no module grows into a hall, imports sit at the top."
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cardiac_dreamer"
MAX_LINES = 650  # "no module over ~600 lines"


def _library_notebooks() -> list:
    "(notebook, module) for every numbered notebook that exports a module, in notebook order."
    out = []
    for nb in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        src = "".join(cells[0]["source"]) if cells else ""
        m = re.match(r"#\|\s*default_exp\s+(\w+)", src)
        if m: out.append((nb.name, m[1]))
    return out


def _imported_modules(path:Path) -> set:
    "Modules of the package a module imports (relative `from .x import` and absolute `cardiac_dreamer.x`)."
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: found.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("cardiac_dreamer."): found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cardiac_dreamer.")}
    return found


def test_every_module_has_one_notebook():
    mods = [m for _, m in _library_notebooks()]
    assert len(mods) == len(set(mods))
    exported = {p.stem for p in PKG.glob("*.py")} - {"__init__", "_modidx"}
    assert exported == set(mods), exported ^ set(mods)


def test_layers_import_downwards_only():
    "A module imports only modules whose notebook comes earlier: the notebooks read (and run) top to bottom."
    order = {m: i for i, (_, m) in enumerate(_library_notebooks())}
    bad = [(m, d) for m, i in order.items() for d in _imported_modules(PKG / f"{m}.py") if d in order and order[d] >= i]
    assert not bad, f"upward imports (module, imported): {bad}"


@pytest.mark.parametrize("module", sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "_modidx")))
def test_module_size(module):
    n = len((PKG / f"{module}.py").read_text().splitlines())
    assert n <= MAX_LINES, f"cardiac_dreamer/{module}.py has {n} lines: split it by job (see CONTRIBUTING.md)"


def test_imports_inside_functions_are_explained():
    "An import inside a function is allowed only where it keeps a heavy import out of start-up, and says so in a comment."
    bad = []
    for path in sorted(PKG.glob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): continue
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    text = lines[sub.lineno - 1]
                    if "#" not in text and "#" not in lines[sub.lineno - 2]:
                        bad.append(f"{path.name}:{sub.lineno}: {text.strip()}")
    assert not bad, "imports inside functions without a comment saying why:\n" + "\n".join(bad)


def test_cli_starts_without_torch():
    "`cardiac-dreamer --help` must not import torch (issue 18: --help under a second)."
    import subprocess, sys
    code = "import sys, cardiac_dreamer.cli as c; c.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
