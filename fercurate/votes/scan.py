"""The FER+ release layout as a dataset for ``fercurate scan``.

``FER2013Train/``, ``FER2013Valid/`` and ``FER2013Test/`` (directly or under ``data/``), each with
PNGs and a headerless ``label.csv``, become rows in ``train`` / ``val`` / ``test`` whose label is the
one the votes pick under the scan's vote scheme (see :mod:`fercurate.votes`); the vote counts are
kept in the vote columns. A row whose votes pick no label (no majority, a tie, mostly unknown or
not a face, a class outside ``--classes``) is kept as ``removed`` with ``reason=votes:<why>``
and the most-voted FER+ class as its label, so nothing is silently skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fercurate.manifest import ACTIVE, REMOVED, Col, canonical_class
from fercurate.progress import Progress
from fercurate.votes.ferplus import find_release, read_release
from fercurate.votes.match import MATCHED, Matches
from fercurate.votes.params import FERPLUS_CLASSES, NON_EMOTION, check_scheme
from fercurate.votes.stats import class_map, scheme_labels

if TYPE_CHECKING:
    from fercurate.engine import Engine
    from fercurate.scan import ScanParams
    from fercurate.workspace import Workspace

#: FER2013 Usage -> manifest split.
USAGE_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
#: How scanned FER+ rows are matched to their votes (the ``vote_match`` column): the same file.
BY_FILE = "file"
#: Dataset classes of a FER+ scan without ``--classes``: its eight emotions, folded.
FERPLUS_EMOTIONS: tuple[str, ...] = tuple(canonical_class(c) for c in FERPLUS_CLASSES if c not in NON_EMOTION)


def ferplus_folders(root: Path) -> dict[str, Path]:
    """The FER+ folders under ``root`` (or ``root/data``) by Usage; empty when it is no FER+ release."""
    return find_release(root)


def scan_ferplus(
    workspace: Workspace, folders: dict[str, Path], params: ScanParams, progress: Progress, engine: Engine | None = None
) -> tuple[pd.DataFrame, Path, list[str]]:
    """Rows for every image a FER+ ``label.csv`` names, labelled by the votes; and the dataset root.

    Raises:
        DatasetError: a malformed ``label.csv`` or votes for an image that is not there (file and line).
    """
    from fercurate.scan import _scan_files  # scan decodes and inspects the files, as for any layout
    from fercurate.votes.stage import with_votes

    scheme = params.vote_scheme
    check_scheme(scheme)
    table = read_release(folders)
    root = next(iter(folders.values())).parent
    classes = [canonical_class(c) for c in params.classes] if params.classes else list(FERPLUS_EMOTIONS)
    mapping = class_map(classes)
    picked = scheme_labels(table.counts.astype(np.int64), mapping, classes, scheme)
    top = [canonical_class(FERPLUS_CLASSES[j]) for j in table.counts.argmax(axis=1)]
    labels = [label if label is not None else t for label, t in zip(picked.labels, top, strict=True)]
    files = [
        (f"{folders[u].relative_to(root).as_posix()}/{name}", USAGE_SPLIT[u], label)
        for u, name, label in zip(table.usages, table.names, labels, strict=True)
    ]
    df = _scan_files(workspace, root, files, params, progress, engine)
    no_label = np.array([label is None for label in picked.labels]) & (df[Col.STATUS] == ACTIVE).to_numpy()
    if no_label.any():
        df.loc[no_label, Col.STATUS] = REMOVED
        df.loc[no_label, Col.REASON] = [f"votes:{why}" for why, n in zip(picked.reasons, no_label, strict=True) if n]
    n = len(table)
    rows = np.arange(n)
    matches = Matches(row=rows, distance=np.zeros(n), margin=np.full(n, np.nan), status=np.full(n, MATCHED))
    out = with_votes(df, table, rows, matches, BY_FILE, mapping, classes, scheme)
    notes = [f"FER+ release: labels are the votes' {scheme} pick over {', '.join(classes)}"]
    if no_label.any():
        reasons = pd.Series([r for r, k in zip(picked.reasons, no_label, strict=True) if k]).value_counts()
        notes.append(
            f"{int(no_label.sum())} image(s) whose votes pick no label kept as removed: "
            + ", ".join(f"{k} {v}" for k, v in reasons.items())
        )
    return out, root, notes
