"""The manifest: one table, one row per image file, defined once here.

A manifest version is an immutable Parquet file. Every stage reads one version and writes a new one;
none edits an old one. :data:`SCHEMA` holds the columns every version has; later stages add their own
(for example ``phash``, ``dup_group`` or ``prob_<class>``), which are carried forward untouched by
stages that do not know them.

Every column any stage writes is declared once, in :data:`COLUMNS`, with its Arrow type and the stage
that owns it; :func:`to_table` casts each declared column to its type when a version is written, and
code names columns through :class:`Col`, never as string literals. To add a column: give it a name in
:class:`Col` and a :class:`Column` line in :data:`COLUMNS` (a per-class family such as ``prob_<class>``
is one line with ``family=True`` and the prefix as its name).

Paths: for scanned files ``path`` is relative to the dataset root recorded in the version's metadata;
for images the workspace itself holds (FER2013 CSV pixels, converted AffectNet faces) it starts with
``@store/`` and is relative to the workspace.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
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

    # dedup (besides the hash column, named after the hasher: one of HASH_COLUMNS)
    DUP_GROUP = "dup_group"
    DUP_GROUP_SIZE = "dup_group_size"
    DUP_KIND = "dup_kind"
    DUP_NEAREST = "dup_nearest"
    DUP_SIMILARITY = "dup_similarity"
    RELATED_GROUP = "related_group"
    RELATED_GROUP_SIZE = "related_group_size"
    HASH_COLUMNS = ("phash", "dhash", "whash", "ahash")

    # relabel-review flag (stage relabel-flag)
    PROB_PREFIX = "prob_"
    MISLABEL_SCORE = "mislabel_score"
    SUGGESTED_LABEL = "suggested_label"
    FLAGGED = "flagged"
    P_LABEL_WRONG = "p_label_wrong"
    P_SUGGESTED_TRUE = "p_suggested_true"
    QUEUE_RANK = "queue_rank"
    IN_BUDGET = "in_budget"

    # merge-affectnet
    SOURCE_PATH = "source_path"
    SOURCE_LABEL = "source_label"
    FACE_X = "face_x"
    FACE_Y = "face_y"
    FACE_WIDTH = "face_width"
    FACE_HEIGHT = "face_height"

    @staticmethod
    def prob(cls: str) -> str:
        """The column holding the out-of-fold probability of class ``cls``."""
        return f"{Col.PROB_PREFIX}{cls}"


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


@dataclass(frozen=True)
class Column:
    """One declared manifest column: its name, Arrow type, the stage that writes it, and what it holds.

    With ``family=True`` the name is a prefix and the declaration covers one column per class
    (``prob_happy``, ``prob_sad``, ...).
    """

    name: str
    type: pa.DataType
    stage: str
    doc: str
    family: bool = False

    def matches(self, column: str) -> bool:
        """Whether ``column`` is this column (or, for a family, one of its members)."""
        return column.startswith(self.name) and len(column) > len(self.name) if self.family else column == self.name


_BASE_DOCS = {
    Col.IMAGE_ID: "stable id of the image at its source",
    Col.PATH: "file path (relative to the dataset root, or @store/... inside the workspace)",
    Col.SPLIT: "train, val or test",
    Col.LABEL: "the class",
    Col.SPLIT_ORIGINAL: "the split the dataset itself gave",
    Col.LABEL_ORIGINAL: "the label the dataset itself gave",
    Col.SOURCE: "where the row came from: original, affectnet, ...",
    Col.STATUS: "active, removed or invalid",
    Col.REASON: "why a row is not active, or what changed it",
    Col.WIDTH: "width of the original image in pixels",
    Col.HEIGHT: "height of the original image in pixels",
    Col.MODE: "PIL mode of the original image",
    Col.SHA256: "sha256 of the file's bytes",
}

# -- annotator votes (written by fercurate.votes; null on rows without votes) ----------------------
#: FER+'s ten vote classes, in the column order of its ``label.csv`` and ``fer2013new.csv``.
VOTE_CLASSES: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)


class VoteCol:
    """Columns of the annotator votes: one count per FER+ class, then statistics and provenance."""

    PREFIX = "votes_"
    N = "vote_n"  # votes cast (FER+: about 10 per image)
    MAJORITY = "vote_majority"  # the dataset class the votes pick under the import's scheme, or null
    AGREEMENT = "vote_agreement"  # share of the votes the most-voted class got
    ENTROPY = "vote_entropy"  # entropy of the vote distribution over the ten classes, in bits
    IMAGE = "vote_image"  # FER+'s image name (``fer0000123.png``)
    MATCH = "vote_match"  # how the row was matched: ``row`` (CSV order) or ``pixels``
    MATCH_DISTANCE = "vote_match_distance"  # RMS grey-level difference to the FER+ image (pixels)
    MATCH_MARGIN = "vote_match_margin"  # how much further the nearest untied row was
    FLAG_KIND = "flag_kind"  # relabel-review flag: wrong / ambiguous (written with votes present)


def vote_column(cls: str) -> str:
    """The count column of FER+ class ``cls`` (``votes_happiness``, ``votes_nf``)."""
    return VoteCol.PREFIX + cls.lower()


VOTE_COUNT_COLUMNS: tuple[str, ...] = tuple(vote_column(c) for c in VOTE_CLASSES)
#: The vote columns' declarations (part of :data:`COLUMNS`).
VOTE_DECLARATIONS: tuple[Column, ...] = (
    *(Column(vote_column(c), pa.int16(), "votes-import", f"annotator votes for {c} (FER+)") for c in VOTE_CLASSES),
    Column(VoteCol.N, pa.int16(), "votes-import", "annotator votes cast"),
    Column(VoteCol.MAJORITY, pa.string(), "votes-import", "the class the votes pick under the import's scheme"),
    Column(VoteCol.AGREEMENT, pa.float32(), "votes-import", "share of the votes the most-voted FER+ class got"),
    Column(VoteCol.ENTROPY, pa.float32(), "votes-import", "entropy of the ten-class vote distribution, bits"),
    Column(VoteCol.IMAGE, pa.string(), "votes-import", "FER+'s image name"),
    Column(VoteCol.MATCH, pa.string(), "votes-import", "how the row was matched: row, pixels or file"),
    Column(VoteCol.MATCH_DISTANCE, pa.float32(), "votes-import", "RMS grey-level difference to the FER+ image"),
    Column(VoteCol.MATCH_MARGIN, pa.float32(), "votes-import", "how much further the nearest untied row was"),
    Column(VoteCol.FLAG_KIND, pa.string(), "relabel-flag", "wrong or ambiguous (annotator votes; model: wrong)"),
)
VOTE_COLUMNS: tuple[str, ...] = tuple(c.name for c in VOTE_DECLARATIONS if c.stage == "votes-import")
# -- end of annotator votes ------------------------------------------------------------------------


#: Every column any stage writes, with its type and owning stage: the base columns first.
COLUMNS: tuple[Column, ...] = (
    *(Column(f.name, f.type, "scan", _BASE_DOCS[f.name]) for f in SCHEMA),
    # dedup
    *(Column(h, pa.string(), "dedup", f"{h} of the image as 16 hex digits") for h in Col.HASH_COLUMNS),
    Column(Col.DUP_GROUP, pa.string(), "dedup", "g + the smallest image_id of the duplicate group"),
    Column(Col.DUP_GROUP_SIZE, pa.int32(), "dedup", "members in the duplicate group"),
    Column(Col.DUP_KIND, pa.string(), "dedup", "exact, near, recrop or mirror"),
    Column(Col.DUP_NEAREST, pa.string(), "dedup", "image_id of the most similar other member"),
    Column(Col.DUP_SIMILARITY, pa.float64(), "dedup", "similarity to that member (1.0: identical pixels)"),
    Column(
        Col.RELATED_GROUP,
        pa.string(),
        "dedup",
        "r + the smallest image_id of the related group: frames of one sitting and their duplicates",
    ),
    Column(Col.RELATED_GROUP_SIZE, pa.int32(), "dedup", "members in the related group"),
    # relabel-review flag (stage relabel-flag)
    Column(Col.PROB_PREFIX, pa.float64(), "relabel-flag", "out-of-fold probability of a class", family=True),
    Column(Col.MISLABEL_SCORE, pa.float64(), "relabel-flag", "how likely the label is wrong"),
    Column(Col.SUGGESTED_LABEL, pa.string(), "relabel-flag", "the class the model suggests"),
    Column(Col.FLAGGED, pa.bool_(), "relabel-flag", "the row is in the review queue"),
    Column(Col.P_LABEL_WRONG, pa.float64(), "relabel-flag", "calibrated probability that the label is wrong"),
    Column(Col.P_SUGGESTED_TRUE, pa.float64(), "relabel-flag", "calibrated probability that the suggestion is right"),
    Column(Col.QUEUE_RANK, pa.int32(), "relabel-flag", "rank in the review queue (1 = most likely wrong)"),
    Column(Col.IN_BUDGET, pa.bool_(), "relabel-flag", "the flag is within the review budget"),
    # merge-affectnet
    Column(Col.SOURCE_PATH, pa.string(), "merge-affectnet", "path inside the AffectNet source"),
    Column(Col.SOURCE_LABEL, pa.string(), "merge-affectnet", "the class name the source gave"),
    Column(Col.FACE_X, pa.int32(), "merge-affectnet", "face box left edge in the source image"),
    Column(Col.FACE_Y, pa.int32(), "merge-affectnet", "face box top edge in the source image"),
    Column(Col.FACE_WIDTH, pa.int32(), "merge-affectnet", "face box width"),
    Column(Col.FACE_HEIGHT, pa.int32(), "merge-affectnet", "face box height"),
    # annotator votes (votes-import), and the kind of a flag (relabel-flag)
    *VOTE_DECLARATIONS,
)


def declared(column: str) -> Column | None:
    """The declaration of ``column``, or None for a column no stage writes (a user's own column)."""
    return next((c for c in COLUMNS if c.matches(column)), None)


def stage_columns(stage: str) -> tuple[Column, ...]:
    """The columns ``stage`` owns, in declaration order."""
    return tuple(c for c in COLUMNS if c.stage == stage)


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
    """Convert a manifest frame to an Arrow table, each declared column cast to its declared type.

    Raises:
        WorkspaceError: when a base column is missing or a value breaks the schema.
    """
    validate(df)
    ordered = [*BASE_COLUMNS, *[c for c in df.columns if c not in BASE_COLUMNS]]
    table = pa.Table.from_pandas(df[ordered], preserve_index=False)
    fields = []
    for name in ordered:
        if name in BASE_COLUMNS:
            fields.append(SCHEMA.field(name))
            continue
        column = declared(name)
        fields.append(pa.field(name, column.type) if column is not None else table.schema.field(name))
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
    tmp = temp_file(path.parent, path.name)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temp_file(folder: Path, name: str) -> Path:
    """A new empty file in ``folder`` (hidden, named after ``name``) to write and rename onto ``name``.

    Unlike ``tempfile.mkstemp``, whose files are private (0600), it gets the mode any new file gets
    (0644 under the usual umask 022), so what is renamed into place is readable by those who should.
    """
    return _fresh(folder, name, lambda tmp: os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))


def temp_dir(folder: Path, name: str) -> Path:
    """A new empty folder in ``folder`` to fill and rename onto ``name``; like :func:`temp_file`, it gets
    the mode any new folder gets (0755 under umask 022), not ``tempfile.mkdtemp``'s 0700."""
    return _fresh(folder, name, lambda tmp: os.mkdir(tmp, 0o777))


def _fresh(folder: Path, name: str, create) -> Path:  # type: ignore[no-untyped-def]
    for _ in range(100):
        tmp = Path(folder) / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            create(tmp)
        except FileExistsError:
            continue
        return tmp
    raise WorkspaceError(f"could not create a temporary file in {folder}; remove its .{name}.*.tmp entries")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a binary file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
