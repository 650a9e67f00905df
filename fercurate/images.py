"""Decoding and validating images: pure per-batch functions plus a small process-pool mapper.

Every function here takes plain values and returns plain values (no workspace, no CLI, no globals),
so the same batch function can be mapped by a local pool today or by a distributed engine (Ray Data's
``map_batches``, Dask) over Parquet tomorrow.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypedDict, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# a truncated file must fail loudly, never decode half an image
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})

#: Below this grayscale standard deviation an image carries no face (a flat or almost flat field).
NEAR_UNIFORM_STD = 3.0
#: Images smaller than this on either side cannot hold a usable face.
MIN_SIDE = 16
#: Images of more pixels than this are judged from their header and never decoded: a face crop needs
#: far less, and a 13000x13000 PNG takes seconds and 300 MB to decode (Pillow's own cap is 89M).
DEFAULT_MAX_PIXELS = 4096 * 4096

#: Bytes per read() of an image file: most FER images fit in one.
_READ_CHUNK = 1 << 16

T = TypeVar("T")
R = TypeVar("R")
B = TypeVar("B")


def to_gray(img: Image.Image, size: int) -> np.ndarray:
    """Convert any decoded image to a ``size`` x ``size`` grayscale uint8 array.

    EXIF rotation is applied, non-square images are centre-cropped to a square (faces are roughly
    square; squashing would distort them), and resizing uses Lanczos, which antialiases.
    """
    if "exif" in img.info:  # only photos carry an orientation tag; checking first saves a parse per image
        img = ImageOps.exif_transpose(img)
    if img.mode != "L":
        img = img.convert("RGB").convert("L") if img.mode in ("P", "LA", "RGBA", "PA") else img.convert("L")
    w, h = img.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


class Inspected(TypedDict):
    """What :func:`inspect_images` finds in a batch of image files: one column per field.

    Every list holds one value per file. ``pixels`` is one ``(N, size, size)`` uint8 block (zeros
    where ``decoded`` is False), so a batch crosses a process boundary as a few buffers rather than a
    dict per image.
    """

    sha256: list[str]
    width: list[int | None]
    height: list[int | None]
    mode: list[str | None]
    status: list[str]
    reason: list[str | None]
    pixels: np.ndarray
    decoded: np.ndarray


def inspect_images(blobs: Sequence[bytes], size: int = 48, max_pixels: int = DEFAULT_MAX_PIXELS) -> Inspected:
    """Validate a batch of image files' bytes and decode them to grayscale pixels.

    A file is ``active`` when it decodes to an image at least :data:`MIN_SIDE` on each side that is
    not flat; otherwise ``invalid`` with a ``reason``: ``empty_file``, ``not_an_image``,
    ``truncated``, ``decode_error: ...``, ``too_small_WxH``, ``too_large_WxH: ...`` (more than
    ``max_pixels`` pixels, judged from the header without decoding), ``uniform`` or
    ``near_uniform_std_S``. Flat and near-flat images keep their pixels: they are valid files, and a
    reviewer may look.
    """
    n = len(blobs)
    widths: list[int | None] = [None] * n
    heights: list[int | None] = [None] * n
    modes: list[str | None] = [None] * n
    reasons: list[str | None] = [None] * n
    pixels = np.zeros((n, size, size), dtype=np.uint8)
    decoded = np.zeros(n, dtype=bool)
    with warnings.catch_warnings():
        # Pillow warns at open() above its own cap; max_pixels, far lower, has judged those files already
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for k, data in enumerate(blobs):
            if not data:
                reasons[k] = "empty_file"
                continue
            try:
                img = Image.open(io.BytesIO(data))  # reads the header only
                widths[k], heights[k] = img.size
                modes[k] = img.mode
                if img.size[0] * img.size[1] > max_pixels:
                    reasons[k] = f"too_large_{img.size[0]}x{img.size[1]}: over the {max_pixels} pixel cap"
                    continue
                img.load()
            except UnidentifiedImageError:
                reasons[k] = "not_an_image"
                continue
            except Image.DecompressionBombError as exc:  # over twice Pillow's own cap: refused by open()
                reasons[k] = f"too_large: {str(exc).split(',')[0]}"
                continue
            except (OSError, SyntaxError, ValueError) as exc:
                reasons[k] = "truncated" if "truncated" in str(exc) else f"decode_error: {str(exc)[:80]}"
                continue
            if min(img.size) < MIN_SIDE:
                reasons[k] = f"too_small_{img.size[0]}x{img.size[1]}"
                continue
            try:
                pixels[k] = to_gray(img, size)
            except (OSError, ValueError) as exc:
                reasons[k] = f"decode_error: {str(exc)[:80]}"
                continue
            decoded[k] = True
    statuses = ["invalid"] * n
    # flatness is judged for the whole batch at once: per image, the numpy calls cost more than the maths
    flat = pixels.reshape(n, size * size)
    uniform = (flat.min(axis=1) == flat.max(axis=1)).tolist()
    stds = gray_std(pixels).tolist()
    for k in np.flatnonzero(decoded).tolist():
        if uniform[k]:
            reasons[k] = "uniform"
        elif stds[k] < NEAR_UNIFORM_STD:
            reasons[k] = f"near_uniform_std_{stds[k]:.1f}"
        else:
            statuses[k] = "active"
    return {
        "sha256": [hashlib.sha256(data).hexdigest() for data in blobs],
        "width": widths,
        "height": heights,
        "mode": modes,
        "status": statuses,
        "reason": reasons,
        "pixels": pixels,
        "decoded": decoded,
    }


def gray_std(gray: np.ndarray) -> np.ndarray:
    """Standard deviation of each image of an ``(N, H, W)`` grayscale batch, as ``(N,)`` float64.

    Sums of pixel values and of their squares are integers far below 2**53, so they are exact in
    float64 whatever the summation order: each value is bit for bit that of the one-image formula.
    """
    count = gray.shape[1] * gray.shape[2]
    flat = gray.reshape(len(gray), count).astype(np.float64)
    mean = flat.sum(axis=1) / count
    return np.sqrt(np.maximum(np.einsum("ij,ij->i", flat, flat) / count - mean * mean, 0.0))


def read_file(path: str) -> bytes:
    """A file's bytes, with less overhead per file than ``open().read()`` (no buffered reader, no stat)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def inspect_files(paths: Sequence[str], size: int = 48, max_pixels: int = DEFAULT_MAX_PIXELS) -> Inspected:
    """:func:`inspect_images` over a batch of files; an unreadable file becomes an invalid row.

    A symlink loop is ``symlink_loop``, a link to nothing ``dangling_symlink``, anything else
    that cannot be read ``unreadable: <why>``.
    """
    blobs: list[bytes] = []
    unreadable: dict[int, str] = {}
    for k, path in enumerate(paths):
        try:
            blobs.append(read_file(path))
        except OSError as exc:
            blobs.append(b"")
            unreadable[k] = _unreadable_reason(path, exc)
    out = inspect_images(blobs, size, max_pixels)
    for k, reason in unreadable.items():
        out["reason"][k] = reason
    return out


def _unreadable_reason(path: str, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"symlink_loop: following it leads back to itself (through {os.readlink(path)})"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return f"dangling_symlink: its target {os.readlink(path)} does not exist"
    return f"unreadable: {exc.strerror or exc}"


def load_gray_files(paths: Sequence[str], size: int = 48) -> np.ndarray:
    """Decode a batch of image files to an (N, size, size) uint8 array; undecodable ones are zeros."""
    out = np.zeros((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img.load()
                out[i] = to_gray(img, size)
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError):
            continue
    return out


def default_workers() -> int:
    """Worker processes for per-image work: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def apply_batches(
    fn: Callable[[list[T]], B],
    items: Sequence[T],
    *,
    batch_size: int = 512,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[B]:
    """Apply a per-batch function to ``items`` in a process pool; the result of each batch, in order.

    ``fn`` must be a picklable top-level function (or ``functools.partial`` of one). ``progress(n)``
    is called with the number of items each finished batch held. Small inputs run in this process:
    a pool costs more than it saves there.
    """
    return list(iter_batches(fn, items, batch_size=batch_size, workers=workers, progress=progress))


#: Batches a pool holds at once per worker (submitted, running or finished but not yet taken): enough
#: to keep every worker busy, few enough that a caller consuming the results as they come never
#: holds more than a few batches' results (a million faces' pixels would be 2.3 GB)
IN_FLIGHT_PER_WORKER = 4


def iter_batches(
    fn: Callable[[list[T]], B],
    items: Sequence[T],
    *,
    batch_size: int = 512,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[B]:
    """:func:`apply_batches` as a stream: each batch's result, in order, as soon as it and those before
    it are done; at most :data:`IN_FLIGHT_PER_WORKER` batches per worker are submitted and not yet taken."""
    workers = default_workers() if workers is None else workers
    starts = range(0, len(items), batch_size)
    if workers <= 1 or len(starts) <= 1:
        for s in starts:
            batch = list(items[s : s + batch_size])
            out = fn(batch)
            if progress:
                progress(len(batch))
            yield out
        return
    workers = min(workers, len(starts))
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent)
    with pool:
        pending: deque[tuple[int, Future[B]]] = deque()
        todo = iter(starts)
        while True:
            for s in itertools.islice(todo, workers * IN_FLIGHT_PER_WORKER - len(pending)):
                batch = list(items[s : s + batch_size])
                pending.append((len(batch), pool.submit(fn, batch)))
            if not pending:
                return
            n, future = pending.popleft()
            out = future.result()
            del future  # the pool's future would otherwise keep the result alive
            if progress:
                progress(n)
            yield out


def _exit_with_parent() -> None:
    """Worker initializer: end this worker soon after the process that started the pool is gone.

    A parent killed with SIGKILL runs no cleanup, and its workers would sit on their pipes for
    minutes; a daemon thread notices the parent's end (the worker is re-parented) within a second.
    """
    started_by = os.getppid()  # the pool's process (with fork), or the fork server that dies with it

    def watch() -> None:
        while os.getppid() == started_by:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def in_threads(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn`` over ``items`` on one thread per CPU, results in order (numpy and BLAS release the GIL).

    BLAS is held to one thread per worker meanwhile, so the workers do not fight over the cores.
    """
    todo = list(items)
    workers = min(default_workers(), len(todo))
    if workers <= 1:
        return [fn(item) for item in todo]
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        limits: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    else:
        limits = threadpool_limits(1)
    with limits, ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, todo))


def map_batches(
    fn: Callable[[list[T]], list[R]],
    items: Sequence[T],
    *,
    batch_size: int = 512,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[R]:
    """:func:`apply_batches` for a function returning a list per batch (one item per input): the
    concatenated lists, in order."""
    parts = apply_batches(fn, items, batch_size=batch_size, workers=workers, progress=progress)
    return [r for part in parts for r in part]


def encode_png(pixels: np.ndarray) -> bytes:
    """Losslessly encode a grayscale uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    *,
    columns: int = 8,
    scale: int = 3,
    title: str | None = None,
    groups: Sequence[int] | None = None,
) -> Image.Image:
    """Tile grayscale images (pixelated upscaling) with a caption under each, as one RGB image.

    ``groups`` (one int per image) draws a coloured frame per group so pairs or duplicate groups
    can be told apart at a glance.
    """
    from PIL import ImageDraw

    if not images:
        images, captions = [np.zeros((48, 48), np.uint8)], ["(nothing to show)"]
    side = max(max(im.shape[:2]) for im in images) * scale
    cap_h, pad, title_h = 12, 4, (18 if title else 0)
    cols = max(1, min(columns, len(images)))
    rows = (len(images) + cols - 1) // cols
    cell_w, cell_h = side + 2 * pad, side + cap_h + 2 * pad
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h + title_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 3), title, fill="black")
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for i, (im, cap) in enumerate(zip(images, captions, strict=True)):
        r, c = divmod(i, cols)
        x, y = c * cell_w + pad, r * cell_h + pad + title_h
        tile = Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB")
        tile = tile.resize(
            (tile.width * side // max(tile.size), tile.height * side // max(tile.size)), Image.Resampling.NEAREST
        )
        sheet.paste(tile, (x, y))
        if groups is not None:
            draw.rectangle(
                [x - 2, y - 2, x + side + 1, y + side + 1], outline=palette[groups[i] % len(palette)], width=2
            )
        draw.text((x, y + side + 1), str(cap)[: max(4, side // 6)], fill="black")
    return sheet
