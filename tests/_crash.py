"""A simulated crash for the resume tests: a callback that ends the process mid-training.

:class:`CrashAfter` is a :class:`calibrant.engine.Callback`. After the ``n``-th optimiser step
of this process its ``on_train_step`` calls ``os._exit(3)``: no ``finally`` block, ``atexit``
handler or further checkpoint runs, as when the process is killed. ``fit`` calls the hook
before that step's periodic checkpoint, so pick an ``n`` that is not a multiple of
``checkpoint_every``.

``python -m tests._crash N ARGS...`` runs the command line ``calibrant ARGS...`` with a
``CrashAfter(N)`` added to the callbacks of its training run (the test wraps
:func:`calibrant.experiment.train_run`; the command line has no crash option).
"""

import os
import sys

from calibrant.engine import Callback

EXIT_CODE = 3


class CrashAfter(Callback):
    """End the process with :data:`EXIT_CODE` after ``steps`` optimiser steps."""

    def __init__(self, steps: int) -> None:
        self.steps, self.done = steps, 0

    def on_train_step(self, step, total, loss) -> None:
        self.done += 1
        if self.done >= self.steps:
            os._exit(EXIT_CODE)


def main(argv: list[str]) -> int:
    """``argv`` is ``[N, *calibrant_args]``: run the command line, crashing after N steps."""
    from calibrant import cli, experiment

    steps, *args = argv
    train_run = experiment.train_run

    def crashing_train_run(*a, callbacks=(), **kw):
        return train_run(*a, callbacks=[*callbacks, CrashAfter(int(steps))], **kw)

    experiment.train_run = crashing_train_run
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
