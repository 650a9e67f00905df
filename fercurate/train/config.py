"""Training configuration: one frozen dataclass and a few named presets.

Every hyperparameter of the built-in trainer is a field of :class:`TrainConfig`; there are no
module-level knobs. Presets are plain :class:`TrainConfig` values in :data:`PRESETS`, and
:func:`make_config` starts from one and applies overrides. This module imports no torch, so the
CLI can build and validate a config before paying for the import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any, Literal

from fercurate.errors import InputError

# Bumped whenever the training algorithm changes in a way that makes an old checkpoint a different
# model for the same config; it is mixed into config_hash so cached models are not reused wrongly.
TRAINER_VERSION = 3

# Fields that only say *where* and *how fast* training runs, not *what* is trained; they are left
# out of config_hash so a model trained on one machine is reused on another.
EXECUTION_FIELDS = ("device", "num_threads", "channels_last", "cuda_graphs")

MONITORS = ("val_acc", "val_loss")


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of the built-in CNN trainer.

    The defaults are the ``bpp`` recipe, which reached 85.0% test accuracy on a cleaned 4-class
    FER set with Keras. Field names follow the recipe; where PyTorch and Keras differ, the Keras
    meaning is kept and the docstring of the field's user says how it is mapped.

    Attributes:
        image_size: Side of the square grayscale input in pixels; images must already be this size.
        widths: Filters of the two 3x3 convolutions in each of the three blocks.
        dense: Units of the hidden dense layer.
        dropouts: Dropout after block 1, 2, 3 and after the dense layer.
        l2: Keras-style L2 factor on every conv/dense kernel: the loss gains ``l2 * sum(w**2)``.
            Implemented as Adam ``weight_decay = 2 * l2`` on the kernels only, which has exactly
            the same gradient as the explicit penalty (see ``loop.make_optimizer``).
        label_smoothing: Targets become ``(1 - s) * onehot + s / n_classes``.
        focal_gamma: Focal-loss focusing exponent; 0 turns the focal term off.
        focal_alpha: Focal-loss scale. As in Keras ``CategoricalFocalCrossentropy`` it multiplies
            the whole loss (it is not a per-class balance), so with Adam it mainly sets the weight
            of the data term relative to the L2 penalty.
        flip: Random horizontal flip with probability 0.5.
        rotation: Random rotation range as a fraction of a full turn (Keras ``RandomRotation``):
            0.05 means +-18 degrees.
        zoom: Random zoom range as a fraction (Keras ``RandomZoom``): 0.05 means +-5%.
        contrast: Random contrast factor range about the per-image mean (Keras ``RandomContrast``).
        translate: Random shift range as a fraction of the side (Keras ``RandomTranslation``):
            0.1 moves the face up to +-10% horizontally and vertically, with reflected borders.
        lr: Peak Adam learning rate (the initial one when ``warmup`` is 0).
        warmup: Fraction of the schedule spent raising the rate linearly from ``lr / 25`` to
            ``lr`` before the cosine decay (one-cycle, as ``torch.optim.lr_scheduler.OneCycleLR``
            with ``pct_start=warmup``); 0 is the recipe's plain cosine decay.
        min_lr: Floor of the cosine schedule (Keras ``CosineDecay`` alpha times ``lr``).
        epochs: Maximum epochs; the cosine schedule always spans this many, even if early stopping
            ends training sooner (as Keras ``CosineDecay`` with ``decay_steps`` does).
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation and prediction (no gradients, so larger).
        patience: Epochs without improvement of ``monitor`` before stopping.
        monitor: ``val_acc`` (default) or ``val_loss``. Accuracy is the number the benchmark
            reports, and with focal loss plus label smoothing the validation loss is a weak proxy
            for it (it rewards calibrated confidence, which focal loss deliberately trades away).
        min_delta: An epoch improves only if it beats the best by more than this.
        bn_momentum: PyTorch BatchNorm momentum (Keras ``momentum=0.99`` is PyTorch ``0.01``).
        bn_eps: BatchNorm epsilon (Keras default 1e-3).
        class_weights: Weight each training example by ``n / (k * count[class])``.
        seed: The one seed: weight init, dropout, shuffling and augmentation.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: bf16 autocast on CUDA, and on CPUs with native bf16 (AVX512-BF16 or AMX), where
            oneDNN runs this network 1.5-2.5x faster; other CPUs emulate bf16 slower than fp32,
            so they train in fp32 whatever this says. Deterministic on CPU either way.
        channels_last: NHWC memory format for the convolutions: cuDNN's fast path, and 1.3-1.5x
            faster with oneDNN on CPU too (measured on 2 cores).
        cuda_graphs: On CUDA, capture the whole training step (augment, forward, backward, Adam)
            as one CUDA graph and replay it per batch. A step of this small network launches ~200
            kernels, so eager mode is bound by host launch overhead (7.7 ms/step on an H100 host
            against 1.9 ms of GPU work); replaying the graph removes that overhead.
        num_threads: torch intra-op threads for the run (None keeps torch's default).
        tta_flip: Test-time augmentation: in eval mode the network averages its class
            probabilities over the image and its mirror image (faces are left-right symmetric
            in meaning), so every prediction is flip-invariant. Costs a second forward pass at
            evaluation only.
        tta_shift: More test-time augmentation: in eval mode the network also averages over
            the image moved this many pixels up, down, left and right (reflected borders, as
            ``translate`` fills them in training), each with its mirror image under
            ``tta_flip``: 10 forward passes an image with both. 0 (the default) adds none.
        targets: ``labels`` (one-hot of each row's label) or ``votes``: cross-entropy against the
            normalised annotator votes where a row has them (``ArraySplit.soft``), as FER+ trained;
            label smoothing and the focal term apply to either.
    """

    image_size: int = 48
    widths: tuple[int, int, int] = (64, 128, 256)
    dense: int = 256
    dropouts: tuple[float, float, float, float] = (0.25, 0.30, 0.40, 0.50)
    l2: float = 1e-4
    label_smoothing: float = 0.1
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    flip: bool = True
    rotation: float = 0.05
    zoom: float = 0.05
    contrast: float = 0.05
    translate: float = 0.0
    lr: float = 5e-4
    warmup: float = 0.0
    min_lr: float = 0.0
    epochs: int = 75
    batch_size: int = 64
    eval_batch_size: int = 512
    patience: int = 10
    monitor: Literal["val_acc", "val_loss"] = "val_acc"
    min_delta: float = 0.0
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3
    class_weights: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    cuda_graphs: bool = True
    num_threads: int | None = None
    tta_flip: bool = False
    tta_shift: int = 0
    targets: Literal["labels", "votes"] = "labels"

    def __post_init__(self) -> None:
        # Checkpoints and JSON give lists back; keep the tuples so configs stay hashable/equal.
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "dropouts", tuple(float(d) for d in self.dropouts))
        problems = _problems(self)
        if problems:
            raise InputError("invalid training config: " + "; ".join(problems))


def _problems(c: TrainConfig) -> list[str]:
    """Every way ``c`` is unusable, as messages naming the field, value and what is accepted."""
    out: list[str] = []
    if c.targets not in ("labels", "votes"):
        out.append(f"targets={c.targets!r} must be 'labels' or 'votes'")
    if c.image_size < 8:
        out.append(f"image_size={c.image_size} must be at least 8 (three 2x2 max-pools)")
    if len(c.widths) != 3 or any(w < 1 for w in c.widths):
        out.append(f"widths={c.widths} must be three positive filter counts")
    if c.dense < 1:
        out.append(f"dense={c.dense} must be positive")
    if len(c.dropouts) != 4 or any(not 0.0 <= d < 1.0 for d in c.dropouts):
        out.append(f"dropouts={c.dropouts} must be four rates in [0, 1)")
    for name in (
        "l2",
        "label_smoothing",
        "focal_gamma",
        "rotation",
        "zoom",
        "contrast",
        "translate",
        "min_lr",
        "min_delta",
    ):
        if getattr(c, name) < 0:
            out.append(f"{name}={getattr(c, name)} must not be negative")
    if c.label_smoothing >= 1:
        out.append(f"label_smoothing={c.label_smoothing} must be below 1")
    if c.focal_alpha <= 0:
        out.append(f"focal_alpha={c.focal_alpha} must be positive")
    if c.zoom >= 1 or c.contrast >= 1:
        out.append(f"zoom={c.zoom} and contrast={c.contrast} must be below 1")
    if not 0 <= c.tta_shift < c.image_size // 2:
        out.append(f"tta_shift={c.tta_shift} must be from 0 to below half the image side ({c.image_size // 2})")
    if c.translate >= 0.5:
        out.append(f"translate={c.translate} must be below 0.5 (a fraction of the image side)")
    if not 0.0 <= c.warmup < 1.0:
        out.append(f"warmup={c.warmup} must be a fraction of the schedule in [0, 1)")
    if c.lr <= 0 or c.min_lr > c.lr:
        out.append(f"lr={c.lr} must be positive and at least min_lr={c.min_lr}")
    if c.epochs < 1:
        out.append(f"epochs={c.epochs} must be at least 1")
    if c.batch_size < 2 or c.eval_batch_size < 1:
        out.append(
            f"batch_size={c.batch_size} must be at least 2 (batch norm needs two rows)"
            f" and eval_batch_size={c.eval_batch_size} at least 1"
        )
    if c.patience < 1:
        out.append(f"patience={c.patience} must be at least 1")
    if c.monitor not in MONITORS:
        out.append(f"monitor={c.monitor!r} must be one of: {', '.join(MONITORS)}")
    if not 0 < c.bn_momentum <= 1 or c.bn_eps <= 0:
        out.append(f"bn_momentum={c.bn_momentum} must be in (0, 1] and bn_eps={c.bn_eps} positive")
    if c.num_threads is not None and c.num_threads < 1:
        out.append(f"num_threads={c.num_threads} must be at least 1 or None")
    return out


PRESETS: dict[str, TrainConfig] = {
    # The full recipe; meant for a GPU: 0.56 s/epoch for 17.5K images on one H100 (CUDA graphs,
    # bf16), under a minute for all 75 epochs; on 2 CPU cores it would take about ten hours.
    "bpp": TrainConfig(),
    # The recipe's network, narrower, retuned for a short CPU schedule: on 2 CPU cores a model
    # should train in under 5 minutes (14 epochs of 15K real faces in bf16 took 168 s on 2 idle
    # cores with native bf16, 76.1% gold accuracy), and the recipe's
    # regularisation, sized for 75 epochs, left it underfitting real faces (~50% gold accuracy,
    # train accuracy 52-56%). So: plain cross-entropy with label smoothing instead of focal
    # loss (whose alpha=0.25 scale and down-weighting of easy rows slow a short run), no class
    # weights (gold accuracy counts every image once), light dropout, a one-cycle rate peaking at
    # 3e-3, random shifts of up to 10% (real face crops are not centred the same way) and
    # test-time flip averaging. Batch 128 is ~25% faster per image than 64 on CPU. Batch-norm
    # momentum 0.1 (PyTorch's default) rather than Keras's 0.01: a run of ~1K steps would leave
    # 0.99**steps of the initial statistics in place. Widths stay multiples of 16 because
    # oneDNN's AVX-512 kernels work in blocks of 16 channels: (12, 24, 48) measured 1.8x
    # *slower* than (16, 32, 64). The third block is 128 wide (with a 128-unit dense layer):
    # at 12x12 it costs little, and on 7.5K FER2013 Training faces (16, 32, 128) x 12 epochs
    # beat both (32, 64, 128) x 8 epochs and the previous (16, 32, 64) x 10 epochs for less CPU
    # time; on real fer4, 14 epochs reached 75.5% gold accuracy against 74.9% for 12. Dropout
    # only before the head: per-activation dropout after the conv blocks draws one random number
    # per activation, and on CPU that was 19% of the CPU time (on 7.5K FER2013 Training faces,
    # 14 epochs, 1 thread: 230 CPU s against 285, held-out accuracy 73.0% against 72.7%, mean
    # of two seeds); dropping whole feature maps instead (Dropout2d) was as cheap but 0.7
    # points worse. Measured on real FER2013 faces in docs/trainer.md.
    "cpu": TrainConfig(
        widths=(16, 32, 128),
        dense=128,
        dropouts=(0.0, 0.0, 0.0, 0.3),
        focal_gamma=0.0,
        focal_alpha=1.0,
        class_weights=False,
        lr=3e-3,
        warmup=0.25,
        translate=0.1,
        batch_size=128,
        epochs=14,
        patience=14,
        bn_momentum=0.1,
        tta_flip=True,
    ),
    # For tests only: a toy network that still has every component of the recipe; it learns the
    # synthetic test patterns in seconds and is far too small for real faces. Runs are a few dozen
    # steps, so batch-norm running statistics need a faster momentum to be usable at eval time.
    "tiny": TrainConfig(
        widths=(8, 16, 32),
        dense=32,
        epochs=3,
        patience=3,
        batch_size=32,
        lr=3e-3,
        bn_momentum=0.3,
    ),
}


# One line per preset, for CLI help and reports.
PRESET_HELP: dict[str, str] = {
    "bpp": "the full recipe (widths 64/128/256, 75 epochs); for a GPU, ~0.6 s/epoch on an H100",
    "cpu": "widths 16/32/128, one-cycle, 14 epochs; ~15K training images in ~3 min on 2 idle cores with native bf16",
    "tiny": "tests only: a toy network (3 epochs), too small for real faces",
}


def make_config(preset: str = "cpu", **overrides: Any) -> TrainConfig:
    """Return the named preset with ``overrides`` applied.

    Args:
        preset: A key of :data:`PRESETS`.
        **overrides: :class:`TrainConfig` fields to change, e.g. ``epochs=5``.

    Returns:
        A validated, frozen config.

    Raises:
        InputError: For an unknown preset, an unknown field or an invalid value.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    names = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InputError(f"unknown training option {', '.join(map(repr, unknown))}; choose from: {', '.join(names)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config from ``dataclasses.asdict`` output (e.g. one stored in a checkpoint).

    Raises:
        InputError: If the dict has fields this version does not know or invalid values.
    """
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(
            f"stored training config has unknown fields {', '.join(map(repr, unknown))}; "
            "it was written by a newer fercurate"
        )
    return TrainConfig(**data)


def config_hash(config: TrainConfig) -> str:
    """Return a short, stable hash of what the config trains, for keying cached models.

    Execution-only fields (:data:`EXECUTION_FIELDS`: device, threads, memory format) are left
    out, and :data:`TRAINER_VERSION` is mixed in.

    Returns:
        12 hex characters.
    """
    data = {k: v for k, v in dataclasses.asdict(config).items() if k not in EXECUTION_FIELDS}
    data["trainer_version"] = TRAINER_VERSION
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
