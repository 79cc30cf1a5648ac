"""``calibrant bench``: each paper's comparison on real data, resumable, with generated tables.

A suite (:class:`~calibrant.bench.suite.Suite`, registered in
:data:`~calibrant.registry.SUITES`) is tasks × methods × seeds under a profile.
:func:`~calibrant.bench.runner.run_suite` writes one JSON record per finished run and skips the
finished ones on the next call; :func:`~calibrant.bench.tables.render_suite` turns the records
into ``docs/results/<suite>.md``.

Example:
    >>> from calibrant.registry import SUITES
    >>> "spa-mulan" in SUITES.names()
    True
"""

from calibrant.bench import suites, suites_overlap  # noqa: F401  (registers the suites)
from calibrant.bench.runner import plan, run_suite
from calibrant.bench.suite import Claim, Column, Method, Search, Suite, Task, Verdict
from calibrant.bench.tables import Table, load_records, render_suite

__all__ = [
    "Claim",
    "Column",
    "Method",
    "Search",
    "Suite",
    "Table",
    "Task",
    "Verdict",
    "load_records",
    "plan",
    "render_suite",
    "run_suite",
]
