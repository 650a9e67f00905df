"""The training loop: ``train(config, train, val, classes) -> TrainResult``, plus its helpers.

Reads like nanoGPT's train.py turned into a function: validate, pick the device, seed, move the
data to the device once, build model and optimizer, then loop over epochs with a cosine learning
rate, evaluate, keep the best weights and stop early. Small pure helpers (:func:`lr_at`,
:func:`focal_loss`, :func:`evaluate`) sit above it; prediction and self-describing checkpoints
below. Imports torch.

Choices worth knowing (each mirrors the Keras recipe unless it says otherwise):

* L2 1e-4 is applied as Adam ``weight_decay = 2 * l2`` on conv/dense kernels only. Keras's
  ``kernel_regularizer=l2(1e-4)`` adds ``1e-4 * sum(w**2)`` to the loss, whose gradient
  ``2e-4 * w`` is exactly what coupled (non-decoupled) Adam weight decay adds to the gradient; so
  the optimisation is identical, without building the penalty into the autograd graph every step.
  Reported losses are therefore the data term only (Keras would include the penalty).
* The loss is Keras's ``CategoricalFocalCrossentropy(alpha, gamma, label_smoothing)`` on the
  smoothed targets, weighted per example by the balanced class weight of its label and averaged
  over the batch (Keras ``class_weight`` semantics). Validation loss is unweighted, as in Keras.
* The cosine schedule is stepped every batch over ``config.epochs`` epochs (Keras ``CosineDecay``
  with ``decay_steps = epochs * steps_per_epoch``).
* Early stopping watches ``config.monitor`` (validation accuracy by default; see
  :class:`~fercurate.train.config.TrainConfig`) and restores the best epoch's weights.
* On CPU training is deterministic: the same data, config and thread count give bit-identical
  weights and history. With ``amp`` (the default) it runs in bf16 autocast where the CPU has
  native bf16 (AVX512-BF16 / AMX: 1.5-2.5x faster with oneDNN) and in fp32 elsewhere, so two
  machines of different kinds train slightly different models. On CUDA it uses bf16 autocast,
  cuDNN autotuning and (by default) one CUDA graph per training step, which are fast but not
  bit-reproducible.
  NHWC (``channels_last``) is used on both when enabled: it is cuDNN's fast path, and on CPU it
  measured 1.3-1.5x faster for this network too.
* The whole step (augmentation, forward, loss, backward, Adam) is graph-captured on CUDA because
  this network is too small to keep an H100 busy from Python: eager steps measured 7.7 ms of
  host time against 1.9 ms of GPU work; replayed, an epoch of 17.5K images takes ~0.56 s.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fercurate.errors import DeviceError, InputError
from fercurate.manifest import atomic_write
from fercurate.train.config import TrainConfig, config_from_dict, config_hash
from fercurate.train.data import (
    ArraySplit,
    DeviceSplit,
    augment,
    check_split,
    class_weights,
    ordered_batches,
    shuffled_batches,
    to_float,
)
from fercurate.train.model import build_model, kernel_parameters

CHECKPOINT_FORMAT = "fercurate-train-checkpoint"
CHECKPOINT_VERSION = 1
# OneCycleLR's default div_factor: warm-up starts at lr / 25.
WARMUP_DIV = 25.0

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model: The network with the best epoch's weights, in eval mode, on ``device``.
        config: The config it was trained with.
        classes: Class names; output column ``i`` is ``classes[i]``.
        history: One dict per epoch run (see :func:`train` for the keys).
        best_epoch: 1-based epoch whose weights ``model`` holds.
        best_metric: Its value of ``config.monitor``.
        epochs_run: Epochs actually run (below ``config.epochs`` if stopped early).
        seconds: Wall time of the whole run.
        device: Where it trained, e.g. ``cpu`` or ``cuda:0``.
        precision: ``bf16`` (autocast, see :func:`uses_bf16`) or ``fp32``.
        optimizer_state: Adam state at ``best_epoch`` (None after loading a checkpoint without it).
        fit_probs: With ``train(record_from=e)``: (N, K) the mean softmax of each training row over
            the batches it was trained on from epoch ``e`` (0-based) on, in train mode on its
            augmented view, in the training split's order; NaN for a row never seen in those
            epochs. None otherwise.
    """

    model: nn.Module
    config: TrainConfig
    classes: list[str]
    history: list[dict[str, Any]]
    best_epoch: int
    best_metric: float
    epochs_run: int
    seconds: float
    device: str
    precision: str = "fp32"
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)
    fit_probs: np.ndarray | None = field(default=None, repr=False)

    @property
    def stopped_early(self) -> bool:
        """True if early stopping ended the run before ``config.epochs``."""
        return self.epochs_run < self.config.epochs


# -- helpers ---------------------------------------------------------------------------------


def resolve_device(name: str | torch.device) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N`` into a usable ``torch.device``.

    Raises:
        DeviceError: CUDA was requested but is not available.
        InputError: The name is not one of the accepted ones.
    """
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name} was requested but CUDA is not available "
                f"(torch {torch.__version__}, CPU build?); use --device cpu or auto"
            )
        if ":" in name and int(name[5:]) >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {name} was requested but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible; use --device cuda or auto"
            )
        return torch.device(name)
    raise InputError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, cuda:N")


def lr_at(epoch: float, config: TrainConfig) -> float:
    """Learning rate at a (fractional) epoch: optional linear warm-up, then cosine decay.

    Without warm-up ``lr_at(0) == config.lr``; with ``config.warmup = w`` the rate rises linearly
    from ``lr / 25`` to ``lr`` over the first ``w * epochs`` epochs (one-cycle). Either way
    ``lr_at(config.epochs) == config.min_lr``; the loop calls it every batch with
    ``epoch + batch / batches_per_epoch``.
    """
    t = min(max(epoch / config.epochs, 0.0), 1.0)
    if t < config.warmup:
        start = config.lr / WARMUP_DIV
        return start + (config.lr - start) * t / config.warmup
    t = (t - config.warmup) / (1.0 - config.warmup)
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float,
    alpha: float,
    label_smoothing: float,
    weights: torch.Tensor | None = None,
    soft_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example categorical focal loss on label-smoothed targets (Keras semantics).

    ``loss_i = sum_c alpha * (1 - p_ic)**gamma * -t_ic * log p_ic`` with
    ``t = (1 - s) * onehot + s / C``. With ``gamma=0`` and ``alpha=1`` it is the soft-target cross
    entropy (``F.cross_entropy(..., label_smoothing=s)``); ``alpha`` scales it linearly.

    Args:
        logits: ``(N, C)``; cast to fp32 so the log-softmax is stable under autocast.
        target: ``(N,)`` class indices.
        gamma: Focusing exponent.
        alpha: Overall scale.
        label_smoothing: ``s``.
        weights: Optional ``(C,)`` class weights; example ``i`` is scaled by ``weights[target_i]``.
        soft_target: Optional ``(N, C)`` target distributions (annotator votes) used instead of the
            one-hot of ``target``; smoothed the same way.

    Returns:
        ``(N,)`` losses; the caller reduces them.
    """
    n_classes = logits.shape[1]
    logp = F.log_softmax(logits.float(), dim=1)
    # scatter, not F.one_hot: one_hot range-checks the labels with a host sync, which a CUDA
    # graph capture forbids (labels were validated up front).
    off = label_smoothing / n_classes
    if soft_target is None:
        soft = torch.full_like(logp, off).scatter_(1, target[:, None], 1.0 - label_smoothing + off)
    else:  # --targets votes: the normalised votes (FER+'s cross-entropy training)
        soft = soft_target.float() * (1.0 - label_smoothing) + off
    # log-softmax instead of Keras's clip(p, 1e-7) then log: same value, no gradient cliff.
    loss = (alpha * (1.0 - logp.exp()).pow(gamma) * -soft * logp).sum(dim=1)
    return loss if weights is None else loss * weights[target]


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam with the recipe's L2 on kernels only (see the module docstring for why weight decay)."""
    kernels, others = kernel_parameters(model)
    groups = [
        {"params": kernels, "weight_decay": 2.0 * config.l2},
        {"params": others, "weight_decay": 0.0},
    ]
    if device.type != "cuda":
        return torch.optim.Adam(groups, lr=config.lr)
    # The fused kernel is one launch for all parameters, which matters for a net this small;
    # capturable + a tensor learning rate let the step live inside a CUDA graph while the
    # schedule still changes the rate every batch (set_lr fills the tensor in place).
    lr = torch.tensor(config.lr, device=device)
    return torch.optim.Adam(groups, lr=lr, fused=True, capturable=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate, in place when it is a tensor (see make_optimizer)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles).

    oneDNN then runs bf16 convolutions 1.5-2.5x faster than fp32 for this network (measured on 2
    cores, docs/trainer.md). Without those instructions it emulates bf16 and is *slower* than
    fp32, so training stays fp32 there. The probes are private torch helpers; a torch without them
    reads as no native bf16.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and bool(probe()) for probe in probes)


def uses_bf16(amp: bool, device: torch.device) -> bool:
    """Whether a run with ``amp`` on ``device`` computes in bf16 autocast: on CUDA, and on CPUs
    with native bf16 (:func:`cpu_has_native_bf16`); fp32 otherwise."""
    if not amp:
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def _autocast(amp: bool, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if not uses_bf16(amp, device):
        return contextlib.nullcontext()
    # No weight-cast cache on CUDA: a CUDA graph capture must not keep tensors cached across
    # steps. On CPU the cache is per autocast region, which is one forward pass here anyway.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=device.type != "cuda")


def _prepare_model(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


@torch.no_grad()
def evaluate(model: nn.Module, split: DeviceSplit, config: TrainConfig, device: torch.device) -> tuple[float, float]:
    """Mean unweighted loss and accuracy of ``model`` on ``split``, in eval mode.

    The model's previous train/eval mode is restored afterwards.

    Returns:
        ``(loss, accuracy)``.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for idx in ordered_batches(len(split), config.eval_batch_size):
        x = to_float(split.x[idx], config.channels_last)
        y = split.y[idx]
        with _autocast(config.amp, device):
            logits = model(x)
        loss_sum += focal_loss(
            logits,
            y,
            gamma=config.focal_gamma,
            alpha=config.focal_alpha,
            label_smoothing=config.label_smoothing,
        ).sum()
        correct += (logits.argmax(dim=1) == y).sum()
    model.train(was_training)
    n = len(split)
    return loss_sum.item() / n, correct.item() / n


TrainStep = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class FitRecord:
    """Device accumulators of each training row's softmax while it trains, from epoch ``start`` on.

    ``on`` is a device scalar, 1 in the epochs recorded and 0 before: a tensor, not a Python
    flag, so a captured CUDA graph reads it on every replay.
    """

    start: int  # the first epoch recorded (0-based)
    sums: torch.Tensor  # (N, K) summed softmax
    counts: torch.Tensor  # (N,) batches summed per row
    on: torch.Tensor  # () 1.0 while recording

    @classmethod
    def zeros(cls, start: int, n: int, k: int, device: torch.device) -> FitRecord:
        return cls(
            start, torch.zeros(n, k, device=device), torch.zeros(n, device=device), torch.zeros((), device=device)
        )

    def begin_epoch(self, epoch: int) -> None:
        self.on.fill_(1.0 if epoch >= self.start else 0.0)

    def add(self, idx: torch.Tensor, logits: torch.Tensor) -> None:
        probs = torch.softmax(logits.detach().float(), dim=1)
        self.sums.index_add_(0, idx, probs * self.on)
        self.counts.index_add_(0, idx, self.on.expand(idx.shape[0]))

    def mean(self) -> np.ndarray:
        counts = self.counts.cpu().numpy()[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, self.sums.cpu().numpy() / counts, np.nan).astype(np.float32)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DeviceSplit,
    config: TrainConfig,
    device: torch.device,
    weights: torch.Tensor | None,
    generator: torch.Generator | None,
    zero_grad: bool,
    record: FitRecord | None = None,
) -> TrainStep:
    """Return ``step(idx, sums)``: one optimisation step on rows ``idx`` of ``data``.

    ``step`` adds the batch's summed loss and correct count into ``sums[0]`` and ``sums[1]`` on
    the device, and with ``record`` each row's softmax into it. With ``zero_grad`` it first sets
    the gradients to None (eager training); without, they must be zero or None on entry, because a
    captured CUDA graph keeps its own gradient buffers and the caller (:class:`CudaGraphStep`)
    manages them.
    """

    def step(idx: torch.Tensor, sums: torch.Tensor) -> None:
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)
        x = augment(to_float(data.x[idx]), config, generator)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.y[idx]
        with _autocast(config.amp, device):
            logits = model(x)
        loss = focal_loss(
            logits,
            y,
            gamma=config.focal_gamma,
            alpha=config.focal_alpha,
            label_smoothing=config.label_smoothing,
            weights=weights,
            soft_target=data.soft[idx] if config.targets == "votes" and data.soft is not None else None,
        )
        # Keras class_weight semantics: the weighted sum over the batch size, not over the weight
        # sum, so a batch of rare classes takes a larger step.
        loss = loss.mean()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        sums[0] += loss.detach() * y.shape[0]
        sums[1] += (logits.detach().argmax(dim=1) == y).sum()
        if record is not None:
            record.add(idx, logits)

    return step


class CudaGraphStep:
    """Run a :data:`TrainStep` as a replayed CUDA graph for full batches.

    The first ``warmup`` full batches run eagerly on a side stream (cuDNN autotuning, cuBLAS
    workspaces and the allocator must settle before capture, as ``torch.cuda.graphs`` requires),
    the next one is captured, and every later full batch copies its indices into the graph's
    static index buffer and replays it. A short final batch has other shapes and runs eagerly.
    Randomness inside the graph (augmentation, dropout) must come from the default CUDA
    generator, whose per-replay offsets the capture records.
    """

    def __init__(self, step: TrainStep, optimizer: torch.optim.Optimizer, batch_size: int, warmup: int = 3) -> None:
        self.step, self.optimizer, self.batch_size, self.warmup = step, optimizer, batch_size, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.idx: torch.Tensor | None = None
        self.side = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def __call__(self, idx: torch.Tensor, sums: torch.Tensor) -> None:
        if len(idx) != self.batch_size:
            # After capture the gradients are the graph's buffers: zero them, never free them.
            self.optimizer.zero_grad(set_to_none=self.graph is None)
            self.step(idx, sums)
            return
        if self.graph is None and self.warmup > 0:
            self.warmup -= 1
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self.optimizer.zero_grad(set_to_none=True)
                self.step(idx, sums)
            torch.cuda.current_stream().wait_stream(self.side)
            return
        if self.graph is None or self.idx is None:
            self.idx = idx.clone()
            # None gradients at capture make backward allocate them in the graph's pool and
            # assign (not accumulate) them on every replay. Capture records without running.
            self.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step(self.idx, sums)
        self.idx.copy_(idx)
        self.graph.replay()


@contextlib.contextmanager
def _torch_settings(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Seed and configure torch for one run, and put every process-global setting back after.

    The library is called from other people's programs, so the caller's RNG state, thread count
    and determinism flags must survive a call to :func:`train`.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    benchmark = torch.backends.cudnn.benchmark
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices, device_type=device.type):
        try:
            torch.manual_seed(config.seed)
            if config.num_threads is not None:
                torch.set_num_threads(config.num_threads)
            if device.type == "cpu":
                torch.use_deterministic_algorithms(True)
                # Deterministic mode also NaN-fills every fresh buffer, which cost ~20% of CPU
                # time in profiles; correct kernels never read uninitialised memory anyway.
                torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
            else:
                # Autotuned cuDNN kernels are faster but may differ run to run; CUDA runs are
                # documented as not bit-reproducible.
                torch.backends.cudnn.benchmark = True
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]
            torch.backends.cudnn.benchmark = benchmark


def _check_inputs(config: TrainConfig, train: ArraySplit, val: ArraySplit | None, classes: Sequence[str]) -> None:
    if len(classes) < 2:
        raise InputError(f"training needs at least two classes, got {list(classes)}")
    check_split(train, "train", len(classes), config.image_size)
    if val is not None:
        check_split(val, "val", len(classes), config.image_size)
    if config.targets == "votes":
        soft = train.soft
        if soft is None or soft.shape != (len(train), len(classes)):
            raise InputError(
                f"targets='votes' needs the train split's vote distributions, shape ({len(train)}, {len(classes)}); "
                "import votes first (fercurate votes import) or train with targets='labels'"
            )
        if (soft < 0).any() or not np.allclose(soft.sum(axis=1), 1.0, atol=1e-4):
            raise InputError("train split's vote distributions must be non-negative rows summing to 1")
    counts = np.bincount(np.asarray(train.y), minlength=len(classes))
    for name, count in zip(classes, counts, strict=True):
        if count == 0:
            raise InputError(
                f"class {name!r} has no rows in the train split; add examples of it or leave it "
                f"out of the class list ({', '.join(classes)})"
            )


# -- training --------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    train: ArraySplit,
    val: ArraySplit | None,
    classes: Sequence[str],
    progress: Progress | None = None,
    on_epoch: Callable[[nn.Module, int], None] | None = None,
    record_from: int | None = None,
) -> TrainResult:
    """Train the recipe's CNN on ``train``, early-stopping on ``val``.

    Args:
        config: Hyperparameters (see :func:`~fercurate.train.config.make_config`).
        train: Training images and labels.
        val: Validation images and labels, for early stopping and the best-epoch choice; None
            trains every epoch of the schedule and keeps the last weights (``val_loss`` and
            ``val_acc`` are NaN in the history).
        classes: Class names; labels index into it.
        progress: Called after every epoch with a dict holding ``epoch`` (1-based), ``epochs``,
            ``train_loss``, ``train_acc`` (on augmented batches, in train mode), ``val_loss``,
            ``val_acc``, ``lr`` (at the epoch's start), ``seconds`` (this epoch) and
            ``improved`` (whether this epoch became the best). The same dicts form ``history``.
        on_epoch: Called after every epoch with the model (in train mode) and the 1-based epoch,
            e.g. to predict with each of the last epochs' weights; it must leave the model as it
            found it (:func:`predict_proba` does).
        record_from: From this 0-based epoch on, average each training row's softmax over the
            batches it trains in (``TrainResult.fit_probs``): how well the model fits the row's
            label while learning it, which ``relabel-review flag`` ranks with. None records
            nothing. The cost is a softmax and an index-add per batch.

    Returns:
        The best model and how it got there.

    Raises:
        InputError: Empty or malformed splits, labels out of range, a class without training
            rows, or an unknown device name.
        DeviceError: CUDA requested but not available.
    """
    # -- check everything before spending any time
    _check_inputs(config, train, val, classes)
    device = resolve_device(config.device)
    n_classes = len(classes)
    t_start = time.perf_counter()

    with _torch_settings(config, device):
        # -- data: each split becomes one uint8 tensor on the device, for the whole run
        gen = torch.Generator(device=device).manual_seed(config.seed)
        train_d = DeviceSplit.from_arrays(train, device)
        val_d = None if val is None else DeviceSplit.from_arrays(val, device)
        weights = torch.from_numpy(class_weights(train.y, n_classes)).to(device) if config.class_weights else None

        # -- model, optimizer and the training step
        model = _prepare_model(build_model(config, n_classes), config, device)
        optimizer = make_optimizer(model, config, device)
        steps_per_epoch = math.ceil(len(train_d) / config.batch_size)
        fit_record = None if record_from is None else FitRecord.zeros(record_from, len(train_d), n_classes, device)
        train_step: TrainStep
        if device.type == "cuda" and config.cuda_graphs:
            # Graph replays can only draw from the default generator (seeded above).
            eager = make_train_step(
                model, optimizer, train_d, config, device, weights, None, zero_grad=False, record=fit_record
            )
            train_step = CudaGraphStep(eager, optimizer, config.batch_size)
        else:
            train_step = make_train_step(
                model, optimizer, train_d, config, device, weights, gen, zero_grad=True, record=fit_record
            )

        # -- the loop
        history: list[dict[str, Any]] = []
        sign = 1.0 if config.monitor == "val_acc" else -1.0  # so that larger is always better
        best_score, best_epoch, best_metric = -math.inf, 0, math.nan
        best_state: dict[str, torch.Tensor] = {}
        best_opt_state: dict[str, Any] | None = None
        # (loss sum, correct) stay on the device, one .item() per epoch instead of a sync per
        # step; one tensor zeroed in place, because a captured graph holds its address.
        sums = torch.zeros(2, device=device)
        for epoch in range(config.epochs):
            t_epoch = time.perf_counter()
            model.train()
            sums.zero_()
            if fit_record is not None:
                fit_record.begin_epoch(epoch)
            seen = 0
            for step, idx in enumerate(shuffled_batches(len(train_d), config.batch_size, gen)):
                set_lr(optimizer, lr_at(epoch + step / steps_per_epoch, config))
                train_step(idx, sums)
                seen += len(idx)

            if on_epoch is not None:
                on_epoch(model, epoch + 1)
            if val_d is None:  # no hold-out: every epoch of the schedule, the last one kept
                val_loss = val_acc = math.nan
                improved, best_epoch = True, epoch + 1
            else:
                val_loss, val_acc = evaluate(model, val_d, config, device)
                value = val_acc if config.monitor == "val_acc" else val_loss
                improved = sign * value > best_score + config.min_delta
                if improved:
                    best_score, best_epoch, best_metric = sign * value, epoch + 1, value
                    # Copies on the device: cheap, and restoring needs no host round trip.
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    best_opt_state = copy.deepcopy(optimizer.state_dict())
            record = {
                "epoch": epoch + 1,
                "epochs": config.epochs,
                "train_loss": float(sums[0]) / seen,
                "train_acc": float(sums[1]) / seen,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": lr_at(epoch, config),
                "seconds": time.perf_counter() - t_epoch,
                "improved": improved,
            }
            history.append(record)
            if progress is not None:
                progress(dict(record))
            if epoch + 1 - best_epoch >= config.patience:
                break

        # -- restore the best epoch, as Keras EarlyStopping(restore_best_weights=True); without a
        # hold-out the last epoch is the one kept
        if val_d is None:
            best_opt_state = copy.deepcopy(optimizer.state_dict())
        else:
            model.load_state_dict(best_state)
        model.eval()

    return TrainResult(
        model=model,
        config=config,
        classes=list(classes),
        history=history,
        best_epoch=best_epoch,
        best_metric=best_metric,
        epochs_run=len(history),
        seconds=time.perf_counter() - t_start,
        device=str(device),
        precision="bf16" if uses_bf16(config.amp, device) else "fp32",
        optimizer_state=best_opt_state,
        fit_probs=None if fit_record is None else fit_record.mean(),
    )


# -- prediction ------------------------------------------------------------------------------


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    x: np.ndarray,
    device: str | torch.device | None = None,
    batch_size: int = 512,
    amp: bool = True,
) -> np.ndarray:
    """Class probabilities for uint8 ``(N, H, W)`` images.

    Args:
        model: A model from :func:`train` or :func:`load_checkpoint`.
        x: uint8 ``(N, H, W)`` grayscale images of the size the model was trained on.
        device: Where to run; the model is moved there. None keeps the model's device.
        batch_size: Rows per forward pass.
        amp: bf16 autocast where :func:`uses_bf16` says so, as :func:`train` evaluates with the
            default ``config.amp``; pass the config's ``amp`` to match a run that turned it off.

    Returns:
        float32 ``(N, C)`` softmax probabilities; rows sum to 1.

    Raises:
        InputError: ``x`` is not a 3-D uint8 array.
    """
    x = np.asarray(x)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise InputError(f"images must be uint8 (N, H, W), got {x.dtype} {x.shape}")
    if device is not None:
        model.to(resolve_device(device))
    param = next(model.parameters())
    dev = param.device
    # Feed the layout the first conv's weights are in, so no conversion runs per batch.
    channels_last = any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )
    n_out = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    was_training = model.training
    model.eval()
    out = np.empty((x.shape[0], n_out), dtype=np.float32)
    for start in range(0, x.shape[0], batch_size):
        xb = torch.tensor(x[start : start + batch_size])  # a copy: x may be a read-only view
        xb = to_float(xb.unsqueeze(1).to(dev), channels_last)
        with _autocast(amp, dev):
            logits = model(xb)
        out[start : start + xb.shape[0]] = F.softmax(logits.float(), dim=1).cpu().numpy()
    model.train(was_training)
    return out


# -- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(result: TrainResult, path: str | os.PathLike[str]) -> None:
    """Write a self-describing checkpoint atomically (temp file in the same folder, then rename).

    The file holds ``model`` (state dict, on CPU), ``optimizer`` (Adam state at the best epoch,
    or None), ``config`` (as a dict), ``classes``, ``epoch`` (the best epoch), ``best_metric``,
    ``history`` and bookkeeping (format, version, config hash, torch version), so
    :func:`load_checkpoint` needs nothing else to rebuild the model.
    """
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "optimizer": result.optimizer_state,
        "config": asdict(result.config),
        "config_hash": config_hash(result.config),
        "classes": list(result.classes),
        "epoch": result.best_epoch,
        "best_metric": result.best_metric,
        "epochs_run": result.epochs_run,
        "history": result.history,
        "seconds": result.seconds,
        "device": result.device,
        "precision": result.precision,
        "torch": str(torch.__version__),  # TorchVersion would need an unpickling allowlist
    }
    # A reader sees the old file or the new one, never half of one (one atomic write for every file).
    atomic_write(Path(path), lambda tmp: _write_synced(payload, tmp))


def _write_synced(payload: dict[str, Any], tmp: Path) -> None:
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TrainResult:
    """Rebuild a :class:`TrainResult` from :func:`save_checkpoint` output.

    Args:
        path: The checkpoint file.
        device: Where to put the model (``auto``, ``cpu``, ``cuda``...).

    Returns:
        The result with the model in eval mode on ``device``.

    Raises:
        InputError: The file is missing, unreadable or not a fercurate checkpoint.
        DeviceError: CUDA requested but not available.
    """
    dev = resolve_device(device)
    try:
        # weights_only: a checkpoint is data; never execute pickled code from a shared cache.
        ckpt = torch.load(Path(path), map_location=dev, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise InputError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{str(path)!r} is not a fercurate training checkpoint")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise InputError(
            f"checkpoint {str(path)!r} has version {ckpt['version']}, newer than this fercurate "
            f"reads ({CHECKPOINT_VERSION}); upgrade fercurate"
        )
    config = config_from_dict(ckpt["config"])
    classes = list(ckpt["classes"])
    model = _prepare_model(build_model(config, len(classes)), config, dev)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return TrainResult(
        model=model,
        config=config,
        classes=classes,
        history=list(ckpt["history"]),
        best_epoch=int(ckpt["epoch"]),
        best_metric=float(ckpt["best_metric"]),
        epochs_run=int(ckpt.get("epochs_run", len(ckpt["history"]))),
        seconds=float(ckpt.get("seconds", 0.0)),
        device=str(dev),
        precision=str(ckpt.get("precision", "fp32")),
        optimizer_state=ckpt.get("optimizer"),
    )
