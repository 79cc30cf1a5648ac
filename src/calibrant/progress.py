"""Progress of long work: tqdm bars on a terminal, a few plain lines in logs.

:class:`Progress` is a :class:`calibrant.engine.Callback`. The command line gives it to
:func:`calibrant.experiment.train_run` (training steps, validation, the test evaluation) and to
:func:`calibrant.bench.run_suite` (runs done of all, the current run).

- **On a terminal** (the stream, ``stderr`` by default, is a tty): `tqdm
  <https://tqdm.github.io>`_ bars with count, rate and ETA, redrawn in place and cleared when
  done: one for the epoch's training steps (with the running loss), one for each validation
  pass, one for the test evaluation and, in ``calibrant bench``, one for the runs of the suite.
  One line per epoch (loss, validation scores, elapsed, ETA) stays.
- **Otherwise** (a log file, a pipe, CI): no carriage returns and no bars. One line per epoch,
  a within-pass line at most every ``interval`` seconds (30 s) for slow passes, and one line when
  the test evaluation ends.
- ``quiet``: nothing.

Example:
    >>> import io
    >>> out = io.StringIO()  # not a terminal: plain lines
    >>> p = Progress(2, stream=out, clock=lambda: 10.0)
    >>> p.on_epoch_end({"epoch": 1, "train": {"loss": 0.5}, "val": {"dice": 0.75}})
    >>> print(out.getvalue(), end="")
    epoch 1/2  loss=0.5000  dice=0.7500  elapsed 0s  eta 0s
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from tqdm import tqdm

from calibrant.engine import Callback

__all__ = ["Progress"]

_PHASES = {"val": "validation", "test": "test"}


def _duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


class Progress(Callback):
    """Progress bars on a terminal, throttled plain lines in logs (see the module docstring).

    Args:
        epochs: total number of epochs of the run (``None``: unknown, no total and no ETA; the
            bench trains many runs).
        quiet: print nothing.
        stream: where to print (default ``sys.stderr``).
        interval: minimum seconds between two within-pass lines in line mode (default 30 s;
            bars redraw at most ten times a second).
        clock: time source (for tests).
        tty: force bar (``True``) or line (``False``) mode; default: ``stream.isatty()``.
        resumed: the run continues an earlier one (the first epoch's number is not known yet).
    """

    def __init__(
        self,
        epochs: int | None,
        *,
        quiet: bool = False,
        stream: Any = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        tty: bool | None = None,
        resumed: bool = False,
    ) -> None:
        self.epochs, self.quiet = epochs, quiet
        self.stream = stream or sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(callable(isatty) and isatty())
        self.tty = tty
        self.interval = 30.0 if interval is None else interval
        self.clock = clock
        self.start = clock()
        self.done = 0  # epochs finished in this session
        self.epoch: int | None = None if resumed else 1  # the epoch running now, when known
        self._bars: dict[str, Any] = {}  # "train", "val", "test", "bench" -> tqdm bar
        self._postfix_at = -math.inf
        # line mode: per-pass counters and when the last line was printed
        self._pass_start: dict[str, float] = {}
        self._pass_count: dict[str, int] = {}
        self._pass_total: dict[str, int | None] = {}
        self._first_step: int | None = None
        self._last_print = self.start

    # -- output --------------------------------------------------------------------------------
    def _print(self, line: str) -> None:
        # tqdm.write clears this stream's open bars, writes the line and redraws them; with no
        # bar open (line mode) it is a plain write
        tqdm.write(line, file=self.stream)
        self.stream.flush()

    def _bar(self, key: str, **kwargs: Any) -> Any:
        self._close(key)
        bar = tqdm(file=self.stream, dynamic_ncols=True, mininterval=0.1, **kwargs)
        self._bars[key] = bar
        return bar

    def _close(self, key: str) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        """Close every open bar (at the end of a command, or after an error)."""
        for key in list(self._bars):
            self._close(key)

    # -- training steps ------------------------------------------------------------------------
    def on_train_step(self, step: int, total: int, loss: Any) -> None:
        """A training step is done; ``loss`` (the running mean) is read only when shown."""
        if self.quiet:
            return
        now = self.clock()
        if self.tty:
            bar = self._bars.get("train")
            if bar is None:
                of = f"/{self.epochs}" if self.epochs is not None else ""
                desc = f"epoch {self.epoch}{of}" if self.epoch is not None else "train"
                bar = self._bar("train", total=total, initial=step - 1, desc=desc, unit="step")
                bar.leave = False
            if now - self._postfix_at >= 1.0 or step >= total:
                self._postfix_at = now
                bar.set_postfix_str(f"loss={float(loss):.4f}", refresh=False)
            bar.update(step - bar.n)
            if step >= total:
                self._close("train")
            return
        if self._first_step is None:
            self._first_step = step - 1  # steps before this session (resumed mid-epoch)
            self._pass_start["train"] = self._last_print
        if now - self._last_print < self.interval or step >= total:
            return
        self._last_print = now
        rate = (step - self._first_step) / max(now - self._pass_start["train"], 1e-9)
        eta = (total - step) / max(rate, 1e-9)
        line = f"  step {step}/{total}  loss={float(loss):.4f}  {rate:.2f} step/s  eta {eta:.0f}s"
        self._print(line)

    # backwards-compatible names (``engine.fit(step_log=..., log=...)``)
    def step_done(self, step: int, total: int, loss: Any) -> None:
        """Alias of :meth:`on_train_step` (a ``fit(step_log=...)`` callback)."""
        self.on_train_step(step, total, loss)

    # -- evaluation passes ---------------------------------------------------------------------
    def on_eval_start(self, phase: str, total: int | None) -> None:
        """An evaluation pass (validation or test) starts."""
        self._close("train")  # a bar left open by an epoch that ended early
        now = self.clock()
        self._pass_start[phase], self._pass_count[phase] = now, 0
        self._pass_total[phase] = total
        if self.quiet or not self.tty:
            return
        bar = self._bar(phase, total=total, desc=_PHASES.get(phase, phase), unit="batch")
        bar.leave = False

    def on_eval_batch(self, phase: str, logits: Any, target: Any) -> None:
        """One evaluation batch (a volume, for volume-wise segmentation) is done."""
        self._pass_count[phase] = self._pass_count.get(phase, 0) + 1
        if self.quiet:
            return
        if self.tty:
            bar = self._bars.get(phase)
            if bar is not None:
                bar.update(1)
            return
        now = self.clock()
        if now - self._last_print < self.interval:
            return
        self._last_print = now
        n, total = self._pass_count[phase], self._pass_total.get(phase)
        elapsed = now - self._pass_start.get(phase, now)
        rate = n / max(elapsed, 1e-9)
        of = f"/{total}" if total else ""
        eta = f"  eta {_duration((total - n) / max(rate, 1e-9))}" if total else ""
        self._print(f"  {_PHASES.get(phase, phase)} {n}{of}  {rate:.2f} batch/s{eta}")

    def on_eval_end(self, phase: str, results: Mapping[str, Any]) -> None:
        """An evaluation pass ended: its bar goes; the test pass leaves one summary line."""
        self._close(phase)
        if self.quiet or phase == "val":
            return
        elapsed = self.clock() - self._pass_start.get(phase, self.clock())
        n = self._pass_count.get(phase, 0)
        self._print(f"{_PHASES.get(phase, phase)} evaluation: {n} batches in {_duration(elapsed)}")

    # -- epochs --------------------------------------------------------------------------------
    def on_epoch_end(self, record: Mapping[str, Any]) -> None:
        """One line per epoch: training loss, validation scores, elapsed time and ETA."""
        self._close("train")
        self.done += 1
        now = self.clock()
        self._last_print = now
        self._first_step = None
        self.epoch = int(record["epoch"]) + 1
        if self.quiet:
            return
        elapsed = now - self.start
        if self.epochs is None:  # several runs of unknown length (the bench): no total, no ETA
            of, eta = "", ""
        else:
            left = elapsed / self.done * max(self.epochs - record["epoch"], 0)
            of, eta = f"/{self.epochs}", f"  eta {left:.0f}s"
        val = ", ".join(
            f"{k}={v:.4f}" for k, v in record["val"].items() if isinstance(v, (int, float))
        )
        self._print(
            f"epoch {record['epoch']}{of}  "
            f"loss={record['train'].get('loss', math.nan):.4f}"
            f"  {val}  elapsed {elapsed:.0f}s{eta}"
        )

    def epoch_done(self, record: Mapping[str, Any]) -> None:
        """Alias of :meth:`on_epoch_end` (a ``fit(log=...)`` callback)."""
        self.on_epoch_end(record)

    # -- benchmark runs ------------------------------------------------------------------------
    def on_bench_run(self, index: int, total: int, name: str) -> None:
        """Run ``index`` (1-based) of ``total`` starts (the ``run_suite(on_run=...)`` hook).

        On a terminal a bar shows the runs done of all, the current run and the ETA; in line
        mode the runner's own log line says the same.
        """
        self.epoch = 1  # a new run starts (or resumes) from its own first epoch
        self.start, self.done = self.clock(), 0
        if self.quiet or not self.tty:
            return
        bar = self._bars.get("bench")
        if bar is None or bar.total != total:
            bar = self._bar("bench", total=total, initial=index - 1, desc="bench", unit="run")
        bar.set_postfix_str(name, refresh=False)
        bar.update(index - 1 - bar.n)

    def on_bench_end(self, finished: int) -> None:
        """The suite's loop ended after ``finished`` runs: the runs bar completes and stays."""
        bar = self._bars.pop("bench", None)
        if bar is not None:
            bar.set_postfix_str("", refresh=False)
            bar.update(finished - bar.n)
            bar.close()
