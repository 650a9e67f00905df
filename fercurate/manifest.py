"""The manifest: one table, one row per image file, defined once here.

A manifest version is an immutable Parquet file. Every stage reads one version and writes a new one;
none edits an old one. The columns below are the ones every version has; later stages add their own
(for example ``phash``, ``dup_group`` or ``prob_<class>``), which are carried forward untouched by
stages that do not know them.

Paths: for scanned files ``path`` is relative to the dataset root recorded in the version's metadata;
for images the workspace itself holds (FER2013 CSV pixels, converted AffectNet faces) it starts with
``@store/`` and is relative to the workspace.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fercurate.errors import WorkspaceError


class Col:
    """Column names shared by every stage (use these, not string literals)."""

    IMAGE_ID = "image_id"
    PATH = "path"
    SPLIT = "split"
    LABEL = "label"
    SPLIT_ORIGINAL = "split_original"
    LABEL_ORIGINAL = "label_original"
    SOURCE = "source"
    STATUS = "status"
    REASON = "reason"
    WIDTH = "width"
    HEIGHT = "height"
    MODE = "mode"
    SHA256 = "sha256"


SPLITS: tuple[str, ...] = ("train", "val", "test")
STATUSES: tuple[str, ...] = ("active", "removed", "invalid")
ACTIVE, REMOVED, INVALID = STATUSES
SOURCE_ORIGINAL = "original"
STORE_PREFIX = "@store/"

#: The columns every version has, in this order. Extra stage columns follow them.
SCHEMA = pa.schema(
    [
        pa.field(Col.IMAGE_ID, pa.string(), nullable=False),
        pa.field(Col.PATH, pa.string(), nullable=False),
        pa.field(Col.SPLIT, pa.string(), nullable=False),
        pa.field(Col.LABEL, pa.string(), nullable=False),
        pa.field(Col.SPLIT_ORIGINAL, pa.string(), nullable=False),
        pa.field(Col.LABEL_ORIGINAL, pa.string(), nullable=False),
        pa.field(Col.SOURCE, pa.string(), nullable=False),
        pa.field(Col.STATUS, pa.string(), nullable=False),
        pa.field(Col.REASON, pa.string()),
        pa.field(Col.WIDTH, pa.int32()),
        pa.field(Col.HEIGHT, pa.int32()),
        pa.field(Col.MODE, pa.string()),
        pa.field(Col.SHA256, pa.string()),
    ]
)
BASE_COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

#: The seven FER2013 classes in their CSV emotion-code order (0-6).
FER2013_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Folder-name aliases folded onto canonical class names.
CLASS_ALIASES: dict[str, str] = {
    "happiness": "happy",
    "sadness": "sad",
    "anger": "angry",
    "surprised": "surprise",
    "fearful": "fear",
    "scared": "fear",
    "disgusted": "disgust",
    "neutrality": "neutral",
    "calm": "neutral",
}

#: Every class name fercurate recognises without ``--classes``.
KNOWN_CLASSES: tuple[str, ...] = (*FER2013_CLASSES, "contempt")


def canonical_class(name: str) -> str:
    """Fold a folder or CSV class name onto its canonical lower-case form."""
    key = name.strip().lower().replace(" ", "_")
    return CLASS_ALIASES.get(key, key)


def image_id_for(key: str) -> str:
    """A stable 16-hex-digit id derived from what identifies an image at its source."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()


def empty_manifest() -> pd.DataFrame:
    """A manifest with the base columns and no rows."""
    return SCHEMA.empty_table().to_pandas()


def to_table(df: pd.DataFrame) -> pa.Table:
    """Convert a manifest frame to an Arrow table with the base schema enforced.

    Raises:
        WorkspaceError: when a base column is missing or a value breaks the schema.
    """
    validate(df)
    ordered = [*BASE_COLUMNS, *[c for c in df.columns if c not in BASE_COLUMNS]]
    table = pa.Table.from_pandas(df[ordered], preserve_index=False)
    fields = []
    for name in ordered:
        base = SCHEMA.field(name) if name in BASE_COLUMNS else None
        fields.append(base if base is not None else table.schema.field(name))
    try:
        return table.cast(pa.schema(fields))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise WorkspaceError(f"manifest does not match the schema: {exc}") from exc


def validate(df: pd.DataFrame) -> None:
    """Check the invariants every manifest version keeps.

    Raises:
        WorkspaceError: naming the first broken invariant.
    """
    missing = [c for c in BASE_COLUMNS if c not in df.columns]
    if missing:
        raise WorkspaceError(f"manifest is missing columns: {', '.join(missing)}")
    for col in (Col.IMAGE_ID, Col.PATH, Col.SPLIT, Col.LABEL, Col.SOURCE, Col.STATUS):
        if df[col].isna().any():
            raise WorkspaceError(f"manifest column '{col}' has missing values")
    if df[Col.IMAGE_ID].duplicated().any():
        dup = df.loc[df[Col.IMAGE_ID].duplicated(), Col.IMAGE_ID].iloc[0]
        raise WorkspaceError(f"manifest has a repeated image_id '{dup}'")
    _check_values(df[Col.SPLIT], SPLITS, Col.SPLIT)
    _check_values(df[Col.STATUS], STATUSES, Col.STATUS)


def _check_values(series: pd.Series, allowed: Iterable[str], col: str) -> None:
    bad = set(series.unique()) - set(allowed)
    if bad:
        raise WorkspaceError(
            f"manifest column '{col}' has value(s) {sorted(map(str, bad))}; allowed: {', '.join(allowed)}"
        )


def content_hash(df: pd.DataFrame) -> str:
    """A hash of the table's content, independent of row order and of the Parquet encoding."""
    ordered = df.sort_values(Col.IMAGE_ID, kind="stable")
    columns = sorted(ordered.columns)
    hashed = pd.util.hash_pandas_object(ordered[columns].astype("string"), index=False)
    h = hashlib.sha256()
    h.update(",".join(columns).encode())
    h.update(hashed.to_numpy().tobytes())
    return h.hexdigest()[:16]


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """Write a manifest atomically: the file appears complete or not at all."""
    table = to_table(df)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest version, validating it.

    Raises:
        WorkspaceError: when the file is missing, unreadable or breaks the schema.
    """
    try:
        df = pq.read_table(path).to_pandas(types_mapper=_nullable_ints)
    except FileNotFoundError as exc:
        raise WorkspaceError(f"manifest file {path} does not exist") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise WorkspaceError(f"manifest file {path} is not readable Parquet: {exc}") from exc
    validate(df)
    return df


def _nullable_ints(dtype: pa.DataType) -> object:
    # integer columns with nulls must not come back as float64 ("48.0" would change the content hash)
    if pa.types.is_integer(dtype):
        return pd.api.types.pandas_dtype(str(dtype).capitalize().replace("Uint", "UInt"))
    return None


def active(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with status ``active``."""
    return df[df[Col.STATUS] == ACTIVE]


def counts_by(df: pd.DataFrame, *cols: str) -> dict[str, int]:
    """Row counts keyed by the values of ``cols`` joined with '/'."""
    if df.empty:
        return {}
    grouped = df.groupby(list(cols), dropna=False).size()
    out: dict[str, int] = {}
    for key, n in grouped.items():
        parts = key if isinstance(key, tuple) else (key,)
        out["/".join(str(p) for p in parts)] = int(n)
    return out


def atomic_write(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``.

    The temp file lives in the same folder so the rename is atomic on POSIX; on any failure it is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a binary file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
