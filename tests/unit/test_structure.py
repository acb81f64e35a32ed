"""The layout's rules, checked on the source: imports of qbench/ and calibrators/ form no cycle, no module is over
450 lines, the runner and the report name no task, and ``import qbench`` / ``qbench --help`` import no heavy
runtime (onnxruntime, TensorRT, torch, datasets)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 450
HEAVY = ("onnxruntime", "tensorrt", "tensorrt_rtx_bindings", "torch", "datasets", "transformers")


def modules(root: Path, bases=("qbench", "calibrators")) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``bases`` (a package is its __init__)."""
    out = {}
    for base in bases:
        for p in (root / base).rglob("*.py"):
            parts = p.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


def import_graph(root: Path, bases=("qbench", "calibrators")) -> dict[str, set[str]]:
    """module -> the modules of ``bases`` it imports anywhere in its body (inside functions and TYPE_CHECKING too:
    a deferred import is still a dependency). ``from pkg import name`` counts as pkg.name where that is a module."""
    mods = modules(root, bases)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    edges[m].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    """The checker itself: a three-module loop through a deferred import and a relative import is found, and
    the module outside it is not reported."""
    pkg = tmp_path / "qbench" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "qbench" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from qbench.sub import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("import qbench.sub.a\n")
    (pkg / "d.py").write_text("from qbench.sub.a import x\n")
    assert cycles(import_graph(tmp_path, ("qbench",))) == [["qbench.sub.a", "qbench.sub.b", "qbench.sub.c"]]
    (pkg / "c.py").write_text("import json\n")
    assert cycles(import_graph(tmp_path, ("qbench",))) == []


def test_no_import_cycle_in_qbench_and_calibrators():
    edges = import_graph(ROOT)
    assert len(edges) > 60 and "qbench.run.sweep" in edges["qbench.cli"]  # the graph really is the project's
    assert cycles(edges) == []


def test_backends_know_nothing_of_sweeps():
    edges = import_graph(ROOT)
    for m, deps in edges.items():
        if m.startswith("qbench.backends"):
            assert not {d for d in deps if d.startswith(("qbench.run", "qbench.tasks", "qbench.report"))}, m


def test_no_module_over_the_line_limit():
    sizes = {m: len(p.read_text().splitlines()) for m, p in modules(ROOT).items()}
    assert max(sizes.values()) > 100  # counted, not empty
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


# The verdict functions of report/render.py belong to the release decision, which is rewritten on its own;
# task_of's default names the task of runs made before tasks were recorded.
_TASK_NAMES_ALLOWED = {("qbench/report/render.py", "_verdict_metric"), ("qbench/report/render.py", "verdict"),
                       ("qbench/report/render.py", "_verdict_numbers"), ("qbench/report/tables.py", "task_of")}


def task_names_in_code(path: Path, rel: str) -> list[str]:
    """'file:line' of every string constant naming a built-in task, outside docstrings and allowed functions."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(n) is not None}
    allowed = {id(c) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and (rel, n.name) in _TASK_NAMES_ALLOWED
               for c in ast.walk(n)}
    return [f"{rel}:{n.lineno}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs | allowed
            and any(w in n.value for w in ("translation", "retrieval"))]


def test_the_runner_search_executors_and_report_name_no_task():
    files = sorted(ROOT.glob("qbench/run/*.py")) + sorted(ROOT.glob("qbench/report/*.py"))
    assert any(f.name == "search.py" for f in files) and any(f.name == "executors.py" for f in files)
    found = [hit for f in files for hit in task_names_in_code(f, f.relative_to(ROOT).as_posix())]
    assert found == []


def test_task_name_finder_sees_a_named_task(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""A docstring may say translation."""\ndef g(cfg):\n    return cfg.task == "translation"\n')
    assert task_names_in_code(f, "m.py") == ["m.py:3"]


@pytest.mark.parametrize("code", [
    "import qbench",
    "import sys; sys.argv = ['qbench', '--help']\nfrom qbench.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
    "import sys; sys.argv = ['qbench', 'sweep', '--help']\nfrom qbench.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
])
def test_import_and_help_load_no_heavy_runtime(code):
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_the_heavy_import_probe_sees_an_import():
    probe = "import qbench, numpy.linalg, json\nimport sys\nprint(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "['numpy']"
