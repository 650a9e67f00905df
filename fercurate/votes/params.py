"""The options of ``fercurate votes import`` (and of FER+ scanning), with their choices and ranges."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fercurate.errors import InputError
from fercurate.manifest import VOTE_CLASSES

#: FER+'s ten vote columns, in the order of its ``label.csv`` and ``fer2013new.csv`` (defined with
#: the schema in :mod:`fercurate.manifest`).
FERPLUS_CLASSES: tuple[str, ...] = VOTE_CLASSES
#: The two FER+ columns that are no expression: "cannot tell" and "not a face".
NON_EMOTION: tuple[str, ...] = ("unknown", "NF")
#: FER+ folder -> FER2013 Usage.
FERPLUS_FOLDERS: dict[str, str] = {
    "FER2013Train": "Training",
    "FER2013Valid": "PublicTest",
    "FER2013Test": "PrivateTest",
}
USAGES: tuple[str, ...] = tuple(FERPLUS_FOLDERS.values())

#: How a row's label is read from its votes (see :mod:`fercurate.votes` for each one's rule).
SCHEMES: tuple[str, ...] = ("majority", "plurality", "drop")


@dataclass(frozen=True)
class VotesParams:
    """Options of ``fercurate votes import`` (the CLI's defaults point here).

    Attributes:
        votes: FER+'s ``fer2013new.csv``, a FER+ ``label.csv``, or a folder holding the FER+ release
            (``FER2013Train/`` ... each with PNGs and ``label.csv``, possibly under ``data/``).
        version: the version to attach the votes to; None for the latest.
        scheme: how ``vote_majority`` is read from the votes: ``majority``, ``plurality`` or ``drop``.
        mapping: FER+ class -> dataset class overrides, in merge-affectnet's ``--map`` syntax
            (``contempt=disgust``); unlisted FER+ classes fold by name (``happiness`` -> ``happy``)
            and classes the dataset lacks count as votes for no dataset class.
        max_distance: largest RMS grey-level difference of a pixel match (PNG against re-encoded
            JPEG); the real Kaggle JPEGs are within about 2 of FER+'s PNGs.
        min_margin: a pixel match is sure only when the second-nearest row is at least this much
            further (RMS grey levels); unsure matches are reported as ambiguous and get no votes.
        dry_run: report only; write no version.
    """

    votes: Path
    version: str | None = None
    scheme: str = "majority"
    mapping: str | None = None
    max_distance: float = 4.0
    min_margin: float = 1.0
    dry_run: bool = False

    def __post_init__(self) -> None:
        check_scheme(self.scheme)
        if not 0.0 <= self.max_distance <= 255.0:
            raise InputError(
                f"max_distance {self.max_distance} is out of range; use 0 to 255 (RMS grey levels)",
                param="max_distance",
            )
        if not 0.0 <= self.min_margin <= 255.0:
            raise InputError(
                f"min_margin {self.min_margin} is out of range; use 0 to 255 (RMS grey levels)", param="min_margin"
            )
        self.overrides()  # a bad --map fails here, before any file is read

    def overrides(self) -> dict[str, str]:
        """The ``--map`` entries, parsed with merge-affectnet's parser (one syntax for both)."""
        from fercurate.affectnet.sources import parse_mapping

        return parse_mapping(self.mapping)


def check_scheme(scheme: str) -> None:
    """Raise :class:`InputError` for a scheme that is not one of :data:`SCHEMES`."""
    if scheme not in SCHEMES:
        raise InputError(f"scheme '{scheme}' is not one of: {', '.join(SCHEMES)}", param="scheme")
