"""Finding duplicate images in pixel arrays: candidates from hashes, then a pixel-level check.

The reusable part of dedup, for any stage holding grayscale pixels (``benchmark`` checks its gold
test set against train/val with :func:`match_against`; ``merge-affectnet`` checks new faces against
the dataset and among themselves). Nothing here touches a workspace.

How a pair is found:

1. **Exact**: identical pixels, always found.
2. **Candidates**, from two hash searches (:func:`fercurate.dedup.search.hamming_pairs`):

   * the plain hash (pHash by default) within the generous ``radius``;
   * a *shift-compensated* DCT hash within the small ``shift_radius``: for every image, the pHash-like
     hash of its central window moved by each offset up to ``max_shift``, in closed form (resize,
     window and DCT are linear, so all offsets cost two matrix products per image batch), searched
     against the unmoved hashes. A shifted copy lands within a few bits of one of its original's
     shifted hashes although its plain pHash distance is often 10-20. With ``mirror`` the flipped
     images' hashes are searched too.

3. **Detail filter**: each candidate's 255-bit DCT hash (the 16x16 low-frequency block, aligned at the
   offset that found it) must be within ``detail_radius``; this removes ~99.8% of the candidates of
   the generous radius, which are different photos, for a few popcounts each.
4. **Verification** on the pixels: the best zero-mean normalised cross-correlation over integer
   shifts up to ``max_shift`` of the band-passed images (``similarity``, at least
   ``min_similarity``), and the local residual of the aligned pair (at most ``max_residual``), which
   rejects another frame of the same person whose mouth or eyes differ.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fercurate.dedup.hashers import HASHERS, bits_to_uint64, lanczos_matrix, median_rows
from fercurate.dedup.params import DedupParams
from fercurate.dedup.search import hamming_pairs
from fercurate.engine import Engine, joined_arrays
from fercurate.images import in_threads

#: Side of the DCT block behind the detail hash (its top-left 8x8 is the pHash block).
DETAIL_SIDE = 16
#: Blur widths (pixels at 48x48) of the band-pass the verifier correlates: JPEG noise / lighting.
BAND_SIGMAS = (0.7, 8.0)
#: :func:`tile_residual` checks windows of side S / WINDOW_FRACTION (8 pixels at 48x48).
WINDOW_FRACTION = 6
#: Images per batch when computing the shift-compensated hashes: 128 keeps a batch's DCT blocks
#: (about 4 MB) in the CPU's caches; 1024 (30 MB) measured twice as slow.
_FEATURE_BATCH = 128
#: Candidate pairs verified per chunk (chunks run in parallel threads).
_VERIFY_CHUNK = 512
#: Candidate pairs per block of the related frames' thumbnail filter (about 10 MB of temporaries).
_RELATED_BLOCK = 8192

#: Side of the central window the re-crop search compares against (at 48x48; scaled with the size).
RECROP_WINDOW = 40
#: Offsets of the re-crop views: every RECROP_STEP pixels up to RECROP_REACH (each axis).
RECROP_STEP, RECROP_REACH = 2, 4
#: The views' windows shrink from RECROP_WINDOW by about this share of it at a time, down to ``1 - max_zoom``.
RECROP_ZOOM_STEP = 0.05
#: The re-crop search keeps each image's closest candidates only (by hash distance of the view).
RECROP_PER_IMAGE = 8
#: Zooms tried around a re-crop candidate's estimate, and the widest shift searched around it.
RECROP_REFINE = (-0.04, -0.02, 0.0, 0.02, 0.04)
RECROP_SHIFT = 2
#: Similarity at the estimate below which a re-crop candidate is not searched further.
RECROP_PREFILTER = 0.75
#: Candidates within RECROP_NEAR of ``min_similarity`` (a watermark lowers it) are refined by these
#: steps (zoom, dy, dx), each kept when the correlation rises.
RECROP_NEAR = 0.1
RECROP_FINE = (
    (-0.01, 0.0, 0.0),
    (0.01, 0.0, 0.0),
    (0.0, -0.5, 0.0),
    (0.0, 0.5, 0.0),
    (0.0, 0.0, -0.5),
    (0.0, 0.0, 0.5),
)
#: Crop margin of the scaled comparison (a zoomed image's edges repeat the border pixels).
RECROP_MARGIN = 5
#: A watermark on one copy: its residual lies along a band (a line of text) of OVERLAY_BAND pixels
#: (at 48x48) at one of OVERLAY_ANGLES degrees, and covers at least OVERLAY_RUN of the crop's width
#: without a gap; a changed mouth (half as wide) or eyes and brows (two blobs apart) do not.
OVERLAY_BAND = 12
OVERLAY_ANGLES = (0.0, -15.0, 15.0, -30.0, 30.0, -40.0, 40.0)
OVERLAY_RUN = 0.5
#: A column of the band is covered when its residual is at least this share of the band's mean column.
OVERLAY_COVER = 0.3
#: The band must hold at least this share of the pair's residual energy, and the rest of the image
#: must pass the residual check at OVERLAY_REST times ``max_residual``: other frames of one person
#: (the demo's drawn faces) otherwise pass with their eyes and brows taken for a band. 0.6, not 0.5:
#: the planted bench's watermarked re-crops are found 0.61 -> 0.71 of the time with no burst frame
#: more, real FER finds the same pairs (docs/dedup.md); 0.7 adds a false pair on real FER.
OVERLAY_SHARE = 0.65
OVERLAY_REST = 0.6

#: Related frames (another frame of one sitting: the same person, backdrop and light, another
#: expression) are looked for among the candidates up to this detail distance: the changed mouth or
#: eyes move the 255-bit detail hash further than a copy's re-encoding (demo burst frames: half lie
#: beyond 48 bits, 90% within 72).
RELATED_DETAIL_RADIUS = 72
#: Share of the pixels whose difference counts: the best-matching 70%, so the changed mouth, eyes and
#: brows (a fifth of the face or less) are left out.
RELATED_KEEP = 0.7
#: Largest difference of a related pair (:func:`trimmed_difference`: the kept pixels' mean absolute
#: difference, an offset removed, relative to the images' mean absolute deviation); first on 16x16
#: thumbnails, a cheap filter, then on the aligned, lightly blurred 48x48 images. Set for burst
#: frames in their own exposure (their own sensor noise, as real ones; docs/dedup.md, "Related
#: frames"): 0.15 and 0.09 were tuned on drawn frames that repeated their original's noise.
RELATED_PREFILTER = 0.2
RELATED_MAX_DIFFERENCE = 0.12
#: Side of the thumbnails of the prefilter and the border (in thumbnail cells) it leaves out.
RELATED_THUMB, RELATED_THUMB_BORDER = 16, 2

#: The residual check loosens with the pair's similarity: at ``min_similarity`` the residual may reach
#: ``max_residual``, and RESIDUAL_RAMP more similarity raises that by RESIDUAL_GAIN times (see
#: :func:`residual_limit`; a gain of 1 let the test suite's drawn next frame at NCC 0.978 through).
RESIDUAL_RAMP = 0.05
RESIDUAL_GAIN = 0.3

KIND_EXACT, KIND_NEAR, KIND_MIRROR, KIND_RECROP, KIND_RELATED = "exact", "near", "mirror", "recrop", "related"
PAIR_COLUMNS = ["i", "j", "hamming", "similarity", "kind", "dy", "dx"]
#: The related pairs carry their difference too (:func:`related_difference`).
RELATED_COLUMNS = [*PAIR_COLUMNS, "difference"]
MATCH_COLUMNS = ["query", "reference", "similarity", "kind", "dy", "dx"]


# -- per-image features ----------------------------------------------------------------------------
def offsets(max_shift: int) -> list[tuple[int, int]]:
    """Every (dy, dx) shift with both parts within ``max_shift``, row by row."""
    r = range(-max_shift, max_shift + 1)
    return [(dy, dx) for dy in r for dx in r]


@dataclass(frozen=True)
class Features:
    """Shift-compensated DCT hashes of a batch of images (optionally flipped first).

    ``aligned[n, k]`` is the pHash-like 64-bit hash and ``detail[n, k]`` the 255-bit detail hash (4 x
    uint64) of image ``n`` shifted by ``offsets[k]`` (edges repeated).
    """

    aligned: np.ndarray
    detail: np.ndarray
    offsets: list[tuple[int, int]]

    @property
    def center(self) -> int:
        return self.offsets.index((0, 0))


@functools.lru_cache(maxsize=32)
def _dct_operator(size: int, window: int, reach: int) -> np.ndarray:
    """Rows ``DCT16 @ resize(window -> 32) @ select(d)`` stacked for every d in -reach..reach.

    ``select(d)`` picks the ``window`` pixels starting at ``(size - window) // 2 + d``: the central
    window moved by ``d``. Applied on both sides of an image (``L @ X @ L.T``) it gives the 16x16
    low-frequency DCT block (as pHash computes it, without rounding the resized image) of every
    moved window at once. Windows never read outside the image, so the block of a copy shifted by
    ``s`` equals the original's block at offset ``s`` up to noise, from either side; a window
    smaller than the other image's matches a copy whose face is that much smaller (a re-crop).
    """
    start = (size - window) // 2
    if start - reach < 0 or start + reach + window > size:
        raise ValueError(f"a {window}-pixel window moved by {reach} leaves a {size}-pixel image")
    resize = lanczos_matrix(window, 32) / float(1 << 22)
    k = np.arange(DETAIL_SIDE)[:, None]
    dct = 2.0 * np.cos(np.pi * k * (2 * np.arange(32) + 1) / 64.0)  # scipy.fftpack's unnormalised DCT-II
    base = dct @ resize
    rows = []
    for d in range(-reach, reach + 1):
        select = np.zeros((window, size))
        select[np.arange(window), start + d + np.arange(window)] = 1.0
        rows.append(base @ select)
    out = np.concatenate(rows).astype(np.float32)
    out.setflags(write=False)
    return out


def compute_features(
    pixels: np.ndarray,
    max_shift: int,
    *,
    flip: bool = False,
    which: list[tuple[int, int]] | None = None,
    rows: np.ndarray | None = None,
    window: int | None = None,
) -> Features:
    """Shift-compensated hashes of ``(N, S, S)`` uint8 images (flipped left-right first if ``flip``).

    Args:
        pixels: the images.
        max_shift: the largest offset (each axis) of the central window.
        flip: hash the mirrored images.
        which: the offsets wanted (default: all of them); ``[(0, 0)]`` costs a tenth of all 25.
        rows: hash only these images, in this order (taken batch by batch: no copy of the subset).
        window: side of the window hashed (default ``S - 2 * max_shift``, which every offset fits).
    """
    n, size, _ = pixels.shape if rows is None else (len(rows), *pixels.shape[1:])
    wanted = offsets(max_shift) if which is None else list(which)
    k = DETAIL_SIDE
    reach = max(max(abs(dy), abs(dx)) for dy, dx in wanted)
    op = _dct_operator(size, size - 2 * max_shift if window is None else window, reach)
    # only the row and column operators of the offsets wanted: half of them for a self-join
    dys = sorted({dy for dy, _ in wanted})
    dxs = sorted({dx for _, dx in wanted})
    rows_op = np.concatenate([op[(d + reach) * k : (d + reach + 1) * k] for d in dys])
    cols_op = np.concatenate([op[(d + reach) * k : (d + reach + 1) * k] for d in dxs])
    sy = np.array([dys.index(dy) for dy, _ in wanted])
    sx = np.array([dxs.index(dx) for _, dx in wanted])
    aligned = np.empty((n, len(wanted)), dtype=np.uint64)
    detail = np.empty((n, len(wanted), 4), dtype=np.uint64)

    def batch(start: int) -> None:
        part = pixels[start : start + _FEATURE_BATCH] if rows is None else pixels[rows[start : start + _FEATURE_BATCH]]
        x = part.astype(np.float32)
        if flip:
            x = x[:, :, ::-1]
        b = len(x)
        # L_rows @ X @ L_cols.T for the whole batch as two large matrix products: first
        # (L_rows @ X).T per image ...
        y = (x.transpose(0, 2, 1).reshape(-1, size) @ rows_op.T).reshape(b, size, len(dys) * k)
        # ... then (L_rows @ X) @ L_cols.T, whose entry ((dy, v), (dx, u)) is DCT coefficient (v, u)
        # of the window moved by (dy, dx)
        z = (y.transpose(0, 2, 1).reshape(-1, size) @ cols_op.T).reshape(b, len(dys), k, len(dxs), k)
        blocks = z[:, sy, :, sx, :].transpose(1, 0, 2, 3).reshape(-1, k, k)  # (b * offsets, k, k)
        low = blocks[:, :8, :8].reshape(-1, 64)
        aligned[start : start + b] = bits_to_uint64(low > median_rows(low)[:, None]).reshape(b, -1)
        flat = blocks.reshape(-1, k * k)
        ac = flat[:, 1:]
        bits = np.zeros(flat.shape, dtype=bool)
        bits[:, 1:] = ac > median_rows(ac)[:, None]
        detail[start : start + b] = np.packbits(bits, axis=1).view(np.uint64).reshape(b, len(wanted), 4)

    in_threads(batch, range(0, n, _FEATURE_BATCH))
    return Features(aligned, detail, wanted)


def joined_features(parts: list[Features]) -> Features:
    """The features of consecutive batches of images as one :class:`Features` (an engine's map result)."""
    if len(parts) == 1:
        return parts[0]
    return Features(
        np.concatenate([p.aligned for p in parts]), np.concatenate([p.detail for p in parts]), parts[0].offsets
    )


def view_hashes(pixels: np.ndarray, window: int, which: list[tuple[int, int]], *, flip: bool = False) -> np.ndarray:
    """pHash-like 64-bit hashes of ``window``-pixel windows moved by each offset of ``which``.

    The cheap half of :func:`compute_features` (the 8x8 block only, no detail hash), for the many
    views of the re-crop search: ``(N, len(which))`` uint64.
    """
    n, size, _ = pixels.shape
    reach = max(max(abs(dy), abs(dx)) for dy, dx in which)
    op = _dct_operator(size, window, reach).reshape(2 * reach + 1, DETAIL_SIDE, size)[:, :8]
    dys = sorted({dy for dy, _ in which})
    dxs = sorted({dx for _, dx in which})
    rows_op = op[[d + reach for d in dys]].reshape(-1, size)
    cols_op = op[[d + reach for d in dxs]].reshape(-1, size)
    sy = np.array([dys.index(dy) for dy, _ in which])
    sx = np.array([dxs.index(dx) for _, dx in which])
    out = np.empty((n, len(which)), dtype=np.uint64)

    def batch(start: int) -> None:
        x = pixels[start : start + _FEATURE_BATCH].astype(np.float32)
        if flip:
            x = x[:, :, ::-1]
        b = len(x)
        y = (x.transpose(0, 2, 1).reshape(-1, size) @ rows_op.T).reshape(b, size, len(dys) * 8)
        z = (y.transpose(0, 2, 1).reshape(-1, size) @ cols_op.T).reshape(b, len(dys), 8, len(dxs), 8)
        low = z[:, sy, :, sx, :].transpose(1, 0, 2, 3).reshape(-1, 64)
        out[start : start + b] = bits_to_uint64(low > median_rows(low)[:, None]).reshape(b, -1)

    in_threads(batch, range(0, n, _FEATURE_BATCH))
    return out


@functools.lru_cache(maxsize=8)
def _band_operators(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The fine and the coarse blur of ``BAND_SIGMAS`` as ``size`` x ``size`` matrices."""
    return tuple(_gaussian_matrix(size, s * size / 48).astype(np.float32) for s in BAND_SIGMAS)  # type: ignore[return-value]


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter1d(x, sigma, mode="reflect")`` as a matrix (without importing scipy.ndimage)."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    # half-sample symmetric reflection (d c b a | a b c d | d c b a), period 2 * size
    source = (np.arange(size)[:, None] + taps[None, :]) % (2 * size)
    source = np.where(source >= size, 2 * size - 1 - source, source)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (np.repeat(np.arange(size), len(taps)), source.ravel()), np.tile(weights, size))
    return matrix


def blurs(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fine blur and the band-pass (fine minus coarse blur) of ``(N, S, S)`` images, float32.

    The verifier correlates band-passed images (JPEG noise and uneven lighting removed) and checks
    local residuals on the finely blurred ones. Each blur is two matrix products over the batch.
    """
    n, size, _ = pixels.shape
    x = pixels.astype(np.float32)
    out = []
    for g in _band_operators(size):
        y = (x.reshape(-1, size) @ g.T).reshape(n, size, size)  # blur rows
        out.append((y.transpose(0, 2, 1).reshape(-1, size) @ g.T).reshape(n, size, size).transpose(0, 2, 1))
    fine, coarse = out
    return fine, fine - coarse


# -- exact duplicates ------------------------------------------------------------------------------
def row_keys(pixels: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each image's bytes, for :func:`exact_groups`. Python's ``hash`` of bytes is
    salted per process, so keys compare only with keys computed in the same process."""
    flat = pixels.reshape(len(pixels), -1)
    return np.fromiter((hash(row.tobytes()) for row in flat), dtype=np.int64, count=len(flat))


def exact_groups(pixels: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """For each image, the position of the first image with identical pixels (itself if none).

    Rows are keyed by a 64-bit hash of their bytes (``keys``: :func:`row_keys` of ``pixels``,
    computed here if not given); only rows sharing a key are compared byte for byte, so a hash
    collision never merges two images.
    """
    n = len(pixels)
    first = np.arange(n, dtype=np.int64)
    if n < 2:
        return first
    flat = np.ascontiguousarray(pixels.reshape(n, -1))
    keys = row_keys(flat) if keys is None else keys
    order = np.argsort(keys, kind="stable")
    shared = np.nonzero(keys[order][1:] == keys[order][:-1])[0]
    if len(shared) == 0:
        return first
    candidates = np.unique(np.concatenate([order[shared], order[shared + 1]]))
    rows = flat[candidates].view(np.dtype((np.void, flat.shape[1])))[:, 0]
    _, idx, inverse = np.unique(rows, return_index=True, return_inverse=True)
    first[candidates] = candidates[idx][inverse]
    return first


# -- verification ----------------------------------------------------------------------------------
def ncc_over_shifts(
    a: np.ndarray, b: np.ndarray, max_shift: int, margin: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best zero-mean NCC of ``a``'s central crop against ``b`` shifted by up to ``max_shift``.

    Args:
        a, b: ``(P, S, S)`` float images, pair by pair.
        max_shift: the largest shift tried (each axis).
        margin: what the crop leaves on each side (default ``max_shift``, at least that, so a shifted
            window never reads outside ``b``); a warped ``a`` whose edges were clamped wants more.

    Returns:
        The best NCC per pair and the (dy, dx) where ``b`` matched ``a``'s crop best.
    """
    import scipy.fft

    p, size, _ = a.shape
    m = max_shift
    g = max_shift if margin is None else max(margin, max_shift)
    c = size - 2 * g
    padded = np.zeros((p, size, size), dtype=np.float32)
    crop = padded[:, g : g + c, g : g + c]
    crop[:] = a[:, g : g + c, g : g + c]
    crop -= crop.mean(axis=(1, 2), keepdims=True)
    crop /= np.sqrt((crop * crop).sum(axis=(1, 2), keepdims=True)) + 1e-9
    bb = np.asarray(b, dtype=np.float32)
    # circular cross-correlation; the crop's zero margin keeps every wanted shift from wrapping
    spec = np.conj(scipy.fft.rfft2(padded)) * scipy.fft.rfft2(bb)
    corr = scipy.fft.irfft2(spec, s=(size, size))
    span = np.arange(-m, m + 1)
    corr = corr[:, span[:, None] % size, span[None, :] % size]  # (P, 2m+1, 2m+1)
    # mean and energy of every shifted window of b (band-passed values are small: float32 is enough)
    corners = g - m + np.arange(2 * m + 1)
    sums = _window_sums(bb, c, corners)
    squares = _window_sums(bb * bb, c, corners)
    energy = np.maximum(squares - sums * sums / (c * c), 1e-9)
    ncc = (corr / np.sqrt(energy)).astype(np.float64)
    flat = ncc.reshape(p, -1)
    best = flat.argmax(axis=1)
    dy, dx = np.divmod(best, 2 * m + 1)
    return flat[np.arange(p), best], dy - m, dx - m


def tile_residual(
    a: np.ndarray,
    b: np.ndarray,
    fine_a: np.ndarray,
    fine_b: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    max_shift: int,
    *,
    margin: int | None = None,
) -> np.ndarray:
    """The largest unexplained share of any small window once ``b`` is aligned and brightness fitted.

    Global NCC is dominated by what is large: background, hair, the face's outline. Two frames of one
    person that differ only in the mouth or the eyes still correlate above 0.95, yet their
    difference sits in one small region. So: take the lightly blurred images (JPEG noise), align
    ``b`` at (``dy``, ``dx``), fit ``b ~ alpha * a + beta``, and return, per pair, the residual energy
    of the worst window (side ``S / 6``, half-overlapping) divided by the energy of ``b`` in a window
    of that size on average (:func:`residual_map`, :func:`worst_window`).

    Args:
        a, b: ``(P, S, S)`` uint8 images, pair by pair.
        fine_a, fine_b: the same images lightly blurred (:func:`blurs`).
        dy, dx: the shift of ``b`` that matched best (from :func:`ncc_over_shifts`).
        max_shift: the largest shift (the margin of the central crop of ``a`` by default).
        margin: the crop's margin, as for :func:`ncc_over_shifts`.
    """
    residual, energy = residual_map(a, b, fine_a, fine_b, dy, dx, max_shift, margin=margin)
    return worst_window(residual, energy, a.shape[1])


def at_shift(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, margin: int, side: int) -> np.ndarray:
    """Each image's ``side`` x ``side`` window at ``margin + (dy, dx)``: the crop aligned with the other
    image's central crop (margin ``margin``) by the shift :func:`ncc_over_shifts` found."""
    rows = np.arange(len(images))[:, None, None]
    yy = (margin + dy)[:, None, None] + np.arange(side)[None, :, None]
    xx = (margin + dx)[:, None, None] + np.arange(side)[None, None, :]
    return images[rows, yy, xx]


def residual_map(
    a: np.ndarray,
    b: np.ndarray,
    fine_a: np.ndarray,
    fine_b: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    max_shift: int,
    *,
    margin: int | None = None,
    outside: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel residual energy of ``b`` (aligned at ``dy``, ``dx``) against ``alpha * a + beta``.

    On the central crop (``margin`` on each side, as for :func:`ncc_over_shifts`) of the lightly
    blurred images. Pixels near clipping (<= 5 or >= 250 in either image, and their neighbours) count
    nothing: a brightened copy saturates; nor do those of ``a`` marked ``outside`` (``(P, S, S)``: a
    warped image's pixels that lie beyond its source).

    Returns:
        The ``(P, C, C)`` residual energy and, per pair, the energy of the zero-mean ``b`` crop.
    """
    p, size, _ = a.shape
    m = max_shift if margin is None else max(margin, max_shift)
    c = size - 2 * m
    fa = fine_a[:, m : m + c, m : m + c].astype(np.float64)
    fb = at_shift(fine_b, dy, dx, m, c).astype(np.float64)
    ra, rb = a[:, m : m + c, m : m + c], at_shift(b, dy, dx, m, c)
    clipped = (ra <= 5) | (ra >= 250) | (rb <= 5) | (rb >= 250)
    if outside is not None:
        clipped |= outside[:, m : m + c, m : m + c]
    grown = clipped.copy()  # and their neighbours, which the blur mixed with them
    grown[:, 1:] |= clipped[:, :-1]
    grown[:, :-1] |= clipped[:, 1:]
    grown[:, :, 1:] |= clipped[:, :, :-1]
    grown[:, :, :-1] |= clipped[:, :, 1:]
    fa -= fa.mean(axis=(1, 2), keepdims=True)
    fb -= fb.mean(axis=(1, 2), keepdims=True)
    alpha = (fa * fb).sum(axis=(1, 2)) / np.maximum((fa * fa).sum(axis=(1, 2)), 1e-9)
    residual = np.where(grown, 0.0, fb - alpha[:, None, None] * fa) ** 2
    return residual, (fb * fb).sum(axis=(1, 2))


def residual_limit(similarity: np.ndarray, min_similarity: float, max_residual: float) -> np.ndarray:
    """The largest residual a pair of this ``similarity`` may have: ``max_residual`` at
    ``min_similarity``, rising linearly to ``1 + RESIDUAL_GAIN`` times that at ``min_similarity +
    RESIDUAL_RAMP`` and above.

    A tone curve, a watermark or another JPEG leave residual in a few windows while the whole image
    still correlates at 0.95-0.99; another frame of one person (a changed mouth or eyes) lowers the
    correlation with its residual. On real FER Training rows the pairs rejected at 0.15-0.30 with a
    similarity of 0.95 or more were nearly all the same photo by the reference (docs/dedup.md).
    """
    ramp = np.clip((np.asarray(similarity, dtype=np.float64) - min_similarity) / RESIDUAL_RAMP, 0.0, 1.0)
    return max_residual * (1.0 + RESIDUAL_GAIN * ramp)


def worst_window(residual: np.ndarray, energy: np.ndarray, size: int) -> np.ndarray:
    """The residual of the worst window (side ``size / 6``, half-overlapping) relative to an average one.

    ``residual`` and ``energy`` as :func:`residual_map` returns them; ``size`` is the images' side.
    """
    p, c, _ = residual.shape
    win = max(2, round(size / WINDOW_FRACTION))
    corners = np.arange(0, c - win + 1, max(1, win // 2))
    sums = _window_sums(residual, win, corners)
    average = energy * (win * win) / (c * c)
    return sums.reshape(p, -1).max(axis=1) / np.maximum(average, 1e-9)


def masked_ncc(a: np.ndarray, b: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Zero-mean normalised cross-correlation of aligned ``(P, C, C)`` images over the pixels ``keep``."""
    w = keep.astype(np.float64)
    n = np.maximum(w.sum(axis=(1, 2), keepdims=True), 1.0)
    a = a - (a * w).sum(axis=(1, 2), keepdims=True) / n
    b = b - (b * w).sum(axis=(1, 2), keepdims=True) / n
    ab = (a * b * w).sum(axis=(1, 2))
    return ab / np.sqrt(np.maximum((a * a * w).sum(axis=(1, 2)) * (b * b * w).sum(axis=(1, 2)), 1e-18))


def overlay_band(residual: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The band of ``height`` pixels holding most residual energy, and whether it reads as text.

    A band is every pixel whose sheared row ``y - tan(angle) * (x - centre)`` lies in ``[t, t +
    height)``, for each angle of :data:`OVERLAY_ANGLES` (a stock watermark is horizontal or
    diagonal). Its energy, for every ``t`` at once, is a difference of column-wise cumulative sums.
    The best band reads as text when its columns carry residual (at least :data:`OVERLAY_COVER` of
    their mean) without a gap over at least :data:`OVERLAY_RUN` of the width: a word's letters
    follow each other, whereas a changed mouth is short and changed eyes or brows are two blobs.

    Args:
        residual: ``(P, C, C)`` residual energy per pixel of aligned pairs.
        height: the band's height in pixels.

    Returns:
        The best band as a ``(P, C, C)`` mask, and per pair whether it reads as text.
    """
    p, c, _ = residual.shape
    cum = np.zeros((p, c + 1, c))
    np.cumsum(residual, axis=1, out=cum[:, 1:])
    x = np.arange(c)
    best = np.full(p, -1.0)
    lo_best = np.zeros((p, c), dtype=np.int64)
    for angle in OVERLAY_ANGLES:
        lift = np.rint(np.tan(np.deg2rad(angle)) * (x - (c - 1) / 2)).astype(np.int64)  # row offset per column
        starts = np.arange(-height - lift.max() + 1, c - lift.min())
        lo = np.clip(starts[:, None] + lift[None, :], 0, c)  # (T, C)
        hi = np.clip(starts[:, None] + lift[None, :] + height, 0, c)
        energy = (cum[:, hi, x] - cum[:, lo, x]).sum(axis=2)  # (P, T)
        t = energy.argmax(axis=1)
        top = energy[np.arange(p), t]
        better = top > best
        best[better] = top[better]
        lo_best[better] = starts[t[better], None] + lift[None, :]
    yy = np.arange(c)[None, :, None]
    band = (yy >= lo_best[:, None, :]) & (yy < lo_best[:, None, :] + height)
    column = np.where(band, residual, 0.0).sum(axis=1)  # (P, C)
    covered = column >= OVERLAY_COVER * column.mean(axis=1, keepdims=True)
    run = np.zeros(p)
    current = np.zeros(p)
    for k in range(c):
        current = np.where(covered[:, k], current + 1, 0)
        run = np.maximum(run, current)
    share = column.sum(axis=1) / np.maximum(residual.sum(axis=(1, 2)), 1e-12)
    return band, (run >= OVERLAY_RUN * c) & (share >= OVERLAY_SHARE)


def text_bands(residual: np.ndarray, candidates: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which ``candidates`` have a residual that runs along a band reading as text (a watermark on
    one copy, :func:`overlay_band`), and those bands.

    Args:
        residual: ``(P, C, C)`` as :func:`residual_map` returns it.
        candidates: ``(P,)`` the pairs worth the look (the others are not measured).
        size: the images' side; the band is :data:`OVERLAY_BAND` pixels high at 48.

    Returns:
        Indices into ``residual`` of the pairs with a text-like band, and their ``(len, C, C)`` bands.
    """
    o = np.flatnonzero(candidates)
    if not len(o):
        return o, np.zeros((0, *residual.shape[1:]), dtype=bool)
    band, textlike = overlay_band(residual[o], round(OVERLAY_BAND * size / 48))
    return o[textlike], band[textlike]


def without_band(
    residual: np.ndarray, energy: np.ndarray, rest: np.ndarray, a: np.ndarray, b: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Similarity and residual of aligned pairs over ``rest`` only (a watermark's band left out).

    Args:
        residual, energy: as :func:`residual_map` returns them.
        rest: ``(P, C, C)`` the pixels to keep.
        a, b: ``(P, C, C)`` the aligned band-passed crops.
        size: the images' side.

    Returns:
        :func:`masked_ncc` of the rest, and its worst window's residual divided by
        :data:`OVERLAY_REST`: the rest must be cleaner than a pair without a watermark needs to be,
        since the band is a gift.
    """
    worst = worst_window(np.where(rest, residual, 0.0), energy, size)
    return masked_ncc(a, b, rest), worst / OVERLAY_REST


def zoom_operators(size: int, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Bilinear matrices ``(P, S, S)`` whose row ``u`` samples ``x(c + scale * (u - c) + shift)``.

    ``c`` is the image centre; positions outside the image take the edge pixel. ``X @ M.T`` moves
    and zooms the columns of ``X``, ``M @ X`` its rows. ``scale`` below 1 shows ``x`` larger.
    """
    centre = (size - 1) / 2
    pos = centre + scale[:, None] * (np.arange(size)[None, :] - centre) + shift[:, None]
    pos = np.clip(pos, 0, size - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), size - 2)
    w = (pos - lo).astype(np.float32)
    out = np.zeros((len(scale), size, size), dtype=np.float32)
    p_idx = np.arange(len(scale))[:, None]
    u_idx = np.arange(size)[None, :]
    out[p_idx, u_idx, lo] = 1 - w
    out[p_idx, u_idx, lo + 1] += w
    return out


def beyond(size: int, scale: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``(P, S, S)``: the pixels of a :func:`warp` by ``scale`` and (``dy``, ``dx``) that sample outside the source."""
    centre = (size - 1) / 2
    u = np.arange(size)[None, :] - centre
    rows = np.abs(scale[:, None] * u + dy[:, None]) > centre
    cols = np.abs(scale[:, None] * u + dx[:, None]) > centre
    return rows[:, :, None] | cols[:, None, :]


def warp(images: np.ndarray, scale: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Each image zoomed about its centre by ``scale`` and moved by (``dy``, ``dx``), float32."""
    size = images.shape[1]
    rows = zoom_operators(size, scale, dy)
    cols = zoom_operators(size, scale, dx)
    return rows @ images.astype(np.float32) @ cols.transpose(0, 2, 1)


def _window_sums(x: np.ndarray, c: int, corners: np.ndarray) -> np.ndarray:
    """Sums of the ``c`` x ``c`` windows of each image whose top-left corner is at (i, j) in ``corners``.

    As ``W @ X @ W.T`` with a 0/1 matrix ``W`` of window rows: two matrix products, no cumulative sums.
    """
    p, h, w = x.shape
    win = np.zeros((len(corners), h), dtype=x.dtype)
    for k, i in enumerate(corners):
        win[k, i : i + c] = 1
    cols = (x.reshape(-1, w) @ win[:, :w].T).reshape(p, h, len(corners))  # sums along x
    return (cols.transpose(0, 2, 1).reshape(-1, h) @ win.T).reshape(p, len(corners), len(corners)).transpose(0, 2, 1)


def _verify(
    left: np.ndarray,
    right: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    flip: np.ndarray,
    max_shift: int,
    overlay: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Similarity, shift and tile residual of pairs (``left[a]`` flipped where ``flip``, ``right[b]``).

    With ``overlay`` (``min_similarity``, ``max_residual``), a pair within :data:`RECROP_NEAR` of the
    similarity whose residual exceeds ``max_residual`` along a band that reads as a line of text (a
    watermark on one copy, :func:`overlay_band`) is measured again without the band, as
    :func:`verify_scaled` does: its similarity and residual are then those of the rest.
    """
    sim = np.empty(len(a), dtype=np.float64)
    residual = np.empty(len(a), dtype=np.float64)
    dy = np.empty(len(a), dtype=np.int64)
    dx = np.empty(len(a), dtype=np.int64)

    def chunk(s: int) -> None:
        sl = slice(s, s + _VERIFY_CHUNK)
        f = flip[sl]
        # blur each image of the chunk once; the blurs commute with a left-right flip
        ua, ia = np.unique(a[sl], return_inverse=True)
        ub, ib = np.unique(b[sl], return_inverse=True)
        (fine_a, band_a), (fine_b, band_b) = blurs(left[ua]), blurs(right[ub])
        pa, fa, ba = left[ua][ia], fine_a[ia], band_a[ia]
        pa[f], fa[f], ba[f] = pa[f][:, :, ::-1], fa[f][:, :, ::-1], ba[f][:, :, ::-1]
        pb, fb, bb = right[ub][ib], fine_b[ib], band_b[ib]
        sim[sl], dy[sl], dx[sl] = ncc_over_shifts(ba, bb, max_shift)
        if overlay is None:
            residual[sl] = tile_residual(pa, pb, fa, fb, dy[sl], dx[sl], max_shift)
            return
        res_map, energy = residual_map(pa, pb, fa, fb, dy[sl], dx[sl], max_shift)
        res = worst_window(res_map, energy, pa.shape[1])
        min_similarity, max_residual = overlay
        size = pa.shape[1]
        o, band = text_bands(res_map, (sim[sl] >= min_similarity - RECROP_NEAR) & (res > max_residual), size)
        if len(o):
            m = max_shift
            c = size - 2 * m
            moved = at_shift(bb[o], dy[sl][o], dx[sl][o], m, c)
            ncc, rest = without_band(res_map[o], energy[o], ~band, ba[o][:, m : m + c, m : m + c], moved, size)
            sim[s + o], res[o] = ncc, rest
        residual[sl] = res

    in_threads(chunk, range(0, len(a), _VERIFY_CHUNK))
    return sim, dy, dx, residual


def recrop_views(size: int, max_zoom: float) -> list[tuple[int, list[tuple[int, int]]]]:
    """(window, offsets) of the re-crop search's query views.

    A copy whose face box was ``1 / k`` times wider shows the face ``k`` times smaller: its window
    of ``k * W`` pixels holds what the other's central ``W`` pixels hold. Windows from ``W`` down
    to ``(1 - max_zoom) * W`` in steps of about 10%, each moved on a grid; the pair is found from the
    side whose face is smaller, so larger windows are never needed.
    """
    base = round(RECROP_WINDOW * size / 48)
    step = _recrop_step(size)
    reach = round(RECROP_REACH * size / 48)
    n_zooms = max(1, int(np.ceil(max_zoom / RECROP_ZOOM_STEP - 1e-9)) + 1)
    windows = sorted({round(base * (1 - max_zoom * k / max(1, n_zooms - 1))) for k in range(n_zooms)}, reverse=True)
    out = []
    for w in windows:
        r = min(reach, (size - w) // 2)
        grid = range(-(r // step) * step, r + 1, step)
        out.append((w, [(dy, dx) for dy in grid for dx in grid]))
    return out


def recrop_centres(size: int) -> list[tuple[int, int]]:
    """Offsets of the centre windows the views are searched against: the centre and the offsets
    between the views' grid points (at 48x48, the grid is 2 pixels: 4 centres), so that every
    whole-pixel move lies on a view of one image and a centre of the other (a view one pixel off its
    match is 8-12 bits away)."""
    step = _recrop_step(size)
    return [(dy, dx) for dy in range(step) for dx in range(step)]


def _recrop_step(size: int) -> int:
    """The views' grid step in pixels at this image size (RECROP_STEP at 48x48)."""
    return max(1, round(RECROP_STEP * size / 48))


def recrop_hashes(
    pixels: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    base: int,
    views: list[tuple[int, list[tuple[int, int]]]],
    flip: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The centre windows' hashes ``(N, centres)`` (:func:`recrop_centres`) and every view's hash
    ``(N, views)`` of ``pixels`` (or its ``rows``); the views of the mirrored images with ``flip``."""
    sub = pixels if rows is None else pixels[rows]
    centre = view_hashes(sub, base, recrop_centres(pixels.shape[1]))
    return centre, np.concatenate([view_hashes(sub, w, offs, flip=flip) for w, offs in views], axis=1)


def recrop_candidates(
    pixels: np.ndarray,
    rows: np.ndarray,
    radius: int,
    max_zoom: float,
    *,
    flip: bool = False,
    engine: Engine | None = None,
) -> pd.DataFrame:
    """Pairs of ``rows`` where a moved, smaller window of one hashes within ``radius`` of the other's centre.

    With ``flip`` the windows are taken from the mirrored images (a flipped re-crop).

    Returns:
        ``a``, ``b`` (positions in ``pixels``; ``a`` the one whose window matched), ``scale``,
        ``oy``/``ox``: ``b(u) ~ a(c + scale * (u - c) + o)`` (``a`` mirrored first with ``flip``), the
        estimate the verifier starts from, and ``flip``.
    """
    size = pixels.shape[1]
    base = round(RECROP_WINDOW * size / 48)
    views = recrop_views(size, max_zoom)
    recrop = functools.partial(recrop_hashes, base=base, views=views, flip=flip)
    centre, hashes = joined_arrays((engine or Engine()).map_images(recrop, pixels, rows=rows))
    meta = [(w, dy, dx) for w, offs in views for dy, dx in offs]
    stride = len(meta)
    moves = np.array(recrop_centres(size), dtype=np.float64)
    n_moves = len(moves)
    found = hamming_pairs(hashes.ravel(), radius, centre.ravel(), keep=lambda q, d: q // stride != d // n_moves)
    q, d = found.query, found.database
    w = np.array([m[0] for m in meta])[q % stride]
    oy = np.array([m[1] for m in meta])[q % stride]
    ox = np.array([m[2] for m in meta])[q % stride]
    # the window's own centre sits half a pixel off when S - w is odd
    off = (size - w) // 2 + (w - 1) / 2 - (size - 1) / 2
    scale = w / base
    # b's centre window moved by e: b(u + e) ~ a(c + s (u - c) + o), so b(v) ~ a(c + s (v - c) + o - s e)
    ey, ex = moves[d % n_moves, 0], moves[d % n_moves, 1]
    frame = pd.DataFrame(
        {
            "a": rows[q // stride],
            "b": rows[d // n_moves],
            "scale": scale,
            "oy": oy + off - scale * ey,
            "ox": ox + off - scale * ex,
            "dist": np.bitwise_count(hashes.ravel()[q] ^ centre.ravel()[d]).astype(np.int64),
            "flip": flip,
        }
    )
    # one estimate per pair: the closest view
    frame = frame.sort_values(["a", "b", "dist"], kind="stable").drop_duplicates(["a", "b"])
    # at most the RECROP_PER_IMAGE closest partners of each image (on either side): real photos have a
    # few, but drawn faces all look alike to a 64-bit hash (2.8M pairs among 20K demo faces)
    lo, hi = np.minimum(frame["a"], frame["b"]), np.maximum(frame["a"], frame["b"])
    frame = frame.assign(lo=lo, hi=hi).sort_values(["lo", "hi", "dist"], kind="stable").drop_duplicates(["lo", "hi"])
    rank_lo = frame.sort_values(["dist"], kind="stable").groupby("lo").cumcount()
    rank_hi = frame.sort_values(["dist"], kind="stable").groupby("hi").cumcount()
    near = (rank_lo.reindex(frame.index) < RECROP_PER_IMAGE) | (rank_hi.reindex(frame.index) < RECROP_PER_IMAGE)
    return frame[near.to_numpy()].drop(columns=["lo", "hi"]).reset_index(drop=True)


def verify_scaled(
    left: np.ndarray,
    right: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    scale: np.ndarray,
    oy: np.ndarray,
    ox: np.ndarray,
    min_similarity: float = 0.9,
    max_residual: float = 0.15,
    *,
    flip: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Similarity, zoom, shift and local residual of pairs, searched around an estimate.

    ``left[a]`` is mirrored first where ``flip`` (a flipped re-crop).

    ``right[b](u) ~ left[a](c + scale * (u - c) + o)``: ``left[a]`` is warped by every zoom of
    :data:`RECROP_REFINE` around ``scale`` (and moved by ``o``) and correlated with ``right[b]`` over
    shifts up to :data:`RECROP_SHIFT` on band-passed images; pairs near ``min_similarity`` are then
    refined by :data:`RECROP_FINE` steps. At the best alignment the local residual is measured
    (:func:`residual_map`, :func:`worst_window`). Where it exceeds ``max_residual`` and lies along a
    band that reads as a line of text (a watermark on one copy, :func:`overlay_band`), the pair is
    measured again without the band: correlation and residual of the rest of the image (``overlay``).

    Returns:
        similarity, scale, dy, dx, residual, overlay: ``right[b](u) ~ left[a](c + scale * (u - c) +
        (dy, dx))`` at the best alignment (shift rounded to whole pixels); the residual (infinite for
        pairs below ``min_similarity - RECROP_NEAR``); ``overlay`` True where a watermark's band was
        left out of the similarity and the residual.
    """
    p = len(a)
    sim = np.full(p, -2.0)
    best_s = scale.astype(np.float64).copy()
    best_y = np.zeros(p)
    best_x = np.zeros(p)
    residual = np.full(p, np.inf)
    overlay = np.zeros(p, dtype=bool)
    size = left.shape[1]
    g = RECROP_MARGIN

    def chunk(s: int) -> None:
        sl = slice(s, s + _VERIFY_CHUNK)
        ua, ia = np.unique(a[sl], return_inverse=True)
        ub, ib = np.unique(b[sl], return_inverse=True)
        (fine_a, band_a), (fine_b, band_b) = blurs(left[ua]), blurs(right[ub])
        # pair by pair; the blurs commute with a left-right flip
        ba, bb, fa, raw_a = band_a[ia], band_b[ib], fine_a[ia], left[a[sl]]
        if flip is not None and flip[sl].any():
            f = flip[sl]
            ba[f], fa[f], raw_a[f] = ba[f][:, :, ::-1], fa[f][:, :, ::-1], raw_a[f][:, :, ::-1]
        oy_, ox_, z0 = oy[sl].astype(np.float64), ox[sl].astype(np.float64), scale[sl].astype(np.float64)
        # at the estimate first: most candidates of a generous radius are other photos, and one
        # correlation tells; only the promising ones are searched over zoom
        top, by, bx = ncc_over_shifts(warp(ba, z0, oy_, ox_), bb, RECROP_SHIFT, g)
        zs = z0.copy()
        keep = np.nonzero(top >= RECROP_PREFILTER)[0]
        for step in RECROP_REFINE:
            if step == 0.0 or not len(keep):
                continue
            z = z0[keep] + step
            ncc, dy, dx = ncc_over_shifts(warp(ba[keep], z, oy_[keep], ox_[keep]), bb[keep], RECROP_SHIFT, g)
            better = ncc > top[keep]
            k = keep[better]
            top[k], zs[k], by[k], bx[k] = ncc[better], z[better], dy[better], dx[better]
        # the whole offset of each pair: b(u + d) ~ a(c + s (u - c) + o), so b(v) ~ a(c + s (v - c) + o - s d)
        ty, tx = oy_ - zs * by, ox_ - zs * bx
        # the pairs near passing are refined by a hundredth of zoom and half pixels: a re-crop's
        # pixels sample the photo at other places, and a coarse alignment leaves edges in the residual
        keep = np.nonzero(top >= min_similarity - RECROP_NEAR)[0]
        for dz, sy, sx in RECROP_FINE:
            if not len(keep):
                break
            z, y, x = zs[keep] + dz, ty[keep] + sy, tx[keep] + sx
            ncc, dy, dx = ncc_over_shifts(warp(ba[keep], z, y, x), bb[keep], 1, g)
            better = ncc > top[keep]
            k = keep[better]
            top[k], zs[k] = ncc[better], z[better]
            ty[k], tx[k] = y[better] - z[better] * dy[better], x[better] - z[better] * dx[better]
        sim[sl], best_s[sl], best_y[sl], best_x[sl] = top, zs, ty, tx
        if not len(keep):
            return
        rows_b = b[sl][keep]
        wa = warp(fa[keep], zs[keep], ty[keep], tx[keep])
        pa = np.clip(warp(raw_a[keep], zs[keep], ty[keep], tx[keep]), 0, 255)
        # the residual, less the pixels the warp made up (beyond the source's edge)
        n = size - 2 * g
        outside = beyond(size, zs[keep], ty[keep], tx[keep])
        still = np.zeros(len(keep), dtype=np.int64)
        res_map, energy = residual_map(
            pa, right[rows_b], wa, fine_b[ib][keep], still, still, RECROP_SHIFT, margin=g, outside=outside
        )
        res = worst_window(res_map, energy, size)
        # a watermark on one copy: its band left out of both measures
        o, band = text_bands(res_map, res > residual_limit(top[keep], min_similarity, max_residual), size)
        over = np.zeros(len(keep), dtype=bool)
        over[o] = True
        if len(o):
            rest = ~band & ~outside[o][:, g : g + n, g : g + n]
            aligned = warp(ba[keep[o]], zs[keep][o], ty[keep][o], tx[keep][o])[:, g : g + n, g : g + n]
            top[keep[o]], res[o] = without_band(
                res_map[o], energy[o], rest, aligned, bb[keep[o]][:, g : g + n, g : g + n], size
            )
        sim[sl] = top
        out = np.full(len(top), np.inf)
        out[keep] = res
        residual[sl] = out
        flag = np.zeros(len(top), dtype=bool)
        flag[keep] = over
        overlay[sl] = flag

    in_threads(chunk, range(0, p, _VERIFY_CHUNK))
    return sim, best_s, np.rint(best_y).astype(np.int64), np.rint(best_x).astype(np.int64), residual, overlay


# -- related frames --------------------------------------------------------------------------------
def trimmed_difference(
    x: np.ndarray, y: np.ndarray, keep: float = RELATED_KEEP, spread: np.ndarray | None = None
) -> np.ndarray:
    """How far apart two aligned images are over their best-matching pixels, relative to their contrast.

    ``x`` and ``y`` are ``(P, n)`` pixel values, pair by pair. The difference ``x - y`` less its median
    (a brightness offset), in absolute value; the mean of its smallest ``keep`` share; divided by
    the mean absolute deviation of ``x`` and ``y`` from their medians (averaged). Two frames of one
    sitting differ where the expression changed (mouth, eyes, brows) and hardly anywhere else, so
    the best 70% of their pixels match closely; two photos of different people, or of one person on
    another day, differ nearly everywhere. A change of contrast counts as a difference: taking it
    out too (each image scaled by its own deviation) let other people's drawn faces pass (precision
    0.68 instead of 0.91 on the tuning demo), and one sitting's frames share their light.

    ``spread``: the pairs' averaged deviations if already known (:func:`deviation` of each image).
    """
    d = x - y
    d = np.abs(d - np.median(d, axis=1, keepdims=True))
    k = max(1, int(keep * d.shape[1]))
    best = np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1)
    if spread is None:
        spread = 0.5 * (deviation(x) + deviation(y))
    return best / np.maximum(spread, 1e-9)


def deviation(x: np.ndarray) -> np.ndarray:
    """The mean absolute deviation from the median of each row of ``x`` (an image's contrast)."""
    return np.abs(x - np.median(x, axis=1, keepdims=True)).mean(axis=1)


@functools.lru_cache(maxsize=8)
def _area_matrix(size: int, side: int) -> np.ndarray:
    """``side`` x ``size`` rows averaging the pixels of each of ``side`` equal cells (a box resize)."""
    edges = np.linspace(0, size, side + 1)
    out = np.zeros((side, size), dtype=np.float32)
    for k in range(side):
        lo, hi = edges[k], edges[k + 1]
        for u in range(int(np.floor(lo)), int(np.ceil(hi))):
            out[k, u] = min(hi, u + 1) - max(lo, u)
    out /= out.sum(axis=1, keepdims=True)
    out.setflags(write=False)
    return out


def thumbnails(pixels: np.ndarray) -> np.ndarray:
    """``(N, T * T)`` box-resized thumbnails (``T`` = 16 less a border of 2 cells) of ``(N, S, S)`` images."""
    n, size, _ = pixels.shape
    m = _area_matrix(size, RELATED_THUMB)
    b = RELATED_THUMB_BORDER
    small = m @ pixels.astype(np.float32) @ m.T
    return small[:, b : RELATED_THUMB - b, b : RELATED_THUMB - b].reshape(n, -1)


def related_difference(
    left: np.ndarray, right: np.ndarray, a: np.ndarray, b: np.ndarray, max_shift: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Difference, similarity and aligning shift of pairs (``left[a]``, ``right[b]``) as related frames.

    First :func:`trimmed_difference` of their thumbnails (cheap: most candidates are other people's
    photos and stop there, with an infinite difference); the pairs within ``RELATED_PREFILTER`` are
    aligned as the verifier aligns them (best NCC of band-passed images over shifts up to
    ``max_shift``) and measured again on the lightly blurred images.

    Returns:
        difference (infinite for pairs the prefilter stopped), similarity (the aligned NCC; 0 there),
        dy, dx.
    """
    p = len(a)
    diff = np.full(p, np.inf)
    sim = np.zeros(p)
    dy = np.zeros(p, dtype=np.int64)
    dx = np.zeros(p, dtype=np.int64)
    if p == 0:
        return diff, sim, dy, dx
    # each image's thumbnail and contrast once (both sides at once in a self-join)
    if left is right:
        u, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
        ia, ib = inverse[:p], inverse[p:]
        thumbs_a = thumbs_b = thumbnails(left[u])
    else:
        ua, ia = np.unique(a, return_inverse=True)
        ub, ib = np.unique(b, return_inverse=True)
        thumbs_a, thumbs_b = thumbnails(left[ua]), thumbnails(right[ub])
    dev_a, dev_b = deviation(thumbs_a), deviation(thumbs_b)
    rough = np.empty(p)

    def cheap(s: int) -> None:
        # in blocks: drawn faces give hundreds of thousands of candidates at 100K images
        sl = slice(s, s + _RELATED_BLOCK)
        spread = 0.5 * (dev_a[ia[sl]] + dev_b[ib[sl]])
        rough[sl] = trimmed_difference(thumbs_a[ia[sl]], thumbs_b[ib[sl]], spread=spread)

    in_threads(cheap, range(0, p, _RELATED_BLOCK))
    todo = np.nonzero(rough <= RELATED_PREFILTER)[0]
    size = left.shape[1]
    m = max_shift
    c = size - 2 * m

    def chunk(s: int) -> None:
        idx = todo[s : s + _VERIFY_CHUNK]
        ca, ja = np.unique(a[idx], return_inverse=True)
        cb, jb = np.unique(b[idx], return_inverse=True)
        (fine_a, band_a), (fine_b, band_b) = blurs(left[ca]), blurs(right[cb])
        sim[idx], dy[idx], dx[idx] = ncc_over_shifts(band_a[ja], band_b[jb], max_shift)
        fa = fine_a[ja][:, m : m + c, m : m + c].reshape(len(idx), -1)
        fb = at_shift(fine_b[jb], dy[idx], dx[idx], m, c).reshape(len(idx), -1)
        diff[idx] = trimmed_difference(fa, fb)

    in_threads(chunk, range(0, len(todo), _VERIFY_CHUNK))
    return diff, sim, dy, dx


def _related(
    pixels: np.ndarray, cands: pd.DataFrame, found: pd.DataFrame, params: DedupParams, engine: Engine | None = None
) -> pd.DataFrame:
    """The candidates (not flipped, not in ``found``) that :func:`related_difference` calls related frames."""
    todo = cands[~cands["flip"].to_numpy(dtype=bool)]
    n = len(pixels)
    key = todo["a"].to_numpy() * n + todo["b"].to_numpy()
    done = np.minimum(found["a"], found["b"]).to_numpy() * n + np.maximum(found["a"], found["b"]).to_numpy()
    todo = todo[~np.isin(key, done)]
    a, b = todo["a"].to_numpy(), todo["b"].to_numpy()
    check = functools.partial(related_difference, max_shift=params.max_shift)
    diff, sim, dy, dx = joined_arrays((engine or Engine()).map_pairs(check, (pixels, pixels), (a, b)))
    ok = diff <= RELATED_MAX_DIFFERENCE
    return pd.DataFrame(
        {
            "a": a[ok],
            "b": b[ok],
            "similarity": np.round(sim[ok], 6),
            "kind": KIND_RELATED,
            "dy": dy[ok],
            "dx": dx[ok],
            "difference": np.round(diff[ok], 6),
        }
    )


# -- candidate search ------------------------------------------------------------------------------
def _popcount4(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x ^ y).sum(axis=-1, dtype=np.int64)


def _detail_distance(
    query: np.ndarray, reference: np.ndarray, a: np.ndarray, k: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Detail-hash distances of query images ``a`` at offsets ``k`` to reference images ``b``."""
    return _popcount4(query[a, k], reference[b])


def half_offsets(max_shift: int, mirror: bool) -> list[tuple[int, int]]:
    """Offsets to query in a self-join: a pair is found from either side, so half of them suffice.

    The window of B at offset (dy, dx) matches A's central window iff A's window at (-dy, -dx) matches
    B's; for a mirrored copy the counterpart is (-dy, dx). Both lists hold (0, 0).
    """
    if mirror:
        return [(dy, dx) for dy, dx in offsets(max_shift) if dy >= 0]
    return [(dy, dx) for dy, dx in offsets(max_shift) if dy > 0 or (dy == 0 and dx >= 0)]


def _candidates(
    hashes_q: np.ndarray,
    feats_q: Features,
    hashes_r: np.ndarray | None,
    feats_r: Features | None,
    flipped_q: Features | None,
    params: DedupParams,
    detail_radius: int | None = None,
) -> pd.DataFrame:
    """Candidate pairs (a in queries, b in reference, flip) within ``detail_radius``, best distance each.

    ``hashes_r`` / ``feats_r`` None means a self-join of the queries, each pair once with a < b.
    ``detail_radius`` overrides ``params.detail_radius`` (the related-frame search looks further).
    """
    self_join = hashes_r is None
    detail_limit = params.detail_radius if detail_radius is None else detail_radius
    ref = feats_q if feats_r is None else feats_r
    center, ref_center = feats_q.center, ref.center
    parts = [
        # the plain hash within the generous radius
        (
            *_search(
                hashes_q,
                params.radius,
                hashes_r,
                1,
                functools.partial(_detail_distance, feats_q.detail[:, center : center + 1], ref.detail[:, ref_center]),
                detail_limit,
                drop_self=False,
            ),
            False,
        )
    ]
    # the shift-compensated hashes within the small radius, as they are and (optionally) flipped
    for feats, flip in [(feats_q, False)] + ([(flipped_q, True)] if flipped_q is not None else []):
        assert feats is not None
        parts.append(
            (
                *_search(
                    feats.aligned.ravel(),
                    params.shift_radius,
                    ref.aligned[:, ref_center],
                    len(feats.offsets),
                    functools.partial(_detail_distance, feats.detail, ref.detail[:, ref_center]),
                    detail_limit,
                    drop_self=self_join,
                ),
                flip,
            )
        )
    left = np.concatenate([p[0] for p in parts])
    right = np.concatenate([p[1] for p in parts])
    if self_join:
        left, right = np.minimum(left, right), np.maximum(left, right)
    frame = pd.DataFrame(
        {
            "a": left,
            "b": right,
            "flip": np.concatenate([np.full(len(p[0]), p[3]) for p in parts]).astype(bool),
            "detail": np.concatenate([p[2] for p in parts]).astype(np.int64),
        }
    )
    return frame.groupby(["a", "b", "flip"], as_index=False, sort=True)["detail"].min()


def _search(
    queries: np.ndarray,
    radius: int,
    database: np.ndarray | None,
    stride: int,
    detail_of: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    detail_radius: int,
    *,
    drop_self: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash pairs within ``radius`` whose detail distance is within ``detail_radius``.

    Query position ``q`` stands for image ``q // stride`` at offset ``q % stride``; ``detail_of(a, k,
    b)`` gives the detail distances. The detail filter runs on each block of pairs as the search finds
    it: most candidates of a generous radius are different photos, and memory keeps only survivors.

    Returns:
        Image positions (query side, database side) and their detail distances.
    """

    def detail(qi: np.ndarray, dj: np.ndarray) -> np.ndarray:
        return detail_of(qi // stride, qi % stride, dj)

    def keep(qi: np.ndarray, dj: np.ndarray) -> np.ndarray:
        ok = detail(qi, dj) <= detail_radius
        return ok & (qi // stride != dj) if drop_self else ok

    found = hamming_pairs(queries, radius, database, keep=keep)
    return found.query // stride, found.database, detail(found.query, found.database)


def _hash(pixels: np.ndarray, hasher: str) -> np.ndarray:
    return HASHERS[hasher]().hash(pixels)


def _check_pixels(pixels: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"{what} must be (N, S, S) grayscale images, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def find_duplicate_pairs(
    pixels: np.ndarray,
    params: DedupParams | None = None,
    hashes: np.ndarray | None = None,
    engine: Engine | None = None,
) -> pd.DataFrame:
    """Every duplicate pair among ``(N, S, S)`` uint8 grayscale images.

    Args:
        pixels: the images (48x48 in fercurate; other square sizes work).
        params: thresholds (``hasher``, ``radius``, ``shift_radius``, ``detail_radius``,
            ``min_similarity``, ``max_residual``, ``max_shift``, ``mirror``); defaults when None.
        hashes: the ``params.hasher`` hashes of ``pixels`` if already known (from the hash cache).
        engine: where the features and the pair checks run (default: here); the search runs here.

    Returns:
        One row per pair: ``i`` < ``j`` (positions in ``pixels``), ``hamming`` (plain hash distance),
        ``similarity`` (best NCC; 1.0 for exact), ``kind`` (exact | near | mirror | recrop), and ``dy``/``dx``
        (the shift that matched best). Identical images are linked to the first of them only (a
        star), which is enough for grouping.
    """
    return find_pairs(pixels, params, hashes, engine, related=False)[0]


def find_pairs(
    pixels: np.ndarray,
    params: DedupParams | None = None,
    hashes: np.ndarray | None = None,
    engine: Engine | None = None,
    *,
    related: bool = True,
    keys: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The duplicate pairs (as :func:`find_duplicate_pairs`) and, with ``related``, the related frames.

    ``keys`` (optional) are :func:`row_keys` of ``pixels``, for a caller that computed them in a
    pass of its own (dedup's stage does, a slice at a time over memory-mapped pixels).

    Related frames are other frames of one sitting (the same person, backdrop and light, another
    expression): not duplicates, but the same identity. They are looked for among the candidates the
    duplicate search already has (up to :data:`RELATED_DETAIL_RADIUS` detail bits instead of
    ``detail_radius``) that are not duplicates: :func:`related_difference` at most
    :data:`RELATED_MAX_DIFFERENCE`. Not flipped; images with identical twins are linked through the
    first of them.

    Returns:
        The duplicate pairs, and the related pairs with the same columns (``kind`` ``related``,
        ``similarity`` the aligned NCC) plus ``difference``; empty without ``related``.
    """
    params = params or DedupParams()
    engine = engine or Engine()
    pixels = _check_pixels(pixels, "pixels")
    n = len(pixels)
    no_related = pd.DataFrame({c: [] for c in RELATED_COLUMNS})
    if hashes is None:
        hashes = _hash(pixels, params.hasher)
    first = exact_groups(pixels, keys)
    copies = np.nonzero(first != np.arange(n))[0]
    exact = pd.DataFrame(
        {
            "i": first[copies],
            "j": copies,
            "hamming": np.zeros(len(copies), dtype=np.int64),
            "similarity": 1.0,
            "kind": KIND_EXACT,
            "dy": 0,
            "dx": 0,
        }
    )
    reps = np.nonzero(first == np.arange(n))[0]
    if len(reps) < 2:
        return exact[PAIR_COLUMNS].reset_index(drop=True), no_related
    # only the images with no identical twin before them are matched: features of those rows, and
    # the candidates' positions among them mapped back to positions in ``pixels``
    features = functools.partial(compute_features, max_shift=params.max_shift)
    feats = joined_features(
        engine.map_images(functools.partial(features, which=half_offsets(params.max_shift, False)), pixels, rows=reps)
    )
    flipped = (
        joined_features(
            engine.map_images(
                functools.partial(features, flip=True, which=half_offsets(params.max_shift, True)), pixels, rows=reps
            )
        )
        if params.mirror
        else None
    )
    # one search serves both: related frames lie further out in detail bits than copies
    reach = max(params.detail_radius, RELATED_DETAIL_RADIUS) if related else None
    found = _candidates(hashes[reps], feats, None, None, flipped, params, reach)
    found["a"], found["b"] = reps[found["a"].to_numpy()], reps[found["b"].to_numpy()]
    cands = found[found["detail"].to_numpy() <= params.detail_radius] if related else found
    near = _prefer_near(_verified(cands, pixels, pixels, params, engine), ["a", "b"])
    if params.max_zoom > 0:
        near = _concat(near, _recrops(pixels, reps, cands, near, params, engine=engine))
    linked = _related(pixels, found, near, params, engine) if related else no_related
    return _as_pairs(exact, near, hashes), _as_pairs(exact.iloc[:0], linked, hashes, RELATED_COLUMNS)


def _as_pairs(
    exact: pd.DataFrame, found: pd.DataFrame, hashes: np.ndarray, columns: list[str] = PAIR_COLUMNS
) -> pd.DataFrame:
    """``exact`` and the ``found`` pairs (``a``, ``b``, ...) as one table of ``columns``, by ``i``, ``j``."""
    if found.empty:
        return exact.reindex(columns=columns).reset_index(drop=True)
    rows = pd.DataFrame(
        {
            "i": found["a"].to_numpy(),
            "j": found["b"].to_numpy(),
            "hamming": np.bitwise_count(hashes[found["a"]] ^ hashes[found["b"]]).astype(np.int64),
            **{c: found[c].to_numpy() for c in columns[3:]},
        }
    )
    return _concat(exact, rows).sort_values(["i", "j"], kind="stable")[columns].reset_index(drop=True)


def match_against(query: np.ndarray, reference: np.ndarray, params: DedupParams | None = None) -> pd.DataFrame:
    """For every query image with a duplicate among the reference images, its best match.

    Args:
        query: ``(Q, S, S)`` uint8 images to check.
        reference: ``(R, S, S)`` uint8 images to check them against.
        params: thresholds as for :func:`find_duplicate_pairs`.

    Returns:
        One row per query image that has a verified duplicate: ``query`` and ``reference``
        (positions), ``similarity``, ``kind`` (exact | near | mirror | recrop: with ``max_zoom`` the
        re-crop search runs across the two sets too), ``dy``/``dx``. An exact match wins over a near
        one; otherwise the highest similarity (then the lowest reference position).
    """
    params = params or DedupParams()
    query = _check_pixels(query, "query")
    reference = _check_pixels(reference, "reference")
    if len(query) == 0 or len(reference) == 0:
        return pd.DataFrame({c: [] for c in MATCH_COLUMNS})
    if query.shape[1:] != reference.shape[1:]:
        raise ValueError(f"query {query.shape[1:]} and reference {reference.shape[1:]} images differ in size")
    # exact: the same bytes
    lookup: dict[bytes, int] = {}
    for pos in range(len(reference) - 1, -1, -1):
        lookup[reference[pos].tobytes()] = pos
    exact_ref = np.array([lookup.get(q.tobytes(), -1) for q in query], dtype=np.int64)
    hit = np.nonzero(exact_ref >= 0)[0]
    exact = pd.DataFrame(
        {"query": hit, "reference": exact_ref[hit], "similarity": 1.0, "kind": KIND_EXACT, "dy": 0, "dx": 0}
    )
    rest = np.nonzero(exact_ref < 0)[0]
    near = pd.DataFrame({c: [] for c in MATCH_COLUMNS})
    if len(rest):
        q = query[rest]
        feats_q = compute_features(q, params.max_shift)
        feats_r = compute_features(reference, params.max_shift, which=[(0, 0)])
        flipped = compute_features(q, params.max_shift, flip=True) if params.mirror else None
        cands = _candidates(_hash(q, params.hasher), feats_q, _hash(reference, params.hasher), feats_r, flipped, params)
        found = _verified(cands, q, reference, params)
        found = _prefer_near(found, ["a", "b"])
        if params.max_zoom > 0:
            # the re-crop search over queries and references as one set, keeping the pairs across
            both = np.concatenate([q, reference])
            shifted = found.assign(b=found["b"] + len(q))
            extra = _recrops(
                both, np.arange(len(both)), cands.assign(b=cands["b"] + len(q)), shifted, params, split=len(q)
            )
            found = _concat(found, extra.assign(b=extra["b"] - len(q)))
        if len(found):
            found = found.sort_values(["a", "similarity", "b"], ascending=[True, False, True], kind="stable")
            found = found.drop_duplicates("a")
            near = pd.DataFrame(
                {
                    "query": rest[found["a"].to_numpy()],
                    "reference": found["b"].to_numpy(),
                    "similarity": found["similarity"].to_numpy(),
                    "kind": found["kind"].to_numpy(),
                    "dy": found["dy"].to_numpy(),
                    "dx": found["dx"].to_numpy(),
                }
            )
    out = _concat(exact, near).astype(
        {"query": np.int64, "reference": np.int64, "similarity": np.float64, "dy": np.int64, "dx": np.int64}
    )
    return out.sort_values("query", kind="stable")[MATCH_COLUMNS].reset_index(drop=True)


def _verified(
    cands: pd.DataFrame, left: np.ndarray, right: np.ndarray, params: DedupParams, engine: Engine | None = None
) -> pd.DataFrame:
    """The candidates that pass the pixel-level checks, with similarity, kind and aligning shift."""
    if cands.empty:
        return pd.DataFrame(
            {
                "a": np.zeros(0, np.int64),
                "b": np.zeros(0, np.int64),
                "similarity": np.zeros(0),
                "kind": np.zeros(0, dtype=object),
                "dy": np.zeros(0, np.int64),
                "dx": np.zeros(0, np.int64),
            }
        )
    a = cands["a"].to_numpy()
    b = cands["b"].to_numpy()
    flip = cands["flip"].to_numpy()
    # a watermark on one copy is forgiven here only without the re-crop search (``max_zoom``), which
    # verifies every pair failing here again and forgives it there
    overlay = (params.min_similarity, params.max_residual) if params.max_zoom == 0 else None
    verify = functools.partial(_verify, max_shift=params.max_shift, overlay=overlay)
    sim, dy, dx, residual = joined_arrays((engine or Engine()).map_pairs(verify, (left, right), (a, b, flip)))
    # the fixed limit here: the drawn demo's burst frames (faint expressions) pass a looser one, and
    # the re-crop search (``max_zoom``, for real photos) verifies the pairs failing here again
    ok = (sim >= params.min_similarity) & (residual <= params.max_residual)
    return pd.DataFrame(
        {
            "a": a[ok],
            "b": b[ok],
            "similarity": np.round(sim[ok], 6),
            "kind": np.where(flip[ok], KIND_MIRROR, KIND_NEAR),
            "dy": dy[ok],
            "dx": dx[ok],
        }
    )


def _recrops(
    pixels: np.ndarray,
    reps: np.ndarray,
    cands: pd.DataFrame,
    found: pd.DataFrame,
    params: DedupParams,
    split: int | None = None,
    engine: Engine | None = None,
) -> pd.DataFrame:
    """Pairs re-cropped with another face box: the re-crop search's candidates and the plain ones that
    failed at scale 1, verified over zoom and a wider shift; none already in ``found``. With ``split``,
    only pairs of one image before ``split`` and one from it on (a query set against a reference)."""
    views = [
        recrop_candidates(pixels, reps, params.recrop_radius, params.max_zoom, flip=f, engine=engine)
        for f in {False, params.mirror}
    ]
    plain = cands[["a", "b", "flip"]].assign(scale=1.0, oy=0.0, ox=0.0)
    columns = ["a", "b", "flip", "scale", "oy", "ox"]
    todo = pd.concat([*(v[columns] for v in views), plain[columns]], ignore_index=True)
    if split is not None:
        todo = todo[(todo["a"] < split) != (todo["b"] < split)]
    key = np.minimum(todo["a"], todo["b"]) * len(pixels) + np.maximum(todo["a"], todo["b"])
    done = set((np.minimum(found["a"], found["b"]) * len(pixels) + np.maximum(found["a"], found["b"])).tolist())
    todo = todo[~np.isin(key, list(done))]
    if todo.empty:
        return found.iloc[:0]
    a, b, flip = todo["a"].to_numpy(), todo["b"].to_numpy(), todo["flip"].to_numpy()
    verify = functools.partial(
        _verify_scaled_pairs, min_similarity=params.min_similarity, max_residual=params.max_residual
    )
    pairs = (a, b, todo["scale"].to_numpy(), todo["oy"].to_numpy(), todo["ox"].to_numpy(), flip)
    sim, scale, dy, dx, residual, _ = joined_arrays((engine or Engine()).map_pairs(verify, (pixels, pixels), pairs))
    moved = (np.abs(scale - 1) > 0.02) | (np.maximum(np.abs(dy), np.abs(dx)) > params.max_shift)
    ok = (sim >= params.min_similarity) & (residual <= residual_limit(sim, params.min_similarity, params.max_residual))
    out = pd.DataFrame(
        {
            "a": np.minimum(a, b)[ok],
            "b": np.maximum(a, b)[ok],
            "similarity": np.round(sim[ok], 6),
            "kind": np.where(flip[ok], KIND_MIRROR, np.where(moved[ok], KIND_RECROP, KIND_NEAR)),
            "dy": dy[ok],
            "dx": dx[ok],
        }
    )
    return out.sort_values(["a", "b", "similarity"], ascending=[True, True, False]).drop_duplicates(["a", "b"])


def _verify_scaled_pairs(
    left: np.ndarray,
    right: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    scale: np.ndarray,
    oy: np.ndarray,
    ox: np.ndarray,
    flip: np.ndarray,
    *,
    min_similarity: float,
    max_residual: float,
) -> tuple[np.ndarray, ...]:
    """:func:`verify_scaled` with ``flip`` among the per-pair arrays, the form an engine maps in slices."""
    return verify_scaled(left, right, a, b, scale, oy, ox, min_similarity, max_residual, flip=flip)


def _concat(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Both frames' rows (an empty frame would muddle the column types)."""
    if first.empty:
        return second
    if second.empty:
        return first
    return pd.concat([first, second], ignore_index=True)


def _prefer_near(found: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """One row per pair: a pair that matches both as is and flipped (a symmetric face) is ``near``."""
    if found.empty:
        return found
    rank = (found["kind"] == KIND_MIRROR).astype(int)
    order = found.assign(_rank=rank).sort_values([*key, "_rank"], kind="stable")
    return order.drop_duplicates(key).drop(columns="_rank").reset_index(drop=True)
