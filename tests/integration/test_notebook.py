"""notebooks/pareto.ipynb executed with nbclient, as CI runs it: against a real translation run made here
(the project's multilingual Marian, 28 languages, 2 sentences each: tests/conftest.py's small_mt_run) plus a committed example, and on
its defaults (the committed django-multi examples). The figures must exist and the front it writes must be
the one qbench.report.results computes directly; the committed file must carry no outputs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "pareto.ipynb"
FIGURES = ["pareto_overall.png", "pareto_languages.png", "lang_heatmap.png"]
CELL_TIMEOUT_S = 240


def _kernel_manager(tmp: Path):
    """A kernel on this very interpreter: a private kernelspec whose argv is sys.executable, so neither an
    installed 'python3' kernelspec nor another environment's ipykernel can be picked up."""
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = tmp / "kernels" / "qbench-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "qbench test", "language": "python"}))
    return KernelManager(kernel_name="qbench-test",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp / "kernels")]))


def _execute(tmp: Path, runs: str | None, out: Path):
    """Run the notebook from notebooks/ (as Jupyter does); returns the executed notebook."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # MPLBACKEND left unset: the kernel draws with the inline backend, as in Jupyter
    env = {k: v for k, v in os.environ.items() if k not in ("QBENCH_RUNS", "QBENCH_NOTEBOOK_OUT", "MPLBACKEND")}
    # the checkout under test first, whatever qbench the interpreter has installed
    path = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update({"QBENCH_NOTEBOOK_OUT": str(out), "PYTHONPATH": path})
    if runs is not None:
        env["QBENCH_RUNS"] = runs
    km = _kernel_manager(tmp)
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    # cleanup_kc: nbclient shuts down only kernels it created itself, and this one it was handed; left
    # running, each kernel (300 MB) lived on until the end of the test session
    client.execute(env=env, cleanup_kc=True)  # raises CellExecutionError on the first cell that fails
    assert not km.is_alive()
    return nb


def _errors(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _check_outputs(nb, out: Path, runs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    from qbench.report.results import front_table, frontier, load_many

    assert _errors(nb) == []
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code")
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    assert len(shown) == len(FIGURES)  # each figure drawn inline once
    for name in FIGURES:
        png = out / name
        assert png.is_file() and png.stat().st_size > 5000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df, _ = load_many(runs)
    want = front_table(frontier(df))
    want_lang = front_table(frontier(df, slices="lang", batch="min"))
    got = pd.read_csv(out / "front.csv")
    got_lang = pd.read_csv(out / "lang_front.csv")
    pd.testing.assert_frame_equal(got, want, check_dtype=False, check_exact=True)
    pd.testing.assert_frame_equal(got_lang, want_lang, check_dtype=False, check_exact=True)
    return df, got


def _brute_force_front(df, batch: int) -> set[tuple[str, str]]:
    """(run, variant) of the overall bleu-vs-p50 front at one batch size, straight from the raw rows."""
    ok = df[df.status == "ok"]
    q = {(r.run, r.variant): r.value for r in ok[(ok.metric == "bleu") & (ok.slice == "all")].itertuples()}
    lat = {(r.run, r.variant): r.value for r in ok[(ok.metric == "latency_p50_ms")
                                                   & (ok.slice == f"batch={batch}")].itertuples()}
    pts = {k: (lat[k], q[k]) for k in q if k in lat}
    return {k for k, (x, y) in pts.items()
            if not any(x2 <= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in pts.values())}


def test_notebook_on_a_run_made_here(small_mt_run, tmp_path):
    mt_run = small_mt_run
    committed = ROOT / "reports" / "example-django-multi"
    out = tmp_path / "out"
    nb = _execute(tmp_path, os.pathsep.join([str(mt_run), str(committed)]), out)
    df, front = _check_outputs(nb, out, [mt_run, committed])
    assert set(df.run) == {"small-mt", "django-multi"}
    # the run made here: 28 languages, both batch sizes; its batch-8 panel is its own front
    assert len([s for s in df[df.run == "small-mt"].slice.unique() if s.startswith("lang=")]) == 28
    for b in (1, 8, 28):
        assert set(zip(front[front.batch == b].run, front[front.batch == b].variant)) == _brute_force_front(df, b)
    assert set(front.batch) == {1, 8, 28}
    lang_front = pd.read_csv(out / "lang_front.csv")
    assert set(lang_front.batch) == {1} and lang_front.slice.nunique() == 28  # every language has a front


def test_notebook_defaults_are_the_committed_examples(tmp_path):
    out = tmp_path / "out"
    nb = _execute(tmp_path, None, out)
    runs = [ROOT / "reports" / "example-django-multi", ROOT / "reports" / "example-django-multi-auto"]
    _, front = _check_outputs(nb, out, runs)
    assert set(front.run) <= {"django-multi", "django-multi-auto"} and set(front.batch) == {1, 28}


def test_committed_notebook_is_stripped_and_holds_no_logic():
    nbformat = pytest.importorskip("nbformat")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert code[0].metadata.get("tags") == ["parameters"]
    # calls only: shaping belongs in qbench.report.results, where it is tested
    for c in code:
        for line in c.source.splitlines():
            words = line.split()
            assert not words or words[0] not in ("def", "for", "while", "if", "class", "with", "try:", "lambda"), line
            assert "lambda" not in words and ".groupby(" not in line and ".loc[" not in line, line
