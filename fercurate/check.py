"""``fercurate check``: verify every version, report folder and cache entry of a workspace.

Reading a version already checks its Parquet file against the sha256 in its record; ``check`` does
that for every version at once, and reads the header (or, for small files, all) of every cache
entry, so a damaged disk or a hand edit is found before a stage trips over it.
"""

from __future__ import annotations

import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fercurate.workspace import Workspace

OK = "ok"
#: a version recorded before fercurate kept the Parquet file's sha256: its file was only parsed
UNVERIFIED = "unverified"
DAMAGED = "damaged"


@dataclass(frozen=True)
class Finding:
    """The state of one version, report folder or cache entry."""

    kind: str  # "version", "report" or "cache"
    name: str  # v0003, or the path under the workspace
    state: str  # ok, unverified or damaged
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckResult:
    """Every finding of a check, versions first."""

    workspace: Path
    findings: list[Finding]

    @property
    def damaged(self) -> list[Finding]:
        return [f for f in self.findings if f.state == DAMAGED]

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.state == s for f in self.findings) for s in (OK, UNVERIFIED, DAMAGED)}
        return {
            "workspace": str(self.workspace),
            "counts": counts,
            "damaged": len(self.damaged),
            "findings": [f.to_dict() for f in self.findings],
        }


def check(workspace: Workspace) -> CheckResult:
    """Verify the versions (record, Parquet file hash), report folders and cache entries of ``workspace``."""
    findings = [Finding("version", d.version, DAMAGED, f"{d.file} is {d.problem}") for d in workspace.damaged()]
    for info in workspace.versions():
        problem = workspace.verify(info)
        state = DAMAGED if problem else (UNVERIFIED if info.file_sha256 is None else OK)
        findings.append(Finding("version", info.version, state, problem))
    findings.sort(key=lambda f: f.name)
    if workspace.reports_dir.is_dir():
        for folder in sorted(p for p in workspace.reports_dir.iterdir() if p.is_dir()):
            if workspace.report_incomplete(folder.name):
                name = str(folder.relative_to(workspace.root))
                problem = "report incomplete: the command writing it was killed or failed; rerun the stage"
                findings.append(Finding("report", name, DAMAGED, problem))
    if workspace.cache_dir.is_dir():
        for path in sorted(p for p in workspace.cache_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            problem = cache_entry_problem(path)
            name = str(path.relative_to(workspace.root))
            findings.append(Finding("cache", name, DAMAGED if problem else OK, problem))
    return CheckResult(workspace.root, findings)


def cache_entry_problem(path: Path) -> str | None:
    """Why a cache file cannot be read (one line), or None. Arrow chunks, Parquet, ``.npy`` and ``.pt``
    files are opened by their format's reader; other files are only read."""
    try:
        if path.suffix == ".arrow":
            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_file(source)
                if "sha256" not in reader.schema.names:
                    return f"{path.name} is an Arrow file without a sha256 column"
                for i in range(reader.num_record_batches):
                    reader.get_batch(i).validate()
        elif path.suffix == ".parquet":
            pq.read_metadata(path)
        elif path.suffix == ".npy":
            np.load(path, mmap_mode="r")
        elif path.suffix == ".pt":  # torch checkpoints are zip archives: test every member's CRC
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{path.name}: member {bad} fails its CRC check"
        else:
            path.read_bytes()
    except (OSError, ValueError, pa.ArrowInvalid, zipfile.BadZipFile, EOFError) as exc:
        return f"{path.name} is not readable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    return None
