"""The workspace: immutable manifest versions, their lineage, a lock, an image store and caches.

Layout of a workspace directory::

    versions/v0000.parquet   the manifest of version 0
    versions/v0000.json      its record: stage, parent, params, counts, content hash, ...
    store/                   images the workspace holds (FER2013 CSV pixels, converted AffectNet faces)
    cache/                   expensive intermediates keyed by what produced them (pixels, hashes, models)
    reports/                 per-version outputs of stages (pairs tables, contact sheets, plots)
    .lock                    present while a command writes

A version exists once its JSON record exists; the record is written (atomically) after the Parquet
file, so a command killed mid-way leaves at most an orphan Parquet file that the next commit replaces.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fercurate import __version__
from fercurate.errors import WorkspaceError
from fercurate.manifest import (
    STORE_PREFIX,
    Col,
    atomic_write,
    atomic_write_text,
    content_hash,
    counts_by,
    read_manifest,
    write_manifest,
)

DEFAULT_WORKSPACE = Path("manifests")
WORKSPACE_ENV = "FERCURATE_WORKSPACE"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


@dataclass(frozen=True)
class VersionInfo:
    """The record of one manifest version."""

    version: str
    stage: str
    parent: str | None
    params: dict[str, Any]
    created: str
    fercurate_version: str
    rows: int
    counts: dict[str, dict[str, int]]
    content_hash: str
    dataset_root: str | None
    path: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_workspace() -> Path:
    """The workspace named by ``FERCURATE_WORKSPACE``, else ``./manifests``."""
    env = os.environ.get(WORKSPACE_ENV)
    return Path(env) if env else DEFAULT_WORKSPACE


class Workspace:
    """A directory of manifest versions. Cheap to construct; touches the disk only when asked."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_workspace()

    # -- layout -----------------------------------------------------------------------------------
    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def report_dir(self, version: str) -> Path:
        """Where a stage puts the outputs that belong to the version it wrote."""
        path = self.reports_dir / version
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- versions ---------------------------------------------------------------------------------
    def versions(self) -> list[VersionInfo]:
        """All committed versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        infos = []
        for meta in sorted(self.versions_dir.glob("v*.json")):
            if not _VERSION_RE.match(meta.stem):
                continue
            if not (self.versions_dir / f"{meta.stem}.parquet").exists():
                continue
            data = json.loads(meta.read_text(encoding="utf-8"))
            data["path"] = str((self.versions_dir / f"{meta.stem}.parquet").resolve())
            infos.append(VersionInfo(**data))
        return infos

    def require_versions(self) -> list[VersionInfo]:
        """All versions, or an error telling the user to scan first."""
        infos = self.versions()
        if not infos:
            raise WorkspaceError(
                f"workspace {self.root} has no manifest versions; run `fercurate scan DATASET` first "
                f"(or point --workspace / {WORKSPACE_ENV} at an existing workspace)"
            )
        return infos

    def resolve(self, spec: str | None = None) -> VersionInfo:
        """Find a version by id (``v0003``), number (``3``), ``latest`` or a negative offset (``-1``).

        Raises:
            WorkspaceError: for an unknown version, listing the ones that exist.
        """
        infos = self.require_versions()
        if spec is None or spec in ("latest", "head", "HEAD"):
            return infos[-1]
        text = spec.strip()
        if re.fullmatch(r"-\d+", text):
            index = len(infos) - 1 + int(text)
            if 0 <= index < len(infos):
                return infos[index]
        else:
            if re.fullmatch(r"\d+", text):
                text = f"v{int(text):04d}"
            for info in infos:
                if info.version == text:
                    return info
        known = ", ".join(i.version for i in infos)
        raise WorkspaceError(f"unknown version '{spec}' in workspace {self.root}; versions: {known}")

    def read(self, spec: str | None = None) -> tuple[VersionInfo, pd.DataFrame]:
        """The record and manifest of a version."""
        info = self.resolve(spec)
        return info, read_manifest(Path(info.path))

    def find_stage(self, stage: str, upto: str | None = None) -> VersionInfo | None:
        """The newest version written by ``stage`` in the lineage of ``upto`` (default: latest)."""
        for info in reversed(self.lineage(upto)):
            if info.stage == stage:
                return info
        return None

    def lineage(self, spec: str | None = None) -> list[VersionInfo]:
        """The chain of versions from the root to ``spec``, oldest first."""
        by_id = {i.version: i for i in self.require_versions()}
        chain = []
        cursor: VersionInfo | None = self.resolve(spec)
        while cursor is not None:
            chain.append(cursor)
            cursor = by_id.get(cursor.parent) if cursor.parent else None
        return list(reversed(chain))

    def dataset_root(self, info: VersionInfo) -> Path | None:
        return Path(info.dataset_root) if info.dataset_root else None

    def commit(
        self,
        df: pd.DataFrame,
        *,
        stage: str,
        parent: VersionInfo | None,
        params: dict[str, Any],
        dataset_root: Path | str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> VersionInfo:
        """Write ``df`` as the next version. Call it while holding :meth:`lock`."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        existing = self.versions()
        number = int(existing[-1].version[1:]) + 1 if existing else 0
        version = f"v{number:04d}"
        parquet = self.versions_dir / f"{version}.parquet"
        write_manifest(df, parquet)
        root = dataset_root if dataset_root is not None else (parent.dataset_root if parent else None)
        counts = {
            "split": counts_by(df[df[Col.STATUS] == "active"], Col.SPLIT),
            "label": counts_by(df[df[Col.STATUS] == "active"], Col.LABEL),
            "status": counts_by(df, Col.STATUS),
            "split_label": counts_by(df[df[Col.STATUS] == "active"], Col.SPLIT, Col.LABEL),
        }
        record = {
            "version": version,
            "stage": stage,
            "parent": parent.version if parent else None,
            "params": _jsonable(params),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fercurate_version": __version__,
            "rows": int(len(df)),
            "counts": counts,
            "content_hash": content_hash(df),
            "dataset_root": str(Path(root).resolve()) if root else None,
            "extra": _jsonable(extra or {}),
        }
        atomic_write_text(self.versions_dir / f"{version}.json", json.dumps(record, indent=2))
        record["path"] = str(parquet.resolve())
        return VersionInfo(**record)

    # -- paths and the store ----------------------------------------------------------------------
    def resolve_image_path(self, path: str, dataset_root: Path | str | None) -> Path:
        """The file behind a manifest ``path`` value."""
        if path.startswith(STORE_PREFIX):
            return self.root / "store" / path[len(STORE_PREFIX) :]
        p = Path(path)
        if p.is_absolute() or dataset_root is None:
            return p
        return Path(dataset_root) / p

    def store_path(self, relative: str) -> tuple[str, Path]:
        """The manifest value and the file path for an image the workspace stores."""
        rel = relative.lstrip("/")
        return STORE_PREFIX + rel, self.store_dir / rel

    # -- the lock ---------------------------------------------------------------------------------
    @contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the workspace's write lock while the block runs.

        A lock left by a process that no longer runs (killed, crashed) is taken over, so a killed
        command never leaves the workspace unusable.

        Raises:
            WorkspaceError: when another live process holds the lock.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / ".lock"
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(lock_path)
                if holder is not None and _lock_is_live(holder):
                    since = datetime.fromtimestamp(holder.get("since", 0)).strftime("%H:%M:%S")
                    raise WorkspaceError(
                        f"workspace {self.root} is locked by `{holder.get('command', '?')}` "
                        f"(pid {holder.get('pid')} on {holder.get('host')}, since {since}); wait for it "
                        f"to finish, or delete {lock_path} if that process is gone"
                    ) from None
                lock_path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            break
        else:
            raise WorkspaceError(f"could not take the lock {lock_path}; delete it if no fercurate runs")
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _lock_is_live(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot check another machine's processes: assume it runs
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def _jsonable(value: Any) -> Any:
    """Make params JSON-serialisable (paths to strings, tuples to lists, numpy scalars to Python)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class PixelCache:
    """Decoded grayscale pixels (size x size, uint8) keyed by the file's sha256.

    Scan and merge-affectnet fill it while they decode anyway, so dedup, training and review never
    decode a file twice. Stored as Parquet chunks under ``cache/pixels-<size>/``; each writer adds a
    chunk atomically, so a killed writer leaves the cache consistent.
    """

    def __init__(self, workspace: Workspace, size: int = 48) -> None:
        self.size = size
        self.dir = workspace.cache_dir / f"pixels-{size}"
        self._loaded: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._loaded is None:
            self._loaded = {}
            if self.dir.is_dir():
                for chunk in sorted(self.dir.glob("*.parquet")):
                    table = pq.read_table(chunk)
                    shas = table.column("sha256").to_pylist()
                    flat = np.frombuffer(b"".join(table.column("pixels").to_pylist()), dtype=np.uint8)
                    arr = flat.reshape(len(shas), self.size, self.size)
                    self._loaded.update(zip(shas, arr, strict=True))
        return self._loaded

    def get(self, shas: list[str]) -> tuple[np.ndarray, list[int]]:
        """Pixels for ``shas`` (zeros where missing) and the positions that were missing."""
        data = self._load()
        out = np.zeros((len(shas), self.size, self.size), dtype=np.uint8)
        missing = []
        for i, sha in enumerate(shas):
            arr = data.get(sha)
            if arr is None:
                missing.append(i)
            else:
                out[i] = arr
        return out, missing

    def add(self, shas: list[str], pixels: np.ndarray) -> None:
        """Store new pixel arrays (ignoring ones already cached)."""
        data = self._load()
        keep = [i for i, s in enumerate(shas) if s not in data]
        # the same file may appear twice in one batch (exact duplicate files)
        seen: set[str] = set()
        keep = [i for i in keep if not (shas[i] in seen or seen.add(shas[i]))]  # type: ignore[func-returns-value]
        if not keep:
            return
        table = pa.table(
            {
                "sha256": [shas[i] for i in keep],
                "pixels": [pixels[i].astype(np.uint8).tobytes() for i in keep],
            }
        )
        name = f"{time.time_ns()}-{os.getpid()}.parquet"
        atomic_write(self.dir / name, lambda tmp: pq.write_table(table, tmp))
        for i in keep:
            data[shas[i]] = pixels[i].astype(np.uint8)


def load_pixels(
    workspace: Workspace,
    info: VersionInfo,
    rows: pd.DataFrame,
    size: int = 48,
    progress: Any = None,
) -> np.ndarray:
    """Grayscale ``size`` x ``size`` pixels for ``rows`` (in row order), from the cache or decoded.

    Images missing from the :class:`PixelCache` are decoded in parallel and added to it, so each file
    is decoded once per workspace and size. Rows whose file cannot be decoded get zeros.
    """
    import functools

    from fercurate.images import map_batches

    cache = PixelCache(workspace, size)
    shas = rows[Col.SHA256].astype(str).tolist()
    pixels, missing = cache.get(shas)
    if missing:
        root = workspace.dataset_root(info)
        paths = [str(workspace.resolve_image_path(str(rows[Col.PATH].iloc[i]), root)) for i in missing]
        if progress is not None:
            progress.start("Decoding images", len(paths))
        decoded = map_batches(
            functools.partial(_load_gray_list, size=size),
            paths,
            batch_size=256,
            progress=progress.advance if progress is not None else None,
        )
        arr = np.stack(decoded) if decoded else np.zeros((0, size, size), np.uint8)
        pixels[missing] = arr
        cache.add([shas[i] for i in missing], arr)
    return pixels


def _load_gray_list(paths: list[str], size: int) -> list[np.ndarray]:
    from fercurate.images import load_gray_files

    return list(load_gray_files(paths, size))
