"""qbench.util.progress: silent off a terminal, bars with ETA on one, and the arithmetic behind them."""

from __future__ import annotations

import io

import numpy as np
import pytest

from qbench.util import progress


@pytest.fixture(autouse=True)
def _reset():
    progress.configure()
    yield
    progress.close_all()
    progress.configure()


class _Session:
    def __init__(self):
        self.calls = 0
        self.input_names = ["x"]

    def infer(self, feeds):
        self.calls += 1
        return [feeds["x"]]


def _drive():
    """What a sweep does: nested tasks, counted sessions, log lines in between."""
    progress.echo("[qbench 00:00:00] variant 1/2: fp32")
    for _ in progress.iterate(["fp32", "minmax"], "variants", unit="variant", note=str):
        for _ in progress.iterate(iter(range(3)), "statistics 'default'", total=3, unit="batch"):
            pass
        with progress.task("evaluation", total=8, unit="text") as t:
            sess = progress.counted(_Session(), t, samples=True)
            sess.infer({"x": [1, 2, 3, 4]})
            sess.infer({"x": [5, 6, 7, 8]})
    progress.echo("[qbench 00:00:01] warning: variant minmax: something", important=True)
    progress.echo("[qbench 00:00:02] wrote reports/x")


def test_off_a_terminal_only_the_log_lines_are_printed(capsys, monkeypatch):
    def no_display(_stream):
        raise AssertionError("no bars off a terminal")

    monkeypatch.setattr(progress, "_Display", no_display)
    assert not progress.bars_wanted()  # pytest's captured stderr is no terminal
    _drive()
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    # The log lines, and the outer task's (a phase's) lines; nested tasks print none.
    assert [x for x in lines if "] variants: " not in x] == ["[qbench 00:00:00] variant 1/2: fp32",
                                                           "[qbench 00:00:01] warning: variant minmax: something",
                                                           "[qbench 00:00:02] wrote reports/x"]
    assert [x.split("] ", 1)[1].split(" · ")[0] for x in lines if "] variants: " in x] == [
        "variants: 2/2 variants", "variants: finished 2 variants in 0:00"]
    assert progress._open == []


def test_off_a_terminal_a_phase_prints_its_steps_with_what_is_left_and_its_end(capsys, monkeypatch):
    """A run piped to a file: a line per finished step of a phase (at most one every LINE_EVERY_S, the last
    always) with the estimate of what is left, and one when the phase ends; nested tasks print nothing."""
    now = [100.0]
    monkeypatch.setattr(progress, "_now", lambda: now[0])
    with progress.task("variants", total=3, unit="variant") as t:
        now[0] = 112.0
        t.advance()                                    # 12 s since the start: a line
        now[0] = 115.0
        with progress.task("evaluation", total=4, unit="text") as inner:
            inner.advance(4)                           # nested: no line
        t.advance()                                    # 3 s since the last line: none
        now[0] = 130.0
        t.advance()                                    # the last step: always a line
    progress.echo("[qbench 12:00:00] wrote reports/x")
    with progress.task("latency batch=1", total=10, unit="run"):
        now[0] = 131.0                                 # not counted (no bars): only its end
    lines = [x.split("] ", 1)[1] if x.startswith("[qbench ") else x for x in capsys.readouterr().err.splitlines()]
    assert lines == ["variants: 1/3 variants · eta 0:24 · 0:12 · 12.0 s/variant",
                     "variants: 3/3 variants · eta 0:00 · 0:30 · 10.0 s/variant",
                     "variants: finished 3 variants in 0:30",
                     "wrote reports/x",
                     "latency batch=1: finished in 0:01"]
    progress.configure(quiet=True)
    with progress.task("variants", total=1, unit="variant") as t:
        t.advance()
    assert capsys.readouterr().err == ""               # --quiet: none of them
    progress.configure()
    with progress.task("variants", total=2, unit="variant") as t:
        t.advance()
        progress.close_all()                           # an error ends the command: nothing "finished"
    with pytest.raises(KeyboardInterrupt):
        with progress.task("variants", total=2, unit="variant") as t:
            raise KeyboardInterrupt                    # nor does a phase an exception leaves
    assert capsys.readouterr().err == ""


def test_quiet_keeps_only_important_lines(capsys):
    progress.configure(quiet=True)
    assert not progress.bars_wanted()
    _drive()
    assert capsys.readouterr().err.splitlines() == ["[qbench 00:00:01] warning: variant minmax: something"]


def test_no_progress_and_a_dumb_terminal_turn_bars_off(monkeypatch):
    monkeypatch.setattr("sys.stderr", type("Tty", (io.StringIO,), {"isatty": lambda self: True})())
    monkeypatch.setenv("TERM", "xterm")
    assert progress.bars_wanted()
    progress.configure(bars=False)
    assert not progress.bars_wanted()
    progress.configure()
    monkeypatch.setenv("TERM", "dumb")
    assert not progress.bars_wanted()


def test_bars_on_a_terminal_show_rows_and_print_log_lines_above(capsys):
    screen = io.StringIO()
    progress.configure(stream=screen)
    sess = _Session()
    with progress.task("latency batch=1", total=4, unit="run") as t:
        assert progress._display is not None and t.shown
        counted = progress.counted(sess, t)
        assert counted is not sess and counted.input_names == ["x"]
        for _ in range(4):
            counted.infer({"x": [0]})
        assert t.completed == 4 and sess.calls == 4
        progress.echo("[qbench 00:00:00] a line")
    assert progress._display is None and not t.shown  # the last task took the bars down
    drawn = screen.getvalue()
    assert "[qbench 00:00:00] a line" in drawn
    assert capsys.readouterr().err == ""  # all of it went to the terminal's console


def test_counted_leaves_unobserved_sessions_alone():
    sess = _Session()
    with progress.task("latency batch=1", total=4, unit="run") as t:
        assert progress.counted(sess, t) is sess  # nothing in the timed path when nobody watches
    assert t.completed == 0


def test_iterate_closes_its_task_when_left_early():
    it = progress.iterate([1, 2, 3], "x")
    assert next(it) == 1 and len(progress._open) == 1
    it.close()
    assert progress._open == []
    with pytest.raises(ValueError):
        for x in progress.iterate([1, 2], "y"):
            raise ValueError(x)
    assert progress._open == []


def test_eta_rate_and_clock_arithmetic():
    assert progress.eta_seconds(0, 10, 5.0) is None        # nothing done: no rate yet
    assert progress.eta_seconds(3, None, 5.0) is None      # no total: no end
    assert progress.eta_seconds(2, 10, 4.0) == 16.0        # 2 s each, 8 to go
    assert progress.eta_seconds(12, 10, 4.0) == 0          # overshoot: done
    assert progress.rate_text(30, 2.0, "sample") == "15.0 samples/s"
    assert progress.rate_text(500, 2.0, "run") == "250 runs/s"
    assert progress.rate_text(2, 82.0, "variant") == "41.0 s/variant"
    assert progress.rate_text(0, 3.0, "batch") == ""
    assert progress.plural("batch") == "batches" and progress.plural("text") == "texts"
    assert [progress.clock(s) for s in (None, 0, 65, 3725)] == ["?", "0:00", "1:05", "1:02:05"]


def test_status_text_reads_the_task_clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress, "_now", lambda: now[0])
    t = progress.Task("variants", total=12, unit="variant", note="minmax+none+s8s8")
    assert t.status_text() == "0/12 variants · eta ? · 0:00 · minmax+none+s8s8"
    now[0] += 123.0
    t.advance(3)
    assert t.status_text() == "3/12 variants · eta 6:09 · 2:03 · 41.0 s/variant · minmax+none+s8s8"
    u = progress.Task("decoding", unit="sample")
    now[0] += 2.0
    u.advance(5)
    assert u.status_text() == "5 samples · 0:02 · 2.5 samples/s"


@pytest.mark.parametrize("warmup, runs, rounds", [(0, 1, 1), (1, 2, 2), (3, 5, 4)])
def test_the_latency_bars_total_is_what_interleaved_calls(warmup, runs, rounds):
    from qbench.backends.measure import calls_per_session, interleaved

    sessions = {"a": _Session(), "b": _Session()}
    interleaved(sessions, {"x": np.zeros((1, 1))}, warmup, runs, rounds)
    assert [s.calls for s in sessions.values()] == [calls_per_session(warmup, runs, rounds)] * 2
