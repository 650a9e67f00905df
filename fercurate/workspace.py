"""The workspace: immutable manifest versions, their lineage, a lock, an image store and caches.

Layout of a workspace directory::

    versions/v0000.parquet   the manifest of version 0
    versions/v0000.json      its record: stage, parent, params, counts, content hash, ...
    store/                   images the workspace holds (FER2013 CSV pixels, converted AffectNet faces)
    cache/                   expensive intermediates keyed by what produced them (pixels, hashes, models)
    reports/                 per-version outputs of stages (pairs tables, contact sheets, plots)
    .lock                    the write lock: an OS lock on this file (never deleted) while a command writes

A version exists once its JSON record exists; the record is written (atomically) after the Parquet
file, so a command killed mid-way leaves at most an orphan Parquet file that the next commit replaces.
The record holds the sha256 of the Parquet file's bytes, checked whenever the version is read: a
record and a Parquet file that do not belong together (a damaged disk, a hand edit, two writers of
an earlier fercurate) are refused rather than trusted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has msvcrt's byte-range locks instead
    fcntl = None  # type: ignore[assignment]
    import msvcrt

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
#: present in a version's report folder while a stage writes it (left behind by a killed command)
INCOMPLETE_REPORT = ".incomplete"


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
    #: sha256 of the Parquet file's bytes; None in records written before fercurate recorded it
    file_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DamagedVersion:
    """A version whose record or Parquet file cannot be trusted, and why (one line)."""

    version: str
    file: str
    problem: str

    def to_dict(self) -> dict[str, str]:
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
        """Where the outputs that belong to a version are (a stage writes them with :meth:`report`)."""
        path = self.reports_dir / version
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def report(self, version: str) -> Iterator[Path]:
        """The report folder of ``version``, marked incomplete until the block finishes.

        The folder holds an ``.incomplete`` file while the stage writes it; a command killed (or
        failing) mid-way leaves the mark, which ``fercurate log`` and ``fercurate check`` show, so
        a report missing some of its files never passes for a whole one.
        """
        folder = self.report_dir(version)
        marker = folder / INCOMPLETE_REPORT
        atomic_write_text(marker, f"pid {os.getpid()} started this report at {time.time():.0f}\n")
        yield folder
        marker.unlink(missing_ok=True)

    def report_incomplete(self, version: str) -> bool:
        """Whether the report of ``version`` was left unfinished by a killed or failed command."""
        return (self.reports_dir / version / INCOMPLETE_REPORT).exists()

    # -- versions ---------------------------------------------------------------------------------
    def versions(self) -> list[VersionInfo]:
        """All committed versions whose record is readable, oldest first (see :meth:`damaged`)."""
        return self._records()[0]

    def damaged(self) -> list[DamagedVersion]:
        """Versions whose record is not a readable version record (a truncated or edited JSON file)."""
        return self._records()[1]

    def _records(self) -> tuple[list[VersionInfo], list[DamagedVersion]]:
        if not self.versions_dir.is_dir():
            return [], []
        infos: list[VersionInfo] = []
        damaged: list[DamagedVersion] = []
        for meta in sorted(self.versions_dir.glob("v*.json")):
            if not _VERSION_RE.match(meta.stem):
                continue
            parquet = self.versions_dir / f"{meta.stem}.parquet"
            if not parquet.exists():
                continue
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
                data["path"] = str(parquet.resolve())
                info = VersionInfo(**data)
                if info.version != meta.stem:
                    raise ValueError(f"it names itself {info.version!r}")
            except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                damaged.append(DamagedVersion(meta.stem, str(meta), f"not a readable version record ({why})"))
                continue
            infos.append(info)
        return infos, damaged

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
            WorkspaceError: for an unknown version, listing the ones that exist, or a version whose
                record is damaged (``latest`` included: it is never silently an older version).
        """
        infos = self.require_versions()
        damaged = {d.version: d for d in self.damaged()}
        every = sorted([*(i.version for i in infos), *damaged])
        text = (spec or "latest").strip()
        wanted: str | None = None
        if text in ("latest", "head", "HEAD"):
            wanted = every[-1]
        elif re.fullmatch(r"-\d+", text):
            index = len(every) - 1 + int(text)
            wanted = every[index] if 0 <= index < len(every) else None
        else:
            wanted = f"v{int(text):04d}" if re.fullmatch(r"\d+", text) else text
        if wanted in damaged:
            bad = damaged[wanted]
            raise WorkspaceError(
                f"version {wanted} is damaged: {bad.file} is {bad.problem}; pass --version to use another "
                "version, or move the damaged files out of versions/ (`fercurate check` lists them)"
            )
        for info in infos:
            if info.version == wanted:
                return info
        known = ", ".join(i.version for i in infos)
        raise WorkspaceError(f"unknown version '{spec}' in workspace {self.root}; versions: {known}")

    def read(self, spec: str | None = None) -> tuple[VersionInfo, pd.DataFrame]:
        """The record and manifest of a version, after checking the Parquet file is the one recorded.

        Raises:
            WorkspaceError: for an unknown or damaged version, or a Parquet file whose sha256 is not
                the one its record holds.
        """
        info = self.resolve(spec)
        problem = self.verify(info)
        if problem is not None:
            raise WorkspaceError(f"version {info.version} is damaged: {problem}")
        return info, read_manifest(Path(info.path))

    def verify(self, info: VersionInfo) -> str | None:
        """Why the Parquet file of ``info`` cannot be trusted (one line), or None when it is sound.

        With a recorded sha256 (every version written since fercurate recorded it), the file's bytes
        are hashed: about 1 ms of CPU per MB, 5 ms for a 100K-row manifest that takes 85 ms to read
        (docs/workspace.md). An older record has no hash to check; then only the file's Parquet
        footer is read, so a truncated file is still caught.
        """
        path = Path(info.path)
        if info.file_sha256 is not None:
            try:
                actual = file_sha256(path)
            except OSError as exc:
                return f"{path} cannot be read ({exc.strerror or exc})"
            if actual != info.file_sha256:
                record = self.versions_dir / f"{info.version}.json"
                return (
                    f"{path.name} (sha256 {actual[:12]}) is not the file its record {record} names "
                    f"(sha256 {info.file_sha256[:12]}); restore the file, or move both out of versions/"
                )
            return None
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowInvalid) as exc:
            return f"{path.name} is not readable Parquet ({str(exc).splitlines()[0]})"
        return None

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
        # numbered after every record, damaged ones too: a damaged version is evidence, never overwritten
        taken = [int(m.stem[1:]) for m in self.versions_dir.glob("v*.json") if _VERSION_RE.match(m.stem)]
        number = max(taken) + 1 if taken else 0
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
            "file_sha256": file_sha256(parquet),
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
    def lock(self, command: str, *, create: bool = False) -> Iterator[None]:
        """Hold the workspace's write lock while the block runs.

        Only a command that starts a workspace (``create``: scan, the demo) makes its folder; any
        other stops with the "run fercurate scan first" error where there is no workspace yet, and
        leaves no empty folder behind.

        The lock is an OS lock (``flock``; ``msvcrt.locking`` on Windows) on ``.lock``, a file that is
        never deleted: taking it is one atomic system call, and the OS drops it when its process ends
        however it ends, so a killed command never leaves the workspace locked and no process ever
        has to judge another's lock stale. The holder writes who it is into the file, for the
        message a refused writer prints. Once held, temp files that killed writers left in
        ``versions/`` are removed: only a holder of the lock writes there, so none is live.

        Raises:
            WorkspaceError: when another process holds the lock, or (without ``create``) when there
                is no workspace.
        """
        if not create and not self.root.is_dir():
            self.require_versions()
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                holder = _read_lock(lock_path)
                if holder is None:
                    who = "another process"  # it has the lock but has not written its name yet
                else:
                    since = datetime.fromtimestamp(holder.get("since", 0)).strftime("%H:%M:%S")
                    pid, host = holder.get("pid"), holder.get("host")
                    who = f"`{holder.get('command', '?')}` (pid {pid} on {host}, since {since})"
                raise WorkspaceError(f"workspace {self.root} is locked by {who}; wait for it to finish")
            record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(record).encode())
            try:
                self._remove_litter()
                yield
            finally:
                os.ftruncate(fd, 0)  # a later reader must not name a process that is gone
                _unlock(fd)
        finally:
            os.close(fd)

    def _remove_litter(self) -> None:
        """Delete the temp files killed writers left in ``versions/``."""
        if self.versions_dir.is_dir():
            for tmp in self.versions_dir.glob(".v*.tmp"):
                tmp.unlink(missing_ok=True)  # only commit writes here, and only under the lock we hold


def _try_lock(fd: int) -> bool:
    """Take the OS lock on ``fd`` without waiting; False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise WorkspaceError(f"cannot lock {fd}: {exc.strerror or exc}") from exc
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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


class ShaKeyedCache:
    """Fixed-shape values (one numpy row each) keyed by a file's sha256: the workspace's caches.

    Stored as chunks of a ``sha256`` string column and a value column in one folder, in Arrow's IPC
    file format, uncompressed: read back through a memory map, a chunk of 20,000 faces' pixels (46
    MB) takes milliseconds, where the same data as Parquet took 0.2-0.4 s to decode (Parquet chunks
    written by earlier versions are still read). Each writer adds a chunk atomically, so a killed
    writer leaves the cache consistent (and two writers racing at worst store a value twice). An
    instance reads the keys of every chunk on first use and their values on the first lookup, once;
    a lookup joins the asked shas against the cached ones in Arrow, one vectorised call for the
    whole batch.

    Subclasses name the value column and convert values between Arrow and numpy.
    """

    #: the name of the value column in each chunk
    column: ClassVar[str]

    def __init__(self, folder: Path, shape: tuple[int, ...], dtype: type[np.generic]) -> None:
        self.dir = folder
        self.shape = shape
        self.dtype = np.dtype(dtype)
        # the sha256 keys of the chunks on disk, then of what this instance added, in order (read on
        # first use); and their values, chunk by chunk in the same order: an array this instance
        # added and kept, or the chunk file to read them from when asked (adding needs the keys only)
        self._keys: list[pa.Array] | None = None
        self._parts: list[tuple[int, np.ndarray | Path]] = []

    def to_arrow(self, values: np.ndarray) -> pa.Array:
        """The value column of a chunk holding ``values`` (``(N, *shape)``, C-contiguous)."""
        raise NotImplementedError

    def from_arrow(self, column: pa.ChunkedArray) -> np.ndarray:
        """The ``(N, *shape)`` values a chunk's value column holds."""
        raise NotImplementedError

    def get(self, shas: Sequence[str], out: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
        """Values for ``shas`` (zeros where missing) and the positions that were missing.

        Chunks are read one at a time (a memory map each) and only for the values asked for, so a
        lookup holds the answer and one chunk, never the whole cache. ``out``, when given, is a
        zeroed ``(len(shas), *shape)`` array to fill (a memory-mapped one, :func:`mapped_array`, is
        filled a chunk at a time: only one chunk's pages are resident at once).
        """
        rows = _rows_in(pa.array(shas, pa.string()), self._cached_keys())
        if out is None:
            out = np.zeros((len(shas), *self.shape), dtype=self.dtype)
        # the asked positions sorted by cached row: each chunk's hits are one slice of them
        order = np.argsort(rows, kind="stable")
        ends = np.cumsum([count for count, _ in self._parts])
        bounds = np.searchsorted(rows[order], np.concatenate([[0], ends]))
        for (count, part), lo, hi, end in zip(self._parts, bounds[:-1], bounds[1:], ends, strict=True):
            if hi > lo:
                hit = order[lo:hi]
                values = part if isinstance(part, np.ndarray) else self.from_arrow(_read_chunk(part, self.column))
                out[hit] = values.take(rows[hit] - (end - count), axis=0)
                del values  # a chunk read from disk: unmapped before the next one
                release_pages(out)  # a mapped answer: what was written stays in the page cache
        return out, np.flatnonzero(rows < 0).tolist()

    def add(self, shas: Sequence[str], values: np.ndarray) -> None:
        """Store the values of shas not cached yet (of a sha given twice, the first).

        The cache keeps ``values`` (or the rows it stores) without copying: do not change them afterwards.
        """
        self.add_batches([(shas, values)])

    def add_batches(self, batches: Sequence[tuple[Sequence[str], np.ndarray]], *, keep: bool = True) -> None:
        """:meth:`add` for consecutive ``(shas, values)`` batches, stored as one chunk without joining them.

        With ``keep`` False the values are not kept in memory (a later :meth:`get` reads them back from
        the chunk): a stage that streams a million faces through the cache holds one chunk at a time.
        """
        keys = [pa.array(shas, pa.string()) for shas, _ in batches]
        every = pa.chunked_array(keys, pa.string())
        first = pc.index_in(every, value_set=every).to_numpy()
        fresh = (first == np.arange(len(first))) & (_rows_in(every, self._cached_keys()) < 0)
        new_keys: list[pa.Array] = []
        new_values: list[np.ndarray] = []
        start = 0
        for (_, values), batch_keys in zip(batches, keys, strict=True):
            new = fresh[start : start + len(batch_keys)]
            start += len(batch_keys)
            if new.all():
                new_keys.append(batch_keys)
                new_values.append(np.ascontiguousarray(values, dtype=self.dtype))
            elif new.any():
                new_keys.append(batch_keys.filter(new))
                new_values.append(np.ascontiguousarray(values[new], dtype=self.dtype))
        if not new_keys:
            return
        table = pa.table(
            {
                "sha256": pa.chunked_array(new_keys, pa.string()),
                self.column: pa.chunked_array([self.to_arrow(v) for v in new_values]),
            }
        )
        path = self.dir / f"{time.time_ns()}-{os.getpid()}.arrow"
        atomic_write(path, lambda tmp: _write_ipc(table, tmp))
        self._cached_keys().extend(new_keys)
        if keep:
            self._parts.extend((len(v), v) for v in new_values)
        else:
            self._parts.append((table.num_rows, path))

    def _cached_keys(self) -> list[pa.Array]:
        if self._keys is None:
            chunks = [*self.dir.glob("*.arrow"), *self.dir.glob("*.parquet")] if self.dir.is_dir() else []
            self._keys = []
            for f in sorted(chunks, key=lambda f: f.name):  # time_ns names: the order they were written
                keys = _read_chunk(f, "sha256")
                self._keys.extend(keys.chunks)
                self._parts.append((len(keys), f))
        return self._keys


def _write_ipc(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_chunk(path: Path, column: str) -> pa.ChunkedArray:
    """One column of a cache chunk: Arrow IPC through a memory map, or Parquet (earlier versions)."""
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=[column])[column]
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()[column]


def _rows_in(keys: pa.Array | pa.ChunkedArray, cached: list[pa.Array]) -> np.ndarray:
    """For each of ``keys``, its row among the ``cached`` keys (chunks in order), or -1."""
    rows = pc.index_in(keys, value_set=pa.chunked_array(cached, pa.string()))
    return rows.fill_null(-1).to_numpy().astype(np.intp)


class PixelCache(ShaKeyedCache):
    """Decoded grayscale pixels (size x size, uint8) keyed by the file's sha256.

    Scan and merge-affectnet fill it while they decode anyway, so dedup, training and review never
    decode a file twice. Chunks live under ``cache/pixels-<size>/`` with one uncompressed
    ``fixed_size_binary(size * size)`` value per image: faces barely compress (zstd saves 5 %),
    and fixed-size values come back as one buffer that numpy reads in place.
    """

    column = "pixels"

    def __init__(self, workspace: Workspace, size: int = 48) -> None:
        super().__init__(workspace.cache_dir / f"pixels-{size}", (size, size), np.uint8)
        self.size = size

    def to_arrow(self, values: np.ndarray) -> pa.Array:
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(self.size * self.size), len(values), [None, pa.py_buffer(values)]
        )

    def from_arrow(self, column: pa.ChunkedArray) -> np.ndarray:
        width = self.size * self.size
        if not pa.types.is_fixed_size_binary(column.type):
            # chunks written by earlier versions hold the same bytes as variable-length binary
            column = column.cast(pa.binary(width))
        parts = [
            np.frombuffer(chunk.buffers()[1], np.uint8, count=len(chunk) * width, offset=chunk.offset * width)
            for chunk in column.chunks
            if len(chunk)
        ]
        if not parts:
            return np.zeros((0, self.size, self.size), dtype=np.uint8)
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return flat.reshape(-1, self.size, self.size)


def load_pixels(
    workspace: Workspace,
    info: VersionInfo,
    rows: pd.DataFrame,
    size: int = 48,
    progress: Any = None,
    *,
    mapped: bool = False,
) -> np.ndarray:
    """Grayscale ``size`` x ``size`` pixels for ``rows`` (in row order), from the cache or decoded.

    Images missing from the :class:`PixelCache` are decoded in parallel and added to it, so each file
    is decoded once per workspace and size. Rows whose file cannot be decoded get zeros. With
    ``mapped``, the array lives in a memory-mapped temp file (:func:`mapped_array`), not in this
    process's own memory: for a stage that holds a million faces (2.3 GB) while it works.
    """
    import functools

    from fercurate.images import apply_batches, load_gray_files

    cache = PixelCache(workspace, size)
    shas = rows[Col.SHA256].astype(str).tolist()
    shape = (len(shas), size, size)
    pixels, missing = cache.get(shas, mapped_array(workspace.cache_dir, shape) if mapped else None)
    if missing:
        root = workspace.dataset_root(info)
        paths = [str(workspace.resolve_image_path(str(rows[Col.PATH].iloc[i]), root)) for i in missing]
        if progress is not None:
            progress.start("Decoding images", len(paths))
        decoded = np.concatenate(
            apply_batches(
                functools.partial(load_gray_files, size=size),
                paths,
                batch_size=256,
                progress=progress.advance if progress is not None else None,
            )
        )
        pixels[missing] = decoded
        cache.add([shas[i] for i in missing], decoded)
    release_pages(pixels)
    return pixels


def mapped_array(folder: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array of ``shape`` backed by a temp file in ``folder`` rather than by memory.

    Its pages live in the OS page cache, which the kernel may write out and drop under memory
    pressure, so a process holding gigabytes of pixels this way does not need that much memory of
    its own. The file is unlinked at once (POSIX keeps it while mapped): a killed process leaves
    nothing behind. Elsewhere (Windows) this is a plain in-memory array.
    """
    nbytes = int(np.prod(shape))
    if nbytes == 0 or os.name != "posix":
        return np.zeros(shape, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".mapped-", suffix=".tmp")
    try:
        os.unlink(name)
        os.ftruncate(fd, nbytes)  # a sparse file: reads as zeros, takes no disk until written
        mapping = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    return np.frombuffer(mapping, dtype=np.uint8).reshape(shape)


def release_pages(array: np.ndarray) -> None:
    """Drop a :func:`mapped_array`'s pages from this process's resident memory (they stay in the
    page cache and come back on the next read); no effect on an ordinary array."""
    mapping = _mapping(array)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def is_mapped(array: np.ndarray) -> bool:
    """Whether ``array`` (or the array it views) is a :func:`mapped_array`."""
    return _mapping(array) is not None


def _mapping(array: np.ndarray) -> mmap.mmap | None:
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None
