"""The options of ``fercurate benchmark`` (:class:`BenchmarkParams`, validated here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fercurate.errors import InputError

SMALL_GOLD = 300


@dataclass(frozen=True)
class BenchmarkParams:
    """Options of ``fercurate benchmark`` (the CLI's defaults point here)."""

    versions: tuple[str, ...] = ()  # empty: every version in the lineage of the latest
    seeds: int = 3
    preset: str = "cpu"
    overrides: tuple[tuple[str, Any], ...] = ()
    device: str = "auto"
    n_boot: int = 2000
    # annotator votes (fercurate.votes): train on the vote distributions; score gold against the vote majority
    targets: str = "labels"
    gold_labels: str = "labels"

    def __post_init__(self) -> None:
        """Raise :class:`InputError` naming the first value that is not accepted."""
        if self.seeds < 1:
            raise InputError(f"seeds {self.seeds} must be at least 1", param="seeds")
        for name in ("targets", "gold_labels"):
            if getattr(self, name) not in ("labels", "votes"):
                raise InputError(f"{name} '{getattr(self, name)}' is not one of: labels, votes", param=name)
