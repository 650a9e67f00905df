"""Data for the trainer: in-memory splits, the on-device batch path and batched augmentation.

The fast path holds each split as ONE uint8 tensor on the training device (20K 48x48 images are
46 MB), draws batches as index slices of it and augments the whole batch with a couple of tensor
ops (one ``affine_grid``/``grid_sample`` for rotation and zoom), so the training loop runs no
per-image Python and never waits on a DataLoader. All randomness comes from one
``torch.Generator`` so a seed fixes the run.

:class:`ArraySplit`, :func:`class_weights` and :func:`synthetic_split` are numpy-only; torch is
imported inside the functions that need it so that ``import fercurate.train`` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fercurate.errors import InputError

if TYPE_CHECKING:
    import torch

    from fercurate.train.config import TrainConfig


@dataclass
class ArraySplit:
    """One split of a dataset, held in memory.

    Attributes:
        x: uint8 ``(N, H, W)`` grayscale images.
        y: int64 ``(N,)`` class indices into the class list passed alongside.
        soft: optional float ``(N, C)`` target distributions (normalised annotator votes; a row
            without votes holds the one-hot of its label); used when ``config.targets == "votes"``.
    """

    x: np.ndarray
    y: np.ndarray
    soft: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


def check_split(split: ArraySplit, name: str, n_classes: int, image_size: int) -> None:
    """Raise :class:`InputError` unless ``split`` is a non-empty, well-formed split.

    Args:
        split: The split to check.
        name: Its name for messages (``train``, ``val``).
        n_classes: Labels must lie in ``[0, n_classes)``.
        image_size: Images must be ``image_size`` x ``image_size``.
    """
    x, y = np.asarray(split.x), np.asarray(split.y)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise InputError(f"{name} images must be a uint8 array of shape (N, H, W), got {x.dtype} {x.shape}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{name} labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{name} split has {x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise InputError(f"the {name} split is empty; the trainer needs rows in train and val")
    if x.shape[1:] != (image_size, image_size):
        raise InputError(
            f"{name} images are {x.shape[1]}x{x.shape[2]} but the config expects "
            f"{image_size}x{image_size}; resize them or set image_size"
        )
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise InputError(
            f"{name} labels must be class indices in [0, {n_classes - 1}] for the {n_classes} "
            f"classes given, found {int(y[bad][0])} ({int(bad.sum())} bad rows)"
        )


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced class weights ``n / (k * count[c])`` (scikit-learn's and Keras's "balanced").

    Each class then contributes the same total weight, and the weights of all rows sum to ``n``.

    Args:
        y: Training labels.
        n_classes: ``k``; every class must occur in ``y``.

    Returns:
        float32 ``(k,)`` weights.
    """
    counts = np.bincount(np.asarray(y), minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        raise InputError(f"cannot weight classes {np.flatnonzero(counts == 0).tolist()}: no rows")
    weights: np.ndarray = (counts.sum() / (n_classes * counts)).astype(np.float32)
    return weights


@dataclass
class DeviceSplit:
    """A split as tensors on the training device.

    Attributes:
        x: uint8 ``(N, 1, H, W)``; kept as bytes until a batch is sliced, 4x less memory than fp32.
        y: int64 ``(N,)``.
    """

    x: torch.Tensor
    y: torch.Tensor
    soft: torch.Tensor | None = None

    @classmethod
    def from_arrays(cls, split: ArraySplit, device: torch.device) -> DeviceSplit:
        """Copy ``split`` to ``device`` once, for the whole run."""
        import torch

        # torch.tensor copies: the caller's arrays may be read-only views (Arrow, mmap), which
        # from_numpy warns about, and on CPU the split must not alias memory it does not own.
        x = torch.tensor(np.asarray(split.x), dtype=torch.uint8).unsqueeze(1)
        y = torch.tensor(np.asarray(split.y), dtype=torch.int64)
        soft = None if split.soft is None else torch.tensor(np.asarray(split.soft), dtype=torch.float32).to(device)
        return cls(x=x.to(device), y=y.to(device), soft=soft)

    def __len__(self) -> int:
        return int(self.y.shape[0])


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Yield one training epoch's batches as index tensors over a fresh permutation of ``n`` rows.

    A final batch of a single row is dropped because batch norm cannot normalise one row in
    training mode; that row is back in a later epoch's shuffle.
    """
    import torch

    perm = torch.randperm(n, generator=generator, device=generator.device)
    stop = n - 1 if n % batch_size == 1 else n
    for start in range(0, stop, batch_size):
        yield perm[start : start + batch_size]


def ordered_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Yield slices covering all ``n`` rows in order, as evaluation and prediction need."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def to_float(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 ``(B, 1, H, W)`` -> float32 in [0, 1] (the recipe's ``Rescaling(1/255)``)."""
    import torch

    out = x.float().div_(255.0)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def augment(x: torch.Tensor, config: TrainConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Randomly flip, rotate, zoom and change the contrast of a batch, all on its device.

    Mirrors the recipe's Keras layers: ``RandomFlip("horizontal")``,
    ``RandomRotation(config.rotation)`` (a fraction of a full turn), ``RandomZoom(config.zoom)``
    and ``RandomTranslation(config.translate)`` with reflected borders, and
    ``RandomContrast(config.contrast)``, which scales each image about its own mean and clips to
    the valid range.

    Args:
        x: float ``(B, 1, H, W)`` in [0, 1].
        config: Supplies ``flip``, ``rotation``, ``zoom``, ``translate`` and ``contrast``; a zero/False value
            skips that transform entirely, so all-off is the exact identity.
        generator: Source of randomness, on ``x``'s device; None uses the device's default
            generator (which is what a CUDA-graph capture records).

    Returns:
        A new tensor of the same shape, dtype and range.
    """
    import torch
    import torch.nn.functional as F

    b, dev = x.shape[0], x.device

    def uniform(half_width: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator, device=dev) * 2 - 1) * half_width

    if config.flip:
        # A flip is exact as an index reversal; folding it into the affine grid below would
        # resample and blur by float rounding.
        flip = torch.rand(b, generator=generator, device=dev) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if config.rotation > 0 or config.zoom > 0 or config.translate > 0:
        angle = uniform(2 * math.pi * config.rotation)
        # theta maps output to input coordinates, so a scale below 1 samples a smaller window:
        # zooming in. Keras RandomZoom draws the output size factor the same symmetric way.
        scale = 1 + uniform(config.zoom)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        # grid coordinates span [-1, 1], so a shift of a fraction f of the side is 2f
        tx, ty = uniform(2 * config.translate), uniform(2 * config.translate)
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Keras fills with "reflect" by default; black corners would teach the net a cue.
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if config.contrast > 0:
        factor = (1 + uniform(config.contrast))[:, None, None, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factor + mean).clamp_(0.0, 1.0)
    return x


def synthetic_split(n: int, n_classes: int = 4, image_size: int = 48, seed: int = 0, noise: float = 40.0) -> ArraySplit:
    """Generate a labelled split of simple 48x48-style patterns, for tests and benchmarks.

    Class ``c`` is a pair of bright Gaussian blobs (two "eyes", mirror images of each other) at a
    class-specific height, with random jitter, size, brightness and pixel noise. The pattern is
    invariant to horizontal flips, like faces, so the recipe's flip augmentation keeps labels
    valid; a small CNN separates the classes but must learn shift-tolerant features to do it.

    Args:
        n: Number of rows (classes are balanced up to one row).
        n_classes: Number of classes.
        image_size: Side of the square images.
        seed: numpy seed.
        noise: Standard deviation of the additive Gaussian pixel noise (0-255 scale).

    Returns:
        An :class:`ArraySplit` with uint8 images and int64 labels in shuffled order.
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
    s = image_size
    # Heights spread over the middle 60% of the image; jitter (sd 4% of the side) makes
    # neighbouring classes overlap a little when there are many of them.
    rel = 0.5 if n_classes == 1 else 0.2 + 0.6 * y / (n_classes - 1)
    cy = s * rel + rng.normal(0, 0.04 * s, n)
    dx = s * rng.uniform(0.15, 0.25, n)
    cx = s / 2 + rng.normal(0, 0.04 * s, n)
    sigma = rng.uniform(0.05, 0.09, n) * s
    peak = rng.uniform(120, 200, n)
    base = rng.uniform(20, 80, n)
    grid = np.arange(s, dtype=np.float32)

    # Separable Gaussians: (n, s, 1) * (n, 1, s) avoids building an (n, s, s, 2) coordinate grid.
    def bump(centre: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.exp(-((grid[None, :] - centre[:, None]) ** 2) / (2 * sigma[:, None] ** 2))
        return out

    gy = bump(cy)
    gx = bump(cx - dx) + bump(cx + dx)
    img = (base[:, None, None] + peak[:, None, None] * gy[:, :, None] * gx[:, None, :]).astype(np.float32)
    img += rng.normal(0, noise, (n, s, s)).astype(np.float32)
    x: np.ndarray = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return ArraySplit(x=x, y=y)
