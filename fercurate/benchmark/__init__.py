"""``fercurate benchmark``: train the built-in CNN on each curated version and measure the effect.

The honest comparison needs one test set that no version's training has seen. The **gold set** is:

* the active rows in the newest compared version's ``test`` split, from the original source,
* minus every row that has a duplicate (exact, or near as verified by the dedup machinery) among
  the train or val rows of any compared version, other than the row itself.

A compared version may hold a gold image itself in its train or val split (an old version whose
lopsided split put it there): those rows are held out of that version's training and validation,
and the report says how many. Everything else about each version is used as it is, leakage included,
so its own validation accuracy can be compared with its gold accuracy: the difference is the
*leakage inflation* ("Model 0 reached 76% on the original data").

Models are cached under ``cache/models/`` by the content of their training and validation rows,
the training config and the seed, so re-running (or comparing a version whose training data did not
change, such as a flag-only version) trains nothing new.

The package reads like every stage: ``params`` (:class:`BenchmarkParams`), ``stage`` (the steps and
:func:`benchmark`) and ``report`` (the summary table, Markdown, HTML and plots).
"""

from fercurate.benchmark.params import BenchmarkParams
from fercurate.benchmark.report import render_markdown, summary_rows
from fercurate.benchmark.stage import BenchmarkResult, VersionScore, benchmark, bootstrap_delta

__all__ = [
    "BenchmarkParams",
    "BenchmarkResult",
    "VersionScore",
    "benchmark",
    "bootstrap_delta",
    "render_markdown",
    "summary_rows",
]
