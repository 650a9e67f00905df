"""The demo's rows and files: per-class and per-split counts, encoding, mapping tasks, atomic writing."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fercurate.demo.params import MINORITY_CLASS, MINORITY_SHARE, SPLIT_FRACTIONS


def encode(arr: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if fmt == "PNG":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def map_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int) -> list[Any]:
    if workers <= 1 or len(tasks) < 64:
        return [fn(t) for t in tasks]
    chunk = max(8, len(tasks) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, tasks, chunksize=chunk))


# --------------------------------------------------------------------------------------------
# Planning the messy dataset
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: int
    split: str
    given_label: str
    true_label: str | None
    intensity: float | None
    identity: int
    fmt: str = "JPEG"
    mode: str | None = "L"
    invalid_reason: str | None = None
    dup_of: int | None = None  # row index of the original
    dup_transform: str | None = None
    burst_of: int | None = None  # row index of the frame this one was shot beside
    # (zoom, dx, dy) of a face box to redraw the original's photo with; None: the bytes are set
    box: tuple[float, float, float] | None = None
    data: bytes = b""

    @property
    def ext(self) -> str:
        return "png" if self.fmt == "PNG" else "jpg"

    def path(self) -> str:
        return f"{self.split}/{self.given_label}/{self.name}.{self.ext}"


def class_counts(n: int, classes: Sequence[str], rng: np.random.Generator) -> dict[str, int]:
    weights = np.array([MINORITY_SHARE if c == MINORITY_CLASS else rng.uniform(0.97, 1.0) for c in classes])
    if MINORITY_CLASS in classes:
        # The minority share is relative to the largest class, so pin it after the jitter.
        weights[list(classes).index(MINORITY_CLASS)] = MINORITY_SHARE * weights.max()
    raw = weights / weights.sum() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(counts - raw)[: n - counts.sum()]:
        counts[i] += 1
    return dict(zip(classes, (int(v) for v in counts), strict=True))


def split_counts(n: int) -> dict[str, int]:
    test = max(1, round(n * SPLIT_FRACTIONS["test"])) if n >= 2 else 0
    validation = round(n * SPLIT_FRACTIONS["validation"])
    return {"train": n - validation - test, "validation": validation, "test": test}


def write_files(files: list[tuple[Path, bytes]]) -> None:
    """Write many small files. Threads, because on slow file systems opening a file costs more
    than writing it, and ``open`` releases the GIL."""
    for folder in {path.parent for path, _ in files}:
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: item[0].write_bytes(item[1]), files))
