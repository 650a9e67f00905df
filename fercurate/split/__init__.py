"""``fercurate split``: re-assign active rows to train / val / test, stratified and group-safe."""

from fercurate.split.stage import (
    DUP_GROUP,
    STRATEGIES,
    SplitParams,
    SplitResult,
    assign,
    assign_splits,
    connected_groups,
    deviations,
    fold_plan,
    max_deviation,
    normalise_ratios,
    parse_ratios,
    split,
    split_tables,
    stratum_targets,
)

__all__ = [
    "DUP_GROUP",
    "STRATEGIES",
    "SplitParams",
    "SplitResult",
    "assign",
    "assign_splits",
    "connected_groups",
    "deviations",
    "fold_plan",
    "max_deviation",
    "normalise_ratios",
    "parse_ratios",
    "split",
    "split_tables",
    "stratum_targets",
]
