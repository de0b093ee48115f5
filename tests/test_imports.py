"""Imports point one way (DESIGN.md): no two files of src/duogen import each other, even lazily, the training
recipes never import the bridge API, and only the CLI imports the demo.

Every `import` statement counts, top-level or inside a function (a lazy import hides a loop from the
interpreter, not from the reader). The check reads the source with `ast`; nothing is imported. The last test
imports what scripts/ and bench/ name from duogen, to find names that have moved.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def import_graph(src: Path) -> dict[str, set[str]]:
    """{module: modules of the same tree it imports}, e.g. "duogen.eval.report" -> {"duogen.eval.files", ...}.

    `from pkg import name` counts as importing the module `pkg.name` when that is a file, else `pkg`;
    a package's `__init__` is not counted as imported by its own submodules.
    """
    files = {p: ".".join(p.relative_to(src).with_suffix("").parts) for p in src.rglob("*.py")}
    mods = {m.removesuffix(".__init__"): p for p, m in files.items()}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        is_pkg = p.name == "__init__.py"
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = m.split(".") if is_pkg else m.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != m and not (mods[name].name == "__init__.py" and m.startswith(name + ".")):
                    edges[m].add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round a loop (Tarjan's SCCs of size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def rule_breaks(edges: dict[str, set[str]]) -> list[str]:
    """Imports DESIGN.md forbids: train/ -> bridges/, anything but the CLI -> the demo."""
    bad = []
    for m, targets in sorted(edges.items()):
        for t in sorted(targets):
            if m.startswith("duogen.train.") and (t == "duogen.bridges" or t.startswith("duogen.bridges.")):
                bad.append(f"{m} -> {t} (training recipes do not import the bridge API)")
            if t == "duogen.demo" and m != "duogen.cli":
                bad.append(f"{m} -> {t} (only the CLI imports the demo)")
    return bad


def test_duogen_imports_point_one_way():
    edges = import_graph(SRC)
    assert "duogen.bridges.generate" in edges and edges["duogen.demo"], "the import graph did not read src/duogen"
    assert cycles(edges) == []
    assert rule_breaks(edges) == []


def test_the_check_finds_lazy_loops_and_forbidden_imports(tmp_path):
    """The checker itself: a loop through a function-level import, a recipe importing bridges, a library
    module importing the demo, and the one allowed demo import (the CLI)."""
    pkg = tmp_path / "duogen"
    for d in ("", "eval", "train", "bridges"):
        (pkg / d).mkdir(exist_ok=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "eval" / "compare.py").write_text("from . import metrics\n\ndef f():\n    from .report import g\n")
    (pkg / "eval" / "report.py").write_text("from .compare import f\n")
    (pkg / "eval" / "metrics.py").write_text("import numpy\n")
    (pkg / "train" / "recipe.py").write_text("def main():\n    from ..bridges.generate import load_codec\n")
    (pkg / "bridges" / "generate.py").write_text("from ..eval import metrics\n")
    (pkg / "demo.py").write_text("from .eval.compare import f\n")
    (pkg / "cli.py").write_text("def demo():\n    from .demo import run\n")
    (pkg / "eval" / "probes.py").write_text("import duogen.demo\n")
    edges = import_graph(tmp_path)
    assert cycles(edges) == [["duogen.eval.compare", "duogen.eval.report"]]
    assert rule_breaks(edges) == [
        "duogen.eval.probes -> duogen.demo (only the CLI imports the demo)",
        "duogen.train.recipe -> duogen.bridges.generate (training recipes do not import the bridge API)",
    ]


def test_scripts_and_benches_import_names_that_exist():
    """Every `from duogen... import NAME` in scripts/ and bench/, lazy ones included, names something the module has:
    a moved function otherwise surfaces only at the end of a long run (scripts/train_references.py once imported
    `headline` from the demo after it had moved to eval/compare, and failed after an hour of training)."""
    import importlib
    import importlib.util

    missing = []
    for p in sorted([*(SRC.parent / "scripts").glob("*.py"), *(SRC.parent / "bench").glob("*.py")]):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "duogen":
                mod = importlib.import_module(node.module)
                for a in node.names:
                    submodule = hasattr(mod, "__path__") and importlib.util.find_spec(f"{node.module}.{a.name}")
                    if not hasattr(mod, a.name) and not submodule:
                        missing.append(f"{p.name}: {node.module}.{a.name}")
    assert not missing, missing
