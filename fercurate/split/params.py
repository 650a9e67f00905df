"""The options of ``fercurate split`` (:class:`SplitParams`), the ratio syntax, and the split's promise."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fercurate.errors import InputError
from fercurate.manifest import SPLITS

#: The promise: each split's class shares within this many percentage points of the whole ...
TOLERANCE_PP = 1.0
#: ... for every class with at least this many active images.
MIN_CLASS_ROWS = 100
#: The most folds StratifiedGroupKFold gets; its run time grows with groups x folds x folds.
MAX_FOLDS = 20
RATIOS_HINT = "needs three numbers train/val/test summing to 100, e.g. 80/10/10"

TRAIN, VAL, TEST = SPLITS


@dataclass(frozen=True)
class SplitParams:
    """Options of ``fercurate split`` (the CLI's defaults point here).

    Attributes:
        version: the manifest version to re-split; None for the latest.
        ratios: train/val/test percentages summing to 100 (or fractions summing to 1); val or test may be 0.
        seed: the same manifest and seed give the same splits.
        group_by: columns whose shared values stay in one split (``dup_group`` is always used when present);
            ``related`` stands for dedup's ``related_group`` (other frames of one sitting).
        keep_test: keep the current test rows in test and split the rest train/val.
        strategy: a key of :data:`fercurate.split.strategies.STRATEGIES`.
    """

    version: str | None = None
    ratios: tuple[float, float, float] = (80.0, 10.0, 10.0)
    seed: int = 0
    group_by: tuple[str, ...] = ()
    keep_test: bool = False
    strategy: str = "stratified-group"

    def __post_init__(self) -> None:
        """Raise :class:`InputError` naming the first value that is not accepted."""
        from fercurate.split.strategies import STRATEGIES

        normalise_ratios(tuple(self.ratios))
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy '{self.strategy}' is not one of: {', '.join(STRATEGIES)}", param="strategy")


# -- ratios ----------------------------------------------------------------------------------------
def parse_ratios(text: str) -> tuple[float, float, float]:
    """Read ``80/10/10``, ``80,10,10`` or ``0.8/0.1/0.1`` as percentages summing to 100.

    Raises:
        InputError: naming the bad value and the accepted form.
    """
    parts = [p for p in re.split(r"[/,]", text.strip())]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"ratios '{text}' {RATIOS_HINT}", param="ratios") from None
    return normalise_ratios(values, text)


def normalise_ratios(values: tuple[float, ...], shown: str | None = None) -> tuple[float, float, float]:
    """Check train/val/test ratios (percentages or fractions) and return them as percentages.

    Val and test may be 0 (that split ends up empty); train must be above 0.

    Raises:
        InputError: for a wrong count, a negative or non-finite value, a zero train ratio, or a sum
            that is neither 100 nor 1.
    """
    shown = shown if shown is not None else "/".join(f"{v:g}" for v in values)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InputError(f"ratios '{shown}' {RATIOS_HINT}", param="ratios")
    if any(v < 0 for v in values):
        raise InputError(f"ratios '{shown}' has a negative value; it {RATIOS_HINT}", param="ratios")
    total = sum(values)
    if abs(total - 1.0) <= 1e-4:
        scale = 100.0 / total
    elif abs(total - 100.0) <= 1e-2:
        scale = 100.0 / total
    else:
        raise InputError(
            f"ratios '{shown}' sums to {total:g}; it {RATIOS_HINT} (or fractions summing to 1)", param="ratios"
        )
    if values[0] <= 0:
        raise InputError(
            f"ratios '{shown}' leaves train empty; train must be above 0 and val or test may be 0, "
            "e.g. 80/10/10 or 90/10/0",
            param="ratios",
        )
    train, val, test = (v * scale for v in values)
    return (train, val, test)
