"""``fercurate log`` and ``fercurate diff``: what the versions are and what changed between two."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from fercurate.counts import class_by_split
from fercurate.manifest import ACTIVE, Col
from fercurate.reports import to_dict
from fercurate.workspace import VersionInfo, Workspace


def log(workspace: Workspace) -> list[dict[str, Any]]:
    """Every version, oldest first, as JSON-ready dicts.

    ``state`` is ``ok``, ``unverified`` (recorded before fercurate kept the Parquet file's sha256)
    or ``damaged``, with the ``problem`` in one line: a record that is not readable JSON is listed
    by its number alone, and a Parquet file that is not the recorded one (or not Parquet) is marked.
    ``report_incomplete`` says a command was killed while writing the version's report folder.
    ``lineage`` names the root version (a scan) each version descends from: a workspace scanned
    twice with ``--new-lineage`` holds two lineages, and no version of one descends from the other
    (a damaged record has none).
    """
    from fercurate.votes.stage import vote_coverage

    infos = workspace.require_versions()
    roots = lineage_roots(infos)
    out: list[dict[str, Any]] = []
    for info in workspace.versions():
        problem = workspace.verify(info)
        out.append(
            {
                "version": info.version,
                "stage": info.stage,
                "parent": info.parent,
                "lineage": roots[info.version],
                "path": info.path,
                "created": info.created,
                "rows": info.rows,
                "active": info.counts.get("status", {}).get(ACTIVE, 0),
                "by_status": info.counts.get("status", {}),
                "by_split": info.counts.get("split", {}),
                "params": info.params,
                "content_hash": info.content_hash,
                "fercurate_version": info.fercurate_version,
                "state": "damaged" if problem else ("unverified" if info.file_sha256 is None else "ok"),
                "problem": problem,
                "report_incomplete": workspace.report_incomplete(info.version),
                # annotator votes: active rows with votes, or None
                "votes": vote_coverage(info.path) if not problem else None,
            }
        )
    for bad in workspace.damaged():
        out.append(
            {
                "version": bad.version,
                "lineage": None,
                "path": bad.file,
                "state": "damaged",
                "problem": f"{bad.file} is {bad.problem}",
                "report_incomplete": workspace.report_incomplete(bad.version),
            }
        )
    return sorted(out, key=lambda e: str(e["version"]))


def lineage_roots(infos: list[VersionInfo]) -> dict[str, str]:
    """The root version each version descends from (itself for a root), by version id."""
    parents = {i.version: i.parent for i in infos}
    roots: dict[str, str] = {}
    for info in infos:  # oldest first: a parent's root is known before its children's
        parent = parents[info.version]
        roots[info.version] = roots.get(parent, parent) if parent else info.version
    return roots


@dataclass(frozen=True)
class Diff:
    """The difference between two versions, keyed by ``image_id``."""

    a: VersionInfo
    b: VersionInfo
    added: int
    removed: int
    status_changes: dict[str, int]
    relabels: dict[str, int]
    split_moves: dict[str, int]
    before: pd.DataFrame  # active counts, class x split
    after: pd.DataFrame
    votes_before: dict[str, int] | None = None  # annotator votes on active rows (fercurate.votes)
    votes_after: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self, rename={"before": "class_by_split_before", "after": "class_by_split_after"})


def diff(workspace: Workspace, a: str, b: str) -> Diff:
    """Compare versions ``a`` and ``b`` (any spec :meth:`Workspace.resolve` takes)."""
    from fercurate.votes.stage import vote_coverage

    info_a, df_a = workspace.read(a)
    info_b, df_b = workspace.read(b)
    cols = [Col.IMAGE_ID, Col.STATUS, Col.LABEL, Col.SPLIT]
    joined = df_a[cols].merge(df_b[cols], on=Col.IMAGE_ID, how="outer", suffixes=("_a", "_b"), indicator=True)
    both = joined[joined["_merge"] == "both"]
    return Diff(
        a=info_a,
        b=info_b,
        added=int((joined["_merge"] == "right_only").sum()),
        removed=int((joined["_merge"] == "left_only").sum()),
        status_changes=_transitions(both, Col.STATUS),
        relabels=_transitions(both, Col.LABEL),
        split_moves=_transitions(both[(both["status_a"] == ACTIVE) & (both["status_b"] == ACTIVE)], Col.SPLIT),
        before=class_by_split(df_a),
        after=class_by_split(df_b),
        votes_before=vote_coverage(info_a.path),
        votes_after=vote_coverage(info_b.path),
    )


def _transitions(frame: pd.DataFrame, col: str) -> dict[str, int]:
    changed = frame[frame[f"{col}_a"] != frame[f"{col}_b"]]
    counts = changed.groupby([f"{col}_a", f"{col}_b"]).size().sort_values(ascending=False)
    return {f"{x}->{y}": int(n) for (x, y), n in counts.items()}
