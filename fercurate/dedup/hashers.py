"""Perceptual hashes of grayscale image batches, computed the way ``imagehash`` computes them.

Every hasher turns an ``(N, H, W)`` uint8 batch into ``N`` 64-bit hashes (``uint64``, first hash bit
in the most significant bit, so ``f"{h:016x}"`` is the ``imagehash`` hex string). The work is
vectorised over the batch: Pillow's 8-bit Lanczos resize is reproduced exactly as two matrix products
with Pillow's own fixed-point coefficients (``resize_like_pillow``), so for square images the pHash equals
``imagehash.phash`` bit for bit; non-square images go through Pillow one at a time.

Hashes are cached per workspace by the stage, keyed by ``(hasher, image size, sha256)``
(:class:`fercurate.dedup.cache.HashCache`), so a
re-run of dedup or a later stage never hashes a file twice.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import numpy as np

from fercurate.images import in_threads

#: Pillow's fixed-point precision for 8-bit resampling (``PRECISION_BITS`` in Resample.c).
_PRECISION_BITS = 32 - 8 - 2
_HALF = float(1 << (_PRECISION_BITS - 1))
_SCALE = float(1 << _PRECISION_BITS)
#: Images per vectorised batch (batches run in threads): 256 keeps the float64 intermediates (about
#: 5 MB) in the CPU's caches; 1024 measured twice as slow.
_BATCH = 256


def _lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's Lanczos-3 kernel (``lanczos_filter`` in Resample.c)."""

    def sinc(v: np.ndarray) -> np.ndarray:
        out = np.ones_like(v)
        nz = v != 0.0
        out[nz] = np.sin(v[nz] * math.pi) / (v[nz] * math.pi)
        return out

    return np.where((x >= -3.0) & (x < 3.0), sinc(x) * sinc(x / 3.0), 0.0)


@functools.lru_cache(maxsize=64)
def lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The ``(out_size, in_size)`` matrix of Pillow's integer Lanczos coefficients (scaled by 2**22).

    Follows ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` in Pillow's Resample.c: per output
    pixel, kernel weights over the support, normalised to sum 1, then rounded half away from zero to
    fixed point. Read-only; divide by 2**22 for real-valued weights.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = _lanczos((np.arange(xmin, xmax) - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        matrix[xx, xmin:xmax] = np.trunc(w * _SCALE + np.where(w < 0, -0.5, 0.5))
    matrix.setflags(write=False)
    return matrix


def resize_like_pillow(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``Image.resize((width, height), LANCZOS)`` of each square 8-bit image, bit for bit, batched.

    Pillow resamples horizontally, rounds to 8 bits, then vertically, each pass a fixed-point dot
    product; in float64 these sums of integer products are exact (below 2**53), so two matrix products
    reproduce it. Returns float64 values that are integers 0-255, shape ``(N, height, width)``.
    """
    n, h, w = pixels.shape
    x = pixels.astype(np.float64)
    if w != width:
        x = _round_8bit(x.reshape(-1, w) @ lanczos_matrix(w, width).T).reshape(n, h, width)
    if h != height:
        x = x.transpose(0, 2, 1).reshape(-1, h) @ lanczos_matrix(h, height).T
        x = _round_8bit(x).reshape(n, width, height).transpose(0, 2, 1)
    return x


def _round_8bit(x: np.ndarray) -> np.ndarray:
    """Pillow's ``clip8((v + half) >> 22)`` in place on float64 sums (dividing by 2**22 is exact)."""
    x += _HALF
    x *= 1.0 / _SCALE
    np.floor(x, out=x)
    return np.clip(x, 0, 255, out=x)


def _resize_with_pillow(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.LANCZOS), dtype=np.float64)
            for p in pixels
        ]
    )


def median_rows(x: np.ndarray) -> np.ndarray:
    """``np.median(x, axis=1)``, bit for bit, by sorting (several times faster on short rows)."""
    s = np.sort(x, axis=1)
    k = x.shape[1]
    if k % 2:
        return s[:, k // 2]
    return (s[:, k // 2 - 1] + s[:, k // 2]) / 2


def bits_to_uint64(bits: np.ndarray) -> np.ndarray:
    """``(N, 64)`` booleans (first bit most significant) to ``(N,)`` uint64."""
    return np.packbits(bits.reshape(len(bits), 64), axis=1).view(">u8")[:, 0].astype(np.uint64)


def to_hex(hashes: np.ndarray) -> list[str]:
    """16-hex-digit strings, as ``str(imagehash.phash(...))`` writes them."""
    return [f"{int(h):016x}" for h in hashes]


def from_hex(values: list[str]) -> np.ndarray:
    return np.array([int(v, 16) for v in values], dtype=np.uint64)


class Hasher:
    """A 64-bit perceptual hash of grayscale images, vectorised over a batch.

    Subclasses implement :meth:`hash_resized` on images Pillow-resized to :attr:`resize_to` (height,
    width); this base class does the batching and the exact resize.
    """

    name: ClassVar[str]
    #: the (height, width) the image is Lanczos-resized to before hashing; None: the hasher decides
    resize_to: ClassVar[tuple[int, int] | None]

    def hash(self, pixels: np.ndarray) -> np.ndarray:
        """Hash an ``(N, H, W)`` uint8 batch into ``(N,)`` uint64."""
        pixels = np.asarray(pixels, dtype=np.uint8)
        out = np.empty(len(pixels), dtype=np.uint64)

        def batch(start: int) -> None:
            out[start : start + _BATCH] = self.hash_resized(self.resize(pixels[start : start + _BATCH]))

        in_threads(batch, range(0, len(pixels), _BATCH))
        return out

    def target(self, height: int, width: int) -> tuple[int, int]:
        assert self.resize_to is not None
        return self.resize_to

    def resize(self, pixels: np.ndarray) -> np.ndarray:
        n, h, w = pixels.shape
        th, tw = self.target(h, w)
        if (h, w) == (th, tw):
            return pixels.astype(np.float64)
        if h == w:
            return resize_like_pillow(pixels, th, tw)
        # Pillow's pass order for non-square sources is not the one reproduced here: ask Pillow
        return _resize_with_pillow(pixels, th, tw)

    def hash_resized(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class PHash(Hasher):
    """``imagehash.phash``: DCT of the 32x32 image, top-left 8x8 coefficients above their median."""

    name = "phash"
    resize_to = (32, 32)

    def hash_resized(self, x: np.ndarray) -> np.ndarray:
        import scipy.fftpack

        # the same calls as imagehash, so ties at the median break the same way
        dct = scipy.fftpack.dct(scipy.fftpack.dct(x, axis=1), axis=2)[:, :8, :8].reshape(len(x), 64)
        return bits_to_uint64(dct > median_rows(dct)[:, None])


class DHash(Hasher):
    """``imagehash.dhash``: 9x8 image, is each pixel brighter than its left neighbour."""

    name = "dhash"
    resize_to = (8, 9)

    def hash_resized(self, x: np.ndarray) -> np.ndarray:
        return bits_to_uint64(x[:, :, 1:] > x[:, :, :-1])


class AHash(Hasher):
    """``imagehash.average_hash``: 8x8 image, pixels above the mean."""

    name = "ahash"
    resize_to = (8, 8)

    def hash_resized(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), 64)
        return bits_to_uint64(flat > flat.mean(axis=1)[:, None])


class WHash(Hasher):
    """``imagehash.whash`` (Haar, 8x8): the image at its largest power-of-2 side, wavelet LL band above its median.

    Uses pywt (which imagehash itself requires) on the whole batch, with imagehash's steps, so
    ties at the median break the same way.
    """

    name = "whash"
    resize_to = None

    def target(self, height: int, width: int) -> tuple[int, int]:
        side = max(2 ** int(math.log2(min(height, width))), 8)
        return side, side

    def hash_resized(self, x: np.ndarray) -> np.ndarray:
        import pywt

        n, side, _ = x.shape
        top = int(math.log2(side))
        pixels = x / 255.0
        coeffs = list(pywt.wavedec2(pixels, "haar", level=top, axes=(-2, -1)))
        coeffs[0] = coeffs[0] * 0
        pixels = pywt.waverec2(coeffs, "haar", axes=(-2, -1))
        low = pywt.wavedec2(pixels, "haar", level=top - 3, axes=(-2, -1))[0].reshape(n, 64)
        return bits_to_uint64(low > median_rows(low)[:, None])


#: The hashers ``fercurate dedup --hasher`` offers (its choices are these keys).
HASHERS: dict[str, type[Hasher]] = {"phash": PHash, "dhash": DHash, "whash": WHash, "ahash": AHash}
