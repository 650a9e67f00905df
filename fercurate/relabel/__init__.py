"""``fercurate relabel-review``: find likely wrong labels, let a person decide, apply the decisions.

Three steps, one module each:

* :mod:`~fercurate.relabel.flag`: out-of-fold probabilities by k-fold cross-fitting of the built-in
  CNN, scored by confident learning (:mod:`~fercurate.relabel.scoring`, pure numpy); writes a
  version with ``prob_<class>``, ``mislabel_score``, ``suggested_label`` and ``flagged``.
* :mod:`~fercurate.relabel.serve`: a local, token-protected page to decide each flagged image with
  the keyboard; every decision goes straight into the append-only log of
  :mod:`~fercurate.relabel.decisions`.
* :mod:`~fercurate.relabel.apply`: the decisions (and, optionally, the model's confident
  suggestions) as a new version.

Usage::

    from fercurate.relabel import FlagParams, flag, ApplyParams, apply

    flagged = flag(workspace, FlagParams(preset="cpu"))
    applied = apply(workspace, ApplyParams(auto_accept=0.9))

Importing this package does not import torch; :func:`flag` does, when it trains.
"""

from __future__ import annotations

from fercurate.relabel.apply import ApplyParams, ApplyResult, apply
from fercurate.relabel.decisions import Decision, DecisionLog, log_path, replay
from fercurate.relabel.flag import FlagParams, FlagResult, flag
from fercurate.relabel.scoring import FILTERS, RANKERS, LabelScores, score_labels
from fercurate.relabel.serve import ReviewServer, ServeParams, make_server, serve

__all__ = [
    "FILTERS",
    "RANKERS",
    "ApplyParams",
    "ApplyResult",
    "Decision",
    "DecisionLog",
    "FlagParams",
    "FlagResult",
    "LabelScores",
    "ReviewServer",
    "ServeParams",
    "apply",
    "flag",
    "log_path",
    "make_server",
    "replay",
    "score_labels",
    "serve",
]
