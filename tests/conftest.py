"""Shared test fixtures: small image trees generated on the fly, with crafted bad files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Rich output in CLI tests: a fixed width so tables do not wrap differently on each machine
os.environ.setdefault("COLUMNS", "120")
os.environ.pop("FERCURATE_WORKSPACE", None)
# pytest -n 2 on 2 cores: one BLAS/torch thread per worker, or the workers oversubscribe (10x slower)
os.environ.setdefault("OMP_NUM_THREADS", "1")

CLASSES = ("happy", "neutral", "sad", "surprise")


def blob_image(rng: np.random.Generator, cls: int, size: int = 48) -> np.ndarray:
    """A smooth random image whose bright blob position depends on the class (learnable, varied)."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = [(12, 12), (12, 36), (36, 12), (36, 36)][cls % 4]
    cy += rng.integers(-3, 4)
    cx += rng.integers(-3, 4)
    blob = 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0**2))
    base = rng.normal(60, 20, (size // 4, size // 4))
    base = np.kron(base, np.ones((4, 4)))
    img = np.clip(base + blob + rng.normal(0, 4, (size, size)), 0, 255)
    return img.astype(np.uint8)


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


#: Bad files every scan must survive: name -> (bytes maker, expected reason prefix)
def bad_files(rng: np.random.Generator) -> dict[str, tuple[bytes, str]]:
    good = jpeg_bytes(blob_image(rng, 0))
    return {
        "empty.jpg": (b"", "empty_file"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "text.jpg": (b"this is not an image\n" * 10, "not_an_image"),
        "uniform.png": (png_bytes(np.full((48, 48), 128, np.uint8)), "uniform"),
        "near_uniform.png": (
            png_bytes((128 + rng.integers(-1, 2, (48, 48))).astype(np.uint8)),
            "near_uniform",
        ),
        "tiny.png": (png_bytes(np.full((1, 1), 200, np.uint8)), "too_small"),
    }


def write_tree(
    root: Path,
    *,
    splits: dict[str, int] | None = None,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
    with_bad: bool = True,
    split_names: dict[str, str] | None = None,
) -> dict[str, str]:
    """Write ``root/<split>/<class>/<n>.jpg`` and return {relative path: expected invalid reason}."""
    rng = np.random.default_rng(seed)
    splits = splits or {"train": 6, "val": 3, "test": 2}
    names = split_names or {}
    counter = 0
    for split, per_class in splits.items():
        for ci, cls in enumerate(classes):
            folder = root / names.get(split, split) / cls
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(per_class):
                counter += 1
                (folder / f"{counter}.jpg").write_bytes(jpeg_bytes(blob_image(rng, ci)))
    expected: dict[str, str] = {}
    if with_bad:
        first_split = names.get(next(iter(splits)), next(iter(splits)))
        folder = root / first_split / classes[0]
        for name, (data, reason) in bad_files(rng).items():
            (folder / name).write_bytes(data)
            expected[f"{first_split}/{classes[0]}/{name}"] = reason
        rgb = np.stack([blob_image(rng, 1)] * 3, axis=-1)
        rgb[..., 0] = np.clip(rgb[..., 0].astype(int) + 30, 0, 255)
        Image.fromarray(rgb.astype(np.uint8), "RGB").save(folder / "rgb.jpg")
        Image.fromarray(blob_image(rng, 1, size=64)).save(folder / "big64.png")
    return expected


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A small split/class tree with every kind of bad file (read-only: do not modify)."""
    root = tmp_path_factory.mktemp("tree") / "Facial_emotion_images"
    expected = write_tree(root, split_names={"train": "train", "val": "validation", "test": "test"})
    return root, expected
