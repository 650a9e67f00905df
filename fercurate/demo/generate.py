"""A procedural, deliberately messy FER-like demo dataset with ground truth.

``generate_demo`` writes, under one destination folder:

- ``dataset/{train,validation,test}/<class>/<id>.jpg``: 48x48 grayscale faces laid out like the
  Kaggle "Facial_emotion_images" set, with the faults that set is known for: lopsided splits, an
  under-represented class, wrong labels (mostly sad <-> neutral), near-duplicates across splits,
  invalid files, and a few RGB images and PNGs among the JPEGs.
- ``truth.parquet`` and ``TRUTH.md``: what every file really is, so each cleaning stage can be
  scored against the truth.
- ``affectnet/``: an AffectNet-style source (larger colour images, a face box per row, the official
  ``training.csv`` columns) with a few planted faults, and its own ``truth.parquet``.

Faces come from one small renderer (:func:`render_face`): PIL shapes drawn supersampled and
downsampled, so they are anti-aliased. Sad and neutral are drawn from one continuous "sadness"
intensity whose two class ranges overlap, so some images are genuinely ambiguous and a classifier
cannot reach 100% even on clean labels; a faint smile or surprise is close to a neutral face. A
quarter of the faces have a hand, a strand of hair or an object over part of the face, and some are
soft (small faces upscaled), so that the demo is about as hard to learn as real FER faces
(docs/demo.md compares them).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fercurate.demo.affectnet_copy import write_affectnet
from fercurate.demo.faces import Identity, make_identity, render_face
from fercurate.demo.faults import plan_originals, plant_bursts, plant_duplicates, plant_invalid
from fercurate.demo.files import Row, encode, map_tasks, write_files
from fercurate.demo.params import (
    COPY_KINDS,
    STREAM_FAULTS,
    STREAM_IDENTITY,
    STREAM_IMAGE,
    STREAM_PLAN,
    DemoParams,
    DemoResult,
    Truth,
    truth_schema,
)
from fercurate.errors import InputError
from fercurate.manifest import atomic_write_text

#: The demo of ``fercurate demo`` without options.
DEFAULT_PARAMS = DemoParams()

# --------------------------------------------------------------------------------------------
# Per-image workers (pure functions of their task, so any process pool can map them)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FaceTask:
    seed: int
    index: int
    identity: int
    expression: str
    intensity: float
    size: int
    fmt: str  # JPEG or PNG
    mode: str  # L or RGB
    box: tuple[float, float, float] = (1.0, 0.0, 0.0)  # see render_face
    exposure: int = 0  # see render_face: 1 for a burst frame


@functools.lru_cache(maxsize=4096)
def _identity_for(seed: int, identity: int) -> Identity:
    return make_identity(np.random.default_rng([seed, STREAM_IDENTITY, identity]))


def _face_pixels(task: _FaceTask) -> tuple[np.ndarray, np.random.Generator]:
    """The task's face before encoding, and its random stream where the render left it."""
    rng = np.random.default_rng([task.seed, STREAM_IMAGE, task.index])
    who = _identity_for(task.seed, task.identity)
    arr = render_face(
        rng, task.expression, task.intensity, task.size, identity=who, box=task.box, exposure=task.exposure
    )
    return arr, rng


def _render_dataset_image(task: _FaceTask) -> bytes:
    arr, rng = _face_pixels(task)
    if task.mode == "RGB":
        # The odd RGB file in a gray set: a faint colour cast, as from a different camera.
        tint = np.array([1.0 + rng.uniform(0.02, 0.08), 1.0, 1.0 - rng.uniform(0.02, 0.08)])
        arr = np.clip(arr[..., None] * tint, 0, 255).astype(np.uint8)
    return encode(arr, task.fmt, int(rng.integers(72, 96)))


def _draw_photo(params: DemoParams, rows: list[Row], index: int, expression: str, intensity: float) -> np.ndarray:
    """Row ``index``'s photo, drawn again with another expression: its pixels, before encoding."""
    row = rows[index]
    task = _FaceTask(params.seed, index, row.identity, expression, intensity, params.image_size, row.fmt, str(row.mode))
    return _face_pixels(task)[0]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


TRUTH_MD = """\
# Demo ground truth

`dataset/` is a messy FER-like set; `truth.parquet` says what every file under it really is
(one row per file). Columns:

- `path`: relative to `dataset/`, e.g. `train/sad/10023.jpg`.
- `split`: the split folder as written (train, validation, test).
- `given_label`: the class folder the file sits in (possibly wrong).
- `true_label`: the expression actually rendered; null for invalid files.
- `mislabeled`: `given_label != true_label`.
- `intensity`: 0-1 strength of the expression. Neutral and sad share one sadness axis
  (neutral 0-0.7, sad 0.2-1.0), so images in 0.2-0.7 may be either; happy and surprise near 0 are
  faint.
- `identity`: the rendered person (several images per person); -1 for invalid files.
- `invalid_reason`: null, or empty, truncated, not_image, uniform, near_uniform, tiny.
- `dup_of`: null, or the `path` of the original this file is a copy of (originals have null).
- `dup_transform`: null, or reencode, brightness, contrast, resize, shift, exact, recrop
  (another face box on the same photo: zoom 0.85-1.15, shifted up to 3 px, redrawn), watermark
  (a semi-transparent stock-photo word), tone (a gamma curve, 0.7-1.4).
- `copy_kind`: what dedup's score counts the copy as: exact, near (reencode, brightness,
  contrast, resize, shift), recrop, watermark or tone; null for originals.
- `burst_of`: null, or the `path` of the image this one was shot beside: the same person, pose,
  light and backdrop with another, visibly different expression, in another exposure (its own
  sensor noise). A burst frame is NOT a duplicate (a hard negative for dedup); its labels are its own.
- `mode`: L or RGB as stored (null when the file is not an image); `format`: JPEG or PNG.

`affectnet/` is an AffectNet-style source: `Manually_Annotated_Images/<dir>/<name>.jpg`, the
official `training.csv` columns, and `affectnet/truth.parquet` (`subDirectory_filePath`,
`expression`, `true_label`, `intensity`, `fault`: null, missing_file, box_outside or corrupt).
"""


def _redraw(redrawn: list[Row], originals: list[Row], params: DemoParams, workers: int) -> None:
    """Render re-crops and burst frames: the original's random stream (pose, light, backdrop,
    noise) through another face box, with the row's own expression and intensity."""
    tasks = []
    for row in redrawn:
        src = row.dup_of if row.dup_of is not None else row.burst_of
        assert src is not None and row.box is not None, "only copies and burst frames are redrawn"
        original = originals[src]
        tasks.append(
            _FaceTask(
                params.seed,
                src,
                original.identity,
                str(row.true_label),
                float(row.intensity or 0.0),
                params.image_size,
                row.fmt,
                str(row.mode),
                row.box,
                exposure=int(row.burst_of is not None),
            )
        )
    for row, data in zip(redrawn, map_tasks(_render_dataset_image, tasks, workers), strict=True):
        row.data = data


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise InputError(f"demo destination {dest} is a file; choose a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise InputError(
            f"demo destination {dest} is not empty and holds no fercurate demo; choose an empty folder, "
            "or pass overwrite to write the demo beside what is there",
            param="overwrite",
        )


def _truth_table(rows: list[Row]) -> Any:
    import pyarrow as pa

    paths = [r.path() for r in rows]
    columns = {
        Truth.PATH: paths,
        Truth.SPLIT: [r.split for r in rows],
        Truth.GIVEN_LABEL: [r.given_label for r in rows],
        Truth.TRUE_LABEL: [r.true_label for r in rows],
        Truth.MISLABELED: [r.true_label is not None and r.given_label != r.true_label for r in rows],
        Truth.INTENSITY: [r.intensity for r in rows],
        Truth.IDENTITY: [r.identity for r in rows],
        Truth.INVALID_REASON: [r.invalid_reason for r in rows],
        Truth.DUP_OF: [paths[r.dup_of] if r.dup_of is not None else None for r in rows],
        Truth.DUP_TRANSFORM: [r.dup_transform for r in rows],
        Truth.COPY_KIND: [COPY_KINDS[r.dup_transform] if r.dup_transform else None for r in rows],
        Truth.BURST_OF: [paths[r.burst_of] if r.burst_of is not None else None for r in rows],
        Truth.MODE: [r.mode for r in rows],
        Truth.FORMAT: [r.fmt for r in rows],
    }
    return pa.table(columns, schema=truth_schema())


def _default_workers() -> int:
    from fercurate.images import default_workers

    return min(8, default_workers())


def generate_demo(
    dest: Path,
    params: DemoParams = DEFAULT_PARAMS,
    *,
    overwrite: bool = False,
    workers: int | None = None,
) -> DemoResult:
    """Write a messy FER-like demo dataset, its ground truth and an AffectNet-style source.

    Everything is built in a hidden folder inside ``dest`` and moved into place at the end, so an
    interrupted run leaves no half-written dataset; a record of the params (``fercurate-demo.json``)
    is written last. A complete demo made with the same params by the same drawing code
    (:func:`generator_fingerprint`) is reused as it is, and a demo made with other params or by
    another version's code is replaced, so the Quick start re-runs as written and its figures are
    this version's. With ``overwrite`` (or over
    an earlier demo) the demo's own entries (``dataset/``, ``affectnet/``, ``truth.parquet``,
    ``TRUTH.md``) are replaced; other files in ``dest`` are left alone. The same ``params`` always
    give byte-identical files, whatever ``workers`` is.

    Args:
        dest: the destination folder; created if missing, must be empty or hold an earlier demo unless
            ``overwrite``.
        params: sizes, fault rates, classes and seed.
        overwrite: write the demo into a non-empty ``dest`` that holds no earlier demo.
        workers: processes for rendering; defaults to the available cores (at most 8).

    Returns:
        Where things were written and how many of each were planted.

    Raises:
        InputError: bad params, or a non-empty ``dest`` that holds no demo, without ``overwrite``.
    """
    dest = Path(dest)
    previous = demo_record(dest)
    if (
        previous is not None
        and previous.get("params") == _params_record(params)
        and previous.get("generator") == generator_fingerprint()
        and _complete(dest)
    ):
        return _result(dest, previous["counts"], "reused")
    _check_dest(dest, overwrite or previous is not None)
    n_workers = workers if workers is not None else _default_workers()

    rng = np.random.default_rng([params.seed, STREAM_PLAN])
    rows = plan_originals(params, rng)
    tasks = [
        _FaceTask(
            params.seed,
            i,
            r.identity,
            str(r.true_label),
            float(r.intensity or 0.0),
            params.image_size,
            r.fmt,
            str(r.mode),
        )
        for i, r in enumerate(rows)
    ]
    for row, data in zip(rows, map_tasks(_render_dataset_image, tasks, n_workers), strict=True):
        row.data = data

    fault_rng = np.random.default_rng([params.seed, STREAM_FAULTS])
    copies = plant_duplicates(rows, params, fault_rng)
    bursts = plant_bursts(rows, params, fault_rng, functools.partial(_draw_photo, params, rows))
    _redraw([r for r in copies + bursts if r.box is not None], rows, params, n_workers)
    donor = _render_dataset_image(_FaceTask(params.seed, len(rows), 0, "neutral", 0.2, params.image_size, "JPEG", "L"))
    invalid = plant_invalid(params, donor, fault_rng)
    everything = rows + copies + bursts + invalid
    # Numeric names, unique across the whole dataset, in no particular order.
    names = fault_rng.choice(np.arange(10000, 10000 + 20 * len(everything)), size=len(everything), replace=False)
    for row, name in zip(everything, names, strict=True):
        row.name = int(name)

    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=dest))
    try:
        write_files([(tmp / "dataset" / row.path(), row.data) for row in everything])
        import pyarrow.parquet as pq

        pq.write_table(_truth_table(everything), tmp / "truth.parquet")
        (tmp / "TRUTH.md").write_text(TRUTH_MD, encoding="utf-8")
        affect_counts = write_affectnet(tmp / "affectnet", params, n_workers)
        (dest / DEMO_RECORD).unlink(missing_ok=True)  # a demo half replaced is no demo to reuse
        for name in ("dataset", "affectnet", "truth.parquet", "TRUTH.md"):
            target = dest / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (tmp / name).rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)

    counts: dict[str, int] = {
        "files": len(everything),
        "images": len(rows),
        "mislabeled": sum(r.true_label is not None and r.given_label != r.true_label for r in everything),
        "duplicates": len(copies),
        "bursts": len(bursts),
        "invalid": len(invalid),
        "rgb": sum(r.mode == "RGB" for r in everything),
        "png": sum(r.fmt == "PNG" for r in everything),
        **affect_counts,
    }
    record = {
        "made_by": "fercurate demo",
        "generator": generator_fingerprint(),
        "params": _params_record(params),
        "counts": counts,
    }
    atomic_write_text(dest / DEMO_RECORD, json.dumps(record, indent=2))  # last: the demo is complete
    return _result(dest, counts, "replaced" if previous is not None else "written")


#: written into a demo's folder once the demo is complete: what made it, with which params
DEMO_RECORD = "fercurate-demo.json"

#: The modules whose code draws a demo (``run.py`` scores one and is not among them).
GENERATOR_MODULES = ("params.py", "faces.py", "faults.py", "files.py", "generate.py", "affectnet_copy.py")


def generator_fingerprint() -> str:
    """A hash of the code that draws a demo, kept in its record: a demo drawn by another version's
    code (its faces, faults or truth may differ) is drawn again rather than reused."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in GENERATOR_MODULES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()[:16]


def demo_record(dest: Path) -> dict[str, Any] | None:
    """The record a fercurate demo left in ``dest`` (its params and counts), or None when there is none."""
    try:
        record = json.loads((Path(dest) / DEMO_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("made_by") != "fercurate demo":
        return None
    return record


def _complete(dest: Path) -> bool:
    return all((dest / name).exists() for name in ("dataset", "affectnet", "truth.parquet", "TRUTH.md"))


def _params_record(params: DemoParams) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(params)))  # tuples as lists, as the record reads back


def _result(dest: Path, counts: dict[str, int], action: str) -> DemoResult:
    return DemoResult(
        dest=dest,
        dataset_dir=dest / "dataset",
        truth_path=dest / "truth.parquet",
        affectnet_dir=dest / "affectnet",
        affectnet_csv=dest / "affectnet" / "training.csv",
        counts=dict(counts),
        action=action,
    )
