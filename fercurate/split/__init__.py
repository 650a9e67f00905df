"""``fercurate split``: re-assign active rows to train / val / test, stratified and group-safe.

- ``params``: :class:`SplitParams` (defaults, choices, validation), the ratio syntax and the tolerance;
- ``strategies``: the pure kernels: groups of connected rows, per-stratum targets, and the registry
  of split strategies (``stratified-group``, ``random-group``);
- ``stage``: read a version, assign, write a version and its chart, return a :class:`SplitResult`.
"""

from fercurate.counts import split_tables
from fercurate.manifest import Col
from fercurate.split.params import (
    MIN_CLASS_ROWS,
    TOLERANCE_PP,
    SplitParams,
    normalise_ratios,
    parse_ratios,
)
from fercurate.split.stage import SplitResult, deviations, max_deviation, split
from fercurate.split.strategies import (
    STRATEGIES,
    assign,
    assign_splits,
    connected_groups,
    fold_plan,
    group_columns,
    stratum_targets,
)

#: The grouping column dedup writes (kept here for code that imported it from ``fercurate.split``).
DUP_GROUP = Col.DUP_GROUP

__all__ = [
    "DUP_GROUP",
    "MIN_CLASS_ROWS",
    "STRATEGIES",
    "TOLERANCE_PP",
    "SplitParams",
    "SplitResult",
    "assign",
    "assign_splits",
    "connected_groups",
    "deviations",
    "fold_plan",
    "group_columns",
    "max_deviation",
    "normalise_ratios",
    "parse_ratios",
    "split",
    "split_tables",
    "stratum_targets",
]
