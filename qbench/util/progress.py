"""Progress bars with rate and ETA for qbench's long loops: on stderr, and only on a terminal.

    from qbench.util import progress

    with progress.task("statistics 'default'", total=16, unit="batch") as t:
        for batch in batches:
            ...
            t.advance()                       # or t.advance(len(batch))

    for v in progress.iterate(variants, "variants", unit="variant", note=lambda v: v.id):
        ...                                   # advances when the next item is asked for

    progress.echo("[qbench 12:00:00] a log line")   # printed above the bars while they show

Bars show when stderr is a terminal (and TERM is not ``dumb``), unless ``configure(bars=False)``
(``qbench sweep --no-progress``). Anywhere else (CI, pipes, pytest) it never imports rich and prints,
besides the log lines, one timestamped line per finished phase (a task no other task encloses: the
variants, the TensorRT builds, a latency batch size) with its elapsed time, and, while such a phase runs,
a line per finished step (at most one every ``LINE_EVERY_S``) with the estimate of what is left, so a run
piped to a file still shows how far it got. ``configure(quiet=True)`` (``--quiet``) turns the bars and
those lines off and drops every echo line not marked important (warnings, failures).

Tasks nest: each open task is one row; a row goes away when its task ends, and the bars vanish when
the last one does, so what stays on screen is the log. Rate and ETA are the task's own average since it
started (``eta_seconds``), not a moving window: a variant or a calibration batch can take minutes, and
a window would often hold no sample at all. ``advance`` is a plain integer increment that rich's refresh
thread reads, so counting costs nothing measurable. ``counted`` counts a session's ``infer`` calls only
while its task is on screen: unobserved latency runs are exactly what they were without this module.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator

_bars: bool | None = None   # None: on when stderr is a terminal
_quiet = False
_stream = None              # tests: draw the bars on this file, as if it were a terminal
_display = None             # the live rich display, while a task is open and bars are on
_open: list[Task] = []

_now = time.monotonic       # the clock of every task (tests replace it)
LINE_EVERY_S = 10.0         # off a terminal: a phase's step lines, at most one this often (its last one always)


def configure(bars: bool | None = None, quiet: bool = False, stream=None) -> None:
    """``bars``: None = when stderr is a terminal, True = always, False = never. ``quiet``: no bars, and
    only important echo lines. ``stream``: draw on this file instead of stderr (treated as a terminal)."""
    global _bars, _quiet, _stream
    _bars, _quiet, _stream = bars, quiet, stream


def bars_wanted() -> bool:
    if _quiet or _bars is False:
        return False
    if _bars is True or _stream is not None:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


# ---------------------------------------------------------------------------------------------- arithmetic


def plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s") if unit else ""


def eta_seconds(completed: float, total: float | None, elapsed: float) -> float | None:
    """Seconds left at the average rate so far; None while unknown (no total, nothing done yet)."""
    if total is None or completed <= 0 or elapsed <= 0:
        return None
    return max(total - completed, 0) * elapsed / completed


def clock(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def rate_text(completed: float, elapsed: float, unit: str) -> str:
    """``12.5 samples/s``, or ``41.0 s/variant`` when one takes longer than a second; empty before any."""
    if completed <= 0 or elapsed <= 0:
        return ""
    speed = completed / elapsed
    if speed >= 1:
        return f"{speed:.0f} {plural(unit)}/s" if speed >= 100 else f"{speed:.1f} {plural(unit)}/s"
    return f"{1 / speed:.1f} s/{unit}"


# ---------------------------------------------------------------------------------------------- tasks


class Task:
    """One counted loop. ``total`` None: no bar length and no ETA. ``note``: free text after the numbers
    (the item at hand). Both may change while the task runs."""

    def __init__(self, description: str, total: int | None = None, unit: str = "item", note: str = ""):
        self.description = description
        self.total = total
        self.unit = unit
        self.note = note
        self.completed = 0
        self.started = _now()
        self.shown = False  # a row on screen
        self.lined = self.started  # off a terminal: when its last step line was printed

    def advance(self, n: int = 1) -> None:
        self.completed += n
        if _lines_wanted(self) and self.total is not None and (
                self.completed >= self.total or _now() - self.lined >= LINE_EVERY_S):
            self.lined = _now()
            echo(_stamp(f"{self.description}: {self.status_text()}"))

    def elapsed(self) -> float:
        return _now() - self.started

    def status_text(self) -> str:
        """``3/12 variants · eta 6:09 · 2:03 · 41.0 s/variant · <note>``: the most wanted first, since a
        narrow terminal cuts the end."""
        elapsed = self.elapsed()
        done = f"{self.completed}/{self.total}" if self.total is not None else f"{self.completed}"
        parts = [f"{done} {plural(self.unit)}"]
        if self.total is not None:
            parts.append("eta " + clock(eta_seconds(self.completed, self.total, elapsed)))
        parts += [clock(elapsed), rate_text(self.completed, elapsed, self.unit), self.note]
        return " · ".join(p for p in parts if p)


@contextlib.contextmanager
def task(description: str, total: int | None = None, unit: str = "item", note: str = "") -> Iterator[Task]:
    t = Task(description, total, unit, note)
    _start(t)
    finished = False
    try:
        yield t
        finished = True  # not on an exception or an interrupt: no "finished" line then
    finally:
        _end(t, finished)


def iterate(items: Iterable, description: str, total: int | None = None, unit: str = "item",
            note: Callable[[object], str] | None = None) -> Iterator:
    """``items``, counted: one step each time the next item is asked for (so a step is a finished item).
    The task opens at the first item, and closes when the items run out or the iterator is dropped."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(description, total, unit) as t:
        for x in items:
            if note is not None:
                t.note = note(x)
            yield x
            t.advance()


def echo(line: str, important: bool = False) -> None:
    """A log line on stderr (above the bars while they show). ``quiet`` keeps only important ones."""
    if _quiet and not important:
        return
    if _display is not None:
        _display.print(line)
    else:
        print(line, file=sys.stderr, flush=True)


def counted(session, t: Task, samples: bool = False):
    """``session`` with every ``infer(feeds)`` call counted on ``t``: 1 per call, or the batch's rows with
    ``samples``. The session itself when ``t`` is not on screen."""
    return _Counted(session, t, samples) if t.shown else session


class _Counted:
    def __init__(self, session, t: Task, samples: bool):
        self._session, self._task, self._samples = session, t, samples

    def infer(self, feeds):
        out = self._session.infer(feeds)
        self._task.completed += len(next(iter(feeds.values()))) if self._samples else 1
        return out

    def __getattr__(self, name):
        return getattr(self._session, name)


def close_all() -> None:
    """End every open task and take the bars down (the command is ending, maybe on an error: no task
    finished, so no "finished" line)."""
    for t in list(_open):
        _end(t)


def _start(t: Task) -> None:
    global _display
    if _display is None and not _open and bars_wanted():
        try:
            _display = _Display(_stream)
        except ImportError:  # rich missing: no bars, the log goes on as before
            _display = None
    _open.append(t)
    if _display is not None:
        _display.add(t)


def _lines_wanted(t: Task) -> bool:
    """Off a terminal (no bars drawn), not quiet, and ``t`` is a phase: no open task encloses it."""
    return _display is None and not _quiet and bool(_open) and _open[0] is t and not bars_wanted()


def _stamp(line: str) -> str:
    return f"[qbench {time.strftime('%H:%M:%S')}] {line}"  # the sweep's log-line format


def _end(t: Task, finished: bool = False) -> None:
    global _display
    if t not in _open:
        return
    if finished and _lines_wanted(t):
        done = f"{t.completed} {plural(t.unit) if t.completed != 1 else t.unit} " if t.completed else ""
        echo(_stamp(f"{t.description}: finished {done}in {clock(t.elapsed())}"))
    _open.remove(t)
    if _display is not None:
        _display.remove(t)
        if not _open:
            d, _display = _display, None
            d.stop()


class _Display:
    """A transient rich Progress on stderr whose columns read the Task objects themselves."""

    def __init__(self, stream):
        from rich.console import Console
        from rich.progress import Progress, ProgressColumn
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        class Column(ProgressColumn):
            def __init__(self, what: str):
                super().__init__()
                self.what = what

            def render(self, task):
                q: Task = task.fields["q"]
                if self.what == "bar":
                    return ProgressBar(total=max(q.total or 1, 1), completed=min(q.completed, q.total or 0),
                                       width=20, pulse=q.total is None, animation_time=task.get_time())
                if self.what == "label":
                    return Text(q.description, style="bold", no_wrap=True, overflow="ellipsis")
                return Text(q.status_text(), style="dim", no_wrap=True, overflow="ellipsis")  # one line per task

        console = (Console(file=stream, force_terminal=True, width=120) if stream is not None
                   else Console(stderr=True, force_terminal=True if _bars else None))
        # stdout stays untouched (a sweep prints its run directory there); stderr (warnings, tracebacks)
        # is drawn above the bars.
        self.progress = Progress(Column("label"), Column("bar"), Column("stats"), console=console,
                                 transient=True, redirect_stdout=False, redirect_stderr=True,
                                 refresh_per_second=4)
        self.ids: dict[int, int] = {}
        self.progress.start()

    def add(self, t: Task) -> None:
        self.ids[id(t)] = self.progress.add_task(t.description, total=None, q=t)
        t.shown = True

    def remove(self, t: Task) -> None:
        t.shown = False
        self.progress.remove_task(self.ids.pop(id(t)))

    def print(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def stop(self) -> None:
        self.progress.stop()
