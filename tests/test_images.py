from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import bad_files, blob_image, jpeg_bytes, png_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from fercurate.images import (
    DEFAULT_MAX_PIXELS,
    IN_FLIGHT_PER_WORKER,
    NEAR_UNIFORM_STD,
    apply_batches,
    gray_std,
    inspect_files,
    inspect_images,
    iter_batches,
    map_batches,
    read_file,
)


def one_image_std(gray: np.ndarray) -> float:
    """The per-image formula scan used before batches: the reference for :func:`gray_std`."""
    flat = gray.reshape(-1).astype(np.float64)
    mean = float(flat.sum()) / flat.size
    return float(np.sqrt(max(0.0, float(np.dot(flat, flat)) / flat.size - mean * mean)))


def test_bad_files_get_their_reasons_and_good_ones_their_pixels() -> None:
    rng = np.random.default_rng(0)
    bad = bad_files(rng)
    good = blob_image(rng, 2)
    blobs = [jpeg_bytes(good), *(data for data, _ in bad.values())]
    found = inspect_images(blobs, 48)
    assert found["status"] == ["active"] + ["invalid"] * len(bad)
    assert found["reason"][0] is None
    for reason, (_, expected) in zip(found["reason"][1:], bad.values(), strict=True):
        assert reason is not None and reason.startswith(expected)
    assert found["sha256"] == [hashlib.sha256(b).hexdigest() for b in blobs]
    assert found["pixels"].shape == (len(blobs), 48, 48) and found["pixels"].dtype == np.uint8
    # a JPEG round trip moves pixels a little; the blob must still be there
    assert np.abs(found["pixels"][0].astype(int) - good).mean() < 3
    names = list(bad)
    # flat images are valid files: their pixels are kept (and cached) for a reviewer
    kept = {names[k - 1] for k in np.flatnonzero(found["decoded"]) if k > 0}
    assert kept == {"uniform.png", "near_uniform.png"}
    for k in np.flatnonzero(~found["decoded"]):
        assert not found["pixels"][k].any()
    assert (found["width"][names.index("tiny.png") + 1], found["mode"][names.index("tiny.png") + 1]) == (1, "L")
    assert found["width"][names.index("empty.jpg") + 1] is None


def test_rgb_and_large_images_are_converted() -> None:
    rng = np.random.default_rng(1)
    rgb = np.stack([blob_image(rng, 1, size=64)] * 3, axis=-1)
    image = Image.fromarray(rgb, "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    found = inspect_images([buf.getvalue()], 48)
    assert found["status"] == ["active"] and (found["width"], found["mode"]) == ([64], ["RGB"])
    expected = np.asarray(image.convert("L").resize((48, 48), Image.Resampling.LANCZOS))
    assert np.array_equal(found["pixels"][0], expected)


def test_an_empty_batch_has_empty_columns() -> None:
    found = inspect_images([], 32)
    assert found["sha256"] == [] and found["pixels"].shape == (0, 32, 32) and found["decoded"].shape == (0,)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9))))
def test_gray_std_is_bit_for_bit_the_one_image_formula(batch: np.ndarray) -> None:
    assert gray_std(batch).tolist() == [one_image_std(g) for g in batch]


def test_gray_std_decides_near_uniform_like_numpy() -> None:
    rng = np.random.default_rng(2)
    batch = (128 + rng.integers(-3, 4, (50, 48, 48))).astype(np.uint8)
    np.testing.assert_allclose(gray_std(batch), batch.reshape(50, -1).std(axis=1), rtol=1e-12)
    assert ((gray_std(batch) < NEAR_UNIFORM_STD) == (batch.reshape(50, -1).std(axis=1) < NEAR_UNIFORM_STD)).all()


def test_read_file_reads_files_larger_than_one_read(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "empty.bin").write_bytes(b"")
    assert read_file(str(tmp_path / "big.bin")) == data
    assert read_file(str(tmp_path / "empty.bin")) == b""


def test_unreadable_files_are_invalid_rows(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(blob_image(np.random.default_rng(4), 0)))
    found = inspect_files([str(tmp_path / "gone.jpg"), str(good), str(tmp_path)])
    assert found["status"] == ["invalid", "active", "invalid"]
    assert found["reason"][0] == "unreadable: No such file or directory"
    assert found["reason"][2] == "unreadable: Is a directory"


def _batch_ids(batch: list[int]) -> dict[str, object]:
    return {"first": batch[0], "ids": np.asarray(batch) * 2}


def _doubled(batch: list[int]) -> list[int]:
    return [2 * x for x in batch]


@pytest.mark.parametrize("workers", [1, 2])
def test_apply_batches_keeps_order_and_reports_progress(workers: int) -> None:
    done: list[int] = []
    parts = apply_batches(_batch_ids, list(range(1000)), batch_size=128, workers=workers, progress=done.append)
    assert [p["first"] for p in parts] == list(range(0, 1000, 128))
    assert np.array_equal(np.concatenate([p["ids"] for p in parts]), np.arange(1000) * 2)  # type: ignore[misc]
    assert sorted(done) == sorted([128] * 7 + [104])
    assert map_batches(_doubled, list(range(300)), batch_size=64, workers=workers) == [2 * x for x in range(300)]


class _Watched(list):  # type: ignore[type-arg]
    """A list that counts the items handed out (by slicing), to see how far a pool has read ahead."""

    taken = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        out = super().__getitem__(index)
        self.taken += len(out) if isinstance(index, slice) else 1
        return out


@pytest.mark.parametrize("workers", [1, 2])
def test_iter_batches_streams_with_a_bounded_number_of_batches_in_flight(workers: int) -> None:
    items = _Watched(range(5000))
    ahead = []
    for k, part in enumerate(iter_batches(_batch_ids, items, batch_size=50, workers=workers)):
        assert part["first"] == 50 * k  # in order
        # batches handed to the pool but not yet yielded: never more than the bound (not all 100)
        ahead.append(items.taken // 50 - (k + 1))
    assert items.taken == 5000
    assert max(ahead) <= (IN_FLIGHT_PER_WORKER * workers if workers > 1 else 0)
    if workers > 1:
        assert max(ahead) > 0  # the workers were kept busy ahead of the consumer


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (with a correct CRC) says ``width`` x ``height`` but holds a 48x48 image's data."""
    import struct
    import zlib

    data = bytearray(png_bytes(blob_image(np.random.default_rng(2), 1)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_the_pixel_cap_is_checked_from_the_header_before_decoding() -> None:
    found = inspect_images([_png_claiming(13000, 13000), _png_claiming(4096, 4096)])
    # the first is judged by its header alone: decoding it would have failed on its short data
    assert found["reason"][0] == f"too_large_13000x13000: over the {DEFAULT_MAX_PIXELS} pixel cap"
    assert found["width"][0] == 13000 and not found["decoded"][0]
    assert found["reason"][1] != "" and not found["reason"][1].startswith("too_large")  # at the cap: decoded
    huge = inspect_images([_png_claiming(20000, 20000)])  # past Pillow's own bomb cap: refused by open()
    assert huge["reason"][0].startswith("too_large: Image size (400000000 pixels)")
    small = inspect_images([png_bytes(blob_image(np.random.default_rng(3), 0))], max_pixels=47 * 48)
    assert small["reason"][0] == "too_large_48x48: over the 2256 pixel cap"


_ORPHAN_SCRIPT = """
import os, sys, time
from fercurate.images import apply_batches

def slow(batch):
    open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
    time.sleep(120)
    return batch

apply_batches(slow, list(range(8)), batch_size=1, workers=2)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_worker_processes_die_with_their_parent(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path)])
    deadline = time.time() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    workers = [int(p.name) for p in tmp_path.iterdir()]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    parent.kill()  # kill -9: no cleanup runs in the parent
    parent.wait()
    deadline = time.time() + 5
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # do not leave them running whatever the outcome
        os.kill(pid, 9)
    assert not left, "worker processes outlived their killed parent"
