"""Tests for fercurate.train: config, data/augmentation, loss, schedule, loop, checkpoints, metrics.

Everything runs on CPU with synthetic 48x48 data generated here. Training runs use one torch
thread: results are deterministic per thread count, and one thread is also the fastest on a
shared 2-core machine. Trained results are module-scoped fixtures so each training runs once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fercurate.errors import DeviceError, InputError
from fercurate.train import (
    PRESET_HELP,
    PRESETS,
    ArraySplit,
    TrainConfig,
    TrainResult,
    class_weights,
    classification_metrics,
    config_hash,
    focal_loss,
    load_checkpoint,
    lr_at,
    make_config,
    paired_bootstrap_ci,
    predict_proba,
    resolve_device,
    save_checkpoint,
    synthetic_split,
    train,
)
from fercurate.train.data import (
    DeviceSplit,
    augment,
    ordered_batches,
    shuffled_batches,
    to_float,
)
from fercurate.train.model import build_model

CLASSES = ["happy", "neutral", "sad"]


def tiny(**overrides: object) -> TrainConfig:
    return make_config("tiny", **{"device": "cpu", "num_threads": 1, **overrides})


@pytest.fixture(scope="module")
def data() -> tuple[ArraySplit, ArraySplit]:
    return synthetic_split(300, 3, seed=1), synthetic_split(120, 3, seed=2)


@pytest.fixture(scope="module")
def trained(data: tuple[ArraySplit, ArraySplit]) -> tuple[TrainResult, list[dict]]:
    seen: list[dict] = []
    result = train(tiny(), *data, CLASSES, progress=seen.append)
    return result, seen


@pytest.fixture(scope="module")
def trained_again(data: tuple[ArraySplit, ArraySplit]) -> TrainResult:
    return train(tiny(), *data, CLASSES)


def _without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# -- config ----------------------------------------------------------------------------------


def test_presets_and_overrides() -> None:
    assert set(PRESETS) == {"bpp", "cpu", "tiny"} == set(PRESET_HELP)
    bpp = PRESETS["bpp"]
    assert bpp.widths == (64, 128, 256) and bpp.dense == 256 and bpp.epochs == 75
    assert bpp.dropouts == (0.25, 0.30, 0.40, 0.50) and bpp.lr == 5e-4 and bpp.l2 == 1e-4
    assert (bpp.rotation, bpp.zoom, bpp.contrast, bpp.label_smoothing) == (0.05, 0.05, 0.05, 0.1)
    assert (bpp.focal_gamma, bpp.focal_alpha) == (2.0, 0.25)
    c = make_config("cpu", epochs=2, widths=[4, 8, 16])
    assert c.epochs == 2 and c.widths == (4, 8, 16)  # lists normalised to tuples
    assert make_config() == PRESETS["cpu"]


def test_make_config_errors() -> None:
    with pytest.raises(InputError, match="unknown preset 'x'; choose one of: bpp, cpu, tiny"):
        make_config("x")
    with pytest.raises(InputError, match="unknown training option 'epoch'"):
        make_config("tiny", epoch=3)
    with pytest.raises(InputError, match="epochs=0"):
        make_config("tiny", epochs=0)
    with pytest.raises(InputError, match="monitor"):
        make_config("tiny", monitor="val_f1")
    with pytest.raises(InputError, match=r"translate=0.5 must be below 0.5"):
        make_config("tiny", translate=0.5)
    with pytest.raises(InputError, match=r"translate=-0.1 must not be negative"):
        make_config("tiny", translate=-0.1)
    with pytest.raises(InputError, match=r"warmup=1.0 must be a fraction of the schedule in \[0, 1\)"):
        make_config("tiny", warmup=1.0)


def test_config_hash() -> None:
    a = make_config("cpu")
    assert config_hash(a) == config_hash(make_config("cpu"))
    assert len(config_hash(a)) == 12
    # Execution-only knobs do not change what is trained, so they keep the hash.
    assert config_hash(a) == config_hash(dataclasses.replace(a, device="cuda", num_threads=2))
    assert config_hash(a) != config_hash(dataclasses.replace(a, lr=1e-4))
    assert config_hash(a) != config_hash(dataclasses.replace(a, seed=1))


# -- device ----------------------------------------------------------------------------------


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="--device cuda was requested but CUDA is not available"):
        resolve_device("cuda")


def test_train_cuda_without_cuda(monkeypatch: pytest.MonkeyPatch, data: tuple[ArraySplit, ArraySplit]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="use --device cpu or auto"):
        train(tiny(device="cuda"), *data, CLASSES)


# -- data and augmentation -------------------------------------------------------------------


def _batch(n: int = 64) -> torch.Tensor:
    return to_float(torch.from_numpy(synthetic_split(n, 3, seed=3).x).unsqueeze(1))


def test_augment_keeps_shape_dtype_range() -> None:
    x = _batch()
    out = augment(x, tiny(rotation=0.2, zoom=0.2, contrast=0.5), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)


def test_augment_identity_when_off() -> None:
    x = _batch()
    off = tiny(flip=False, rotation=0.0, zoom=0.0, contrast=0.0)
    assert torch.equal(augment(x, off, torch.Generator().manual_seed(0)), x)


def test_augment_flip_really_flips() -> None:
    x = _batch()
    out = augment(x, tiny(flip=True, rotation=0.0, zoom=0.0, contrast=0.0), torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(o, xi.flip(-1))) for o, xi in zip(out, x, strict=True)]
    kept = [bool(torch.equal(o, xi)) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54  # about half of 64


def test_augment_contrast_keeps_mean_and_is_seeded() -> None:
    x = _batch() * 0.5 + 0.25  # away from the clip bounds, so the mean is exactly kept
    c = tiny(flip=False, rotation=0.0, zoom=0.0, contrast=0.3)
    out = augment(x, c, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))
    assert torch.equal(out, augment(x, c, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment(x, c, torch.Generator().manual_seed(1)))


def test_augment_translate_shifts_and_is_seeded() -> None:
    x = _batch()
    c = tiny(flip=False, rotation=0.0, zoom=0.0, contrast=0.0, translate=0.2)
    out = augment(x, c, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)
    assert torch.equal(out, augment(x, c, torch.Generator().manual_seed(0)))
    # a shift moves content, so the pixel-wise change is large, not a resampling blur
    assert float((out - x).abs().mean()) > 0.02
    # a tiny shift is close to the identity (grid_sample resamples at nearly the same points)
    near = augment(x, dataclasses.replace(c, translate=1e-6), torch.Generator().manual_seed(0))
    torch.testing.assert_close(near, x, atol=1e-3, rtol=0)


def test_small_rotation_is_close_to_identity() -> None:
    x = _batch()
    c = tiny(flip=False, rotation=1e-6, zoom=0.0, contrast=0.0)
    torch.testing.assert_close(augment(x, c, torch.Generator().manual_seed(0)), x, atol=1e-3, rtol=0)


def test_batch_indices_cover_every_row() -> None:
    order = torch.cat(list(shuffled_batches(100, 32, torch.Generator().manual_seed(0))))
    assert sorted(order.tolist()) == list(range(100))
    # A trailing batch of one row cannot be batch-normalised and is dropped.
    assert [len(b) for b in shuffled_batches(65, 32, torch.Generator())] == [32, 32]
    assert [s.stop for s in ordered_batches(65, 32)] == [32, 64, 65]


def test_device_split_and_class_weights() -> None:
    split = synthetic_split(10, 2, seed=0)
    d = DeviceSplit.from_arrays(split, torch.device("cpu"))
    assert d.x.shape == (10, 1, 48, 48) and d.x.dtype == torch.uint8 and len(d) == 10
    y = np.array([0, 0, 0, 1, 2, 2])
    w = class_weights(y, 3)
    assert w.shape == (3,) and w.dtype == np.float32
    np.testing.assert_allclose(w, [6 / 9, 6 / 3, 6 / 6])
    assert math.isclose(float(w[y].sum()), len(y), rel_tol=1e-6)  # rows' weights sum to n
    np.testing.assert_allclose(class_weights(np.array([0, 1, 0, 1]), 2), [1.0, 1.0])


# -- loss and schedule -----------------------------------------------------------------------


def test_focal_loss_reduces_to_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4, generator=g) * 3
    y = torch.randint(0, 4, (32,), generator=g)
    ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=0.1)
    fl = focal_loss(logits, y, gamma=0.0, alpha=1.0, label_smoothing=0.1)
    torch.testing.assert_close(fl, ce)
    # alpha scales the whole loss (Keras CategoricalFocalCrossentropy), it is not per class.
    torch.testing.assert_close(focal_loss(logits, y, gamma=0.0, alpha=0.25, label_smoothing=0.1), 0.25 * ce)
    focused = focal_loss(logits, y, gamma=2.0, alpha=1.0, label_smoothing=0.1)
    assert bool((focused < ce).all())  # the focal term down-weights every example
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(
        focal_loss(logits, y, gamma=2.0, alpha=1.0, label_smoothing=0.1, weights=w),
        focused * w[y],
    )


def test_lr_schedule_endpoints() -> None:
    c = tiny(lr=1e-3, epochs=10)
    assert lr_at(0, c) == 1e-3
    assert lr_at(10, c) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(5, c) == pytest.approx(5e-4)
    assert lr_at(20, c) == lr_at(10, c)  # clamped after the schedule
    steps = [lr_at(e / 4, c) for e in range(41)]
    assert all(a >= b for a, b in itertools.pairwise(steps))
    assert lr_at(10, tiny(lr=1e-3, min_lr=1e-5, epochs=10)) == pytest.approx(1e-5)


def test_lr_schedule_with_warmup() -> None:
    c = tiny(lr=1e-3, epochs=10, warmup=0.3)
    assert lr_at(0, c) == pytest.approx(1e-3 / 25)
    assert lr_at(3, c) == pytest.approx(1e-3)  # the peak ends the warm-up
    assert lr_at(1.5, c) == pytest.approx((1e-3 / 25 + 1e-3) / 2)
    assert lr_at(10, c) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(6.5, c) == pytest.approx(5e-4)  # cosine half-way over the remaining 7 epochs
    steps = [lr_at(e / 4, c) for e in range(41)]
    assert all(a < b for a, b in itertools.pairwise(steps[:13]))
    assert all(a >= b for a, b in itertools.pairwise(steps[12:]))


# -- model -----------------------------------------------------------------------------------


def test_model_shapes() -> None:
    model = build_model(make_config("bpp"), 7)
    assert model(torch.rand(2, 1, 48, 48)).shape == (2, 7)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 64, 128, 128, 256, 256]
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.25, 0.30, 0.40, 0.50]
    odd = build_model(make_config("tiny", image_size=50), 2)
    assert odd(torch.rand(2, 1, 50, 50)).shape == (2, 2)


def test_tta_flip_averages_a_mirror_pair() -> None:
    torch.manual_seed(0)
    model = build_model(tiny(tta_flip=True), 3).eval()
    x = torch.rand(5, 1, 48, 48)
    with torch.no_grad():
        p, p_mirror = model(x).softmax(1), model(x.flip(-1)).softmax(1)
        inner = model.net  # the bare network inside the wrapper
        expected = (inner(x).softmax(1) + inner(x.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(p, p_mirror)  # flip-invariant
    torch.testing.assert_close(p, expected)  # and the mean of the two probabilities
    assert not torch.allclose(inner(x).softmax(1), inner(x.flip(-1)).softmax(1))  # the net alone is not
    model.train()
    assert model(x).shape == (5, 3)  # train mode: one plain pass, no averaging
    assert not isinstance(build_model(tiny(), 3), type(model))


def test_tta_shift_averages_five_positions_and_their_mirrors() -> None:
    torch.manual_seed(0)
    s = 2
    model = build_model(tiny(tta_flip=True, tta_shift=s), 3).eval()
    x = torch.rand(4, 1, 48, 48)
    views = model.views(x)
    assert len(views) == 10 and all(v.shape == x.shape for v in views)
    # the four moves: content down, up, right and left by s pixels, borders reflected
    torch.testing.assert_close(views[1][..., s:, :], x[..., :-s, :])
    torch.testing.assert_close(views[2][..., :-s, :], x[..., s:, :])
    torch.testing.assert_close(views[3][..., :, s:], x[..., :, :-s])
    torch.testing.assert_close(views[4][..., :, :-s], x[..., :, s:])
    torch.testing.assert_close(views[1][..., s - 1, :], x[..., 1, :])  # reflected, not zero-filled
    torch.testing.assert_close(views[5], x.flip(-1))
    with torch.no_grad():
        inner = model.net
        expected = torch.stack([inner(v).softmax(1) for v in views]).mean(0)
        torch.testing.assert_close(model(x).softmax(1), expected)
        flip_only = build_model(tiny(tta_flip=True), 3).eval()
        flip_only.load_state_dict(model.state_dict())  # the same network, fewer views
        assert not torch.allclose(flip_only(x).softmax(1), expected)
    with pytest.raises(InputError, match="tta_shift"):
        tiny(tta_shift=24)


def test_tta_flip_model_trains_and_round_trips(data: tuple[ArraySplit, ArraySplit], tmp_path: Path) -> None:
    result = train(tiny(tta_flip=True, translate=0.1, warmup=0.2, epochs=2), *data, CLASSES)
    _, val = data
    p = predict_proba(result.model, val.x)
    np.testing.assert_allclose(p, predict_proba(result.model, val.x[:, :, ::-1].copy()), atol=1e-5)
    save_checkpoint(result, tmp_path / "tta.pt")
    assert np.array_equal(predict_proba(load_checkpoint(tmp_path / "tta.pt").model, val.x), p)


# -- training --------------------------------------------------------------------------------


def test_tiny_preset_learns(trained: tuple[TrainResult, list[dict]], data: tuple[ArraySplit, ArraySplit]) -> None:
    result, seen = trained
    _, val = data
    assert result.best_metric > 0.9  # chance is 1/3
    assert result.device == "cpu" and result.classes == CLASSES
    assert result.epochs_run == len(result.history) == len(seen) == 3
    assert set(seen[0]) >= {
        "epoch",
        "epochs",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "seconds",
    }
    assert [h["epoch"] for h in seen] == [1, 2, 3]
    proba = predict_proba(result.model, val.x)
    assert proba.shape == (len(val), 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    # The returned model is the best epoch's, so it scores best_metric on val.
    assert float((proba.argmax(1) == val.y).mean()) == result.best_metric


def test_training_is_deterministic_on_cpu(
    trained: tuple[TrainResult, list[dict]],
    trained_again: TrainResult,
    data: tuple[ArraySplit, ArraySplit],
) -> None:
    a, _ = trained
    assert _without_time(a.history) == _without_time(trained_again.history)
    for (k, v), w in zip(a.model.state_dict().items(), trained_again.model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    _, val = data
    assert np.array_equal(predict_proba(a.model, val.x), predict_proba(trained_again.model, val.x))


def test_different_seed_differs(trained: tuple[TrainResult, list[dict]], data: tuple[ArraySplit, ArraySplit]) -> None:
    other = train(tiny(seed=1, epochs=1), *data, CLASSES)
    assert other.history[0]["train_loss"] != trained[0].history[0]["train_loss"]


def test_train_restores_global_torch_state(data: tuple[ArraySplit, ArraySplit]) -> None:
    rng = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    train(tiny(epochs=1, num_threads=1 if threads != 1 else 2), *data, CLASSES)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_early_stopping_restores_best(data: tuple[ArraySplit, ArraySplit]) -> None:
    # min_delta=1 makes improvement impossible after epoch 1, while the weights keep training.
    result = train(tiny(epochs=10, patience=2, min_delta=1.0), *data, CLASSES)
    assert result.stopped_early and result.epochs_run == 3
    assert result.best_epoch == 1 and result.best_metric == result.history[0]["val_acc"]
    assert [h["improved"] for h in result.history] == [True, False, False]
    _, val = data
    acc = float((predict_proba(result.model, val.x).argmax(1) == val.y).mean())
    assert acc == result.best_metric
    assert result.optimizer_state is not None


def test_early_stopping_on_val_loss(data: tuple[ArraySplit, ArraySplit]) -> None:
    result = train(tiny(epochs=2, monitor="val_loss", class_weights=False), *data, CLASSES)
    best = min(h["val_loss"] for h in result.history)
    assert result.best_metric == best
    assert result.history[result.best_epoch - 1]["val_loss"] == best


def test_training_without_a_hold_out_keeps_the_last_epoch(data: tuple[ArraySplit, ArraySplit]) -> None:
    train_split, val = data
    snapshots: dict[int, np.ndarray] = {}

    def on_epoch(model: torch.nn.Module, epoch: int) -> None:
        assert model.training  # the loop hands the model over mid-training
        snapshots[epoch] = predict_proba(model, val.x)

    # min_delta=1 would stop a run with a hold-out after 2 epochs; without one every epoch runs
    result = train(tiny(epochs=3, patience=1, min_delta=1.0), train_split, None, CLASSES, on_epoch=on_epoch)
    assert result.epochs_run == 3 and result.best_epoch == 3 and not result.stopped_early
    assert all(math.isnan(h["val_acc"]) and math.isnan(h["val_loss"]) for h in result.history)
    assert sorted(snapshots) == [1, 2, 3]
    # the model returned is the last epoch's, the one on_epoch saw last, in eval mode
    assert not result.model.training
    np.testing.assert_array_equal(predict_proba(result.model, val.x), snapshots[3])
    assert not np.array_equal(snapshots[1], snapshots[3])
    assert result.optimizer_state is not None


def test_fit_probs_record_how_well_each_training_row_is_fitted(data: tuple[ArraySplit, ArraySplit]) -> None:
    train_split, val = data
    labels = train_split.y.copy()
    flipped = np.arange(len(labels)) % 10 == 0  # one row in ten gets the next class
    labels[flipped] = (labels[flipped] + 1) % len(CLASSES)
    noisy = ArraySplit(train_split.x, labels)
    plain = train(tiny(epochs=4), noisy, None, CLASSES)
    result = train(tiny(epochs=4), noisy, None, CLASSES, record_from=2)
    assert plain.fit_probs is None
    fit = result.fit_probs
    assert fit is not None and fit.shape == (len(labels), len(CLASSES)) and not np.isnan(fit).any()
    np.testing.assert_allclose(fit.sum(axis=1), 1.0, atol=1e-5)
    given = fit[np.arange(len(labels)), labels]
    # a wrong label is fitted far worse than a right one while the model learns the classes
    assert given[flipped].mean() < given[~flipped].mean() - 0.3
    # recording reads the logits and draws nothing: the training is the same
    np.testing.assert_array_equal(predict_proba(result.model, val.x), predict_proba(plain.model, val.x))
    # nothing recorded when the recording would start after the last epoch
    late = train(tiny(epochs=2), noisy, None, CLASSES, record_from=2)
    assert late.fit_probs is not None and np.isnan(late.fit_probs).all()


def test_checkpoint_round_trip(
    trained: tuple[TrainResult, list[dict]], data: tuple[ArraySplit, ArraySplit], tmp_path: Path
) -> None:
    result, _ = trained
    path = tmp_path / "models" / "tiny.pt"
    save_checkpoint(result, path)
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pt"]  # no temp file left behind
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.config == result.config and loaded.classes == result.classes
    assert loaded.history == result.history and loaded.best_epoch == result.best_epoch
    assert loaded.best_metric == result.best_metric and loaded.optimizer_state is not None
    _, val = data
    assert np.array_equal(predict_proba(loaded.model, val.x), predict_proba(result.model, val.x))
    raw = torch.load(path, weights_only=True)
    expected = {"model", "optimizer", "config", "classes", "epoch", "best_metric", "history"}
    assert expected <= set(raw)
    json.dumps(raw["config"])  # the stored config is plain data


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(InputError, match="not a fercurate training checkpoint"):
        load_checkpoint(other)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tr, va: (ArraySplit(tr.x[:0], tr.y[:0]), va), "the train split is empty"),
        (lambda tr, va: (tr, ArraySplit(va.x[:0], va.y[:0])), "the val split is empty"),
        (
            lambda tr, va: (ArraySplit(tr.x[tr.y != 1], tr.y[tr.y != 1]), va),
            "class 'neutral' has no rows in the train split",
        ),
        (lambda tr, va: (ArraySplit(tr.x, tr.y + 1), va), r"class indices in \[0, 2\]"),
        (lambda tr, va: (ArraySplit(tr.x.astype(np.float32), tr.y), va), "must be a uint8 array"),
        (lambda tr, va: (ArraySplit(tr.x[:, None], tr.y), va), "must be a uint8 array"),
        (lambda tr, va: (ArraySplit(tr.x[:, :40, :40], tr.y), va), "are 40x40 but the config"),
        (lambda tr, va: (ArraySplit(tr.x, tr.y[:-1]), va), "300 images but 299 labels"),
    ],
)
def test_train_input_errors(data: tuple[ArraySplit, ArraySplit], make, message: str) -> None:  # type: ignore[no-untyped-def]
    tr, va = make(*data)
    with pytest.raises(InputError, match=message):
        train(tiny(), tr, va, CLASSES)


def test_predict_proba_rejects_bad_input(trained: tuple[TrainResult, list[dict]]) -> None:
    with pytest.raises(InputError, match="uint8"):
        predict_proba(trained[0].model, np.zeros((2, 48, 48), dtype=np.float32))
    assert predict_proba(trained[0].model, np.zeros((0, 48, 48), np.uint8)).shape == (0, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_cuda_bf16_training(data: tuple[ArraySplit, ArraySplit], tmp_path: Path, cuda_graphs: bool) -> None:
    # 300 rows in batches of 32 leave a short last batch, which the graph path runs eagerly.
    result = train(make_config("tiny", device="cuda", cuda_graphs=cuda_graphs), *data, CLASSES, record_from=1)
    assert result.device.startswith("cuda") and result.best_metric > 0.9
    # the fit is recorded inside the captured graph too (its on/off switch is a device tensor)
    assert result.fit_probs is not None and not np.isnan(result.fit_probs).any()
    labels = data[0].y
    assert (result.fit_probs.argmax(1) == labels).mean() > 0.8
    save_checkpoint(result, tmp_path / "c.pt")
    on_cpu = load_checkpoint(tmp_path / "c.pt", device="cpu")
    _, val = data
    cpu_pred = predict_proba(on_cpu.model, val.x).argmax(1)
    gpu_pred = predict_proba(result.model, val.x).argmax(1)
    assert (cpu_pred == gpu_pred).mean() > 0.95  # bf16 on GPU vs fp32 on CPU may flip a borderline row


# -- metrics ---------------------------------------------------------------------------------


def test_classification_metrics_by_hand() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m.confusion == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert m.accuracy == pytest.approx(6 / 9)
    # a: precision 2/3, recall 2/3; b: 1/2, 1/2; c: 3/4, 3/4 -> F1 equals each.
    assert m.per_class["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m.per_class["c"]["support"] == 4
    assert m.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    d = m.to_dict()
    assert json.loads(json.dumps(d)) == d and d["classes"] == ["a", "b", "c"]


def test_classification_metrics_absent_class_and_errors() -> None:
    m = classification_metrics([0, 1, 0], [0, 1, 1], ["a", "b", "c"])
    assert m.per_class["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m.confusion[2] == [0, 0, 0]
    with pytest.raises(InputError, match="rows"):
        classification_metrics([0, 1], [0], ["a", "b"])
    with pytest.raises(InputError, match="outside the 2 classes"):
        classification_metrics([0, 2], [0, 1], ["a", "b"])
    with pytest.raises(InputError, match="zero rows"):
        classification_metrics([], [], ["a", "b"])


def test_paired_bootstrap_ci() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    # Shared difficulty plus a true accuracy gain of 0.05 for model b.
    u = rng.random(n)
    a = u < 0.70
    b = u < 0.75
    delta, lo, hi = paired_bootstrap_ci(a, b, n_boot=2000, seed=0)
    assert delta == pytest.approx(b.mean() - a.mean())
    assert lo < 0.05 < hi and lo > 0.0  # the paired design sees a clearly positive gain
    assert (delta, lo, hi) == paired_bootstrap_ci(a, b, n_boot=2000, seed=0)
    # Quantiles of 2000 draws sit on a 1/n grid and rarely move with the seed; 20 draws do.
    few = [paired_bootstrap_ci(a, b, n_boot=20, seed=s) for s in (0, 1)]
    assert few[0] != few[1]
    # Same interval as resampling row indices the slow way, within Monte-Carlo error.
    idx = np.random.default_rng(5).integers(0, n, size=(2000, n))
    naive = b[idx].mean(axis=1) - a[idx].mean(axis=1)
    assert np.quantile(naive, 0.025) == pytest.approx(lo, abs=0.003)
    assert np.quantile(naive, 0.975) == pytest.approx(hi, abs=0.003)
    assert paired_bootstrap_ci(a, a) == (0.0, 0.0, 0.0)
    with pytest.raises(InputError, match="same length"):
        paired_bootstrap_ci(a, b[:-1])
    with pytest.raises(InputError, match="zero rows"):
        paired_bootstrap_ci(a[:0], b[:0])


def test_import_does_not_pull_torch() -> None:
    code = (
        "import sys, fercurate.train, fercurate.train.metrics; "
        "fercurate.train.make_config('cpu'); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bf16_only_where_the_hardware_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from fercurate.train import loop

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not loop.uses_bf16(False, cpu) and not loop.uses_bf16(False, cuda)
    assert loop.uses_bf16(True, cuda)
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda native=native: native, raising=False)
        assert loop.cpu_has_native_bf16() is native
        assert loop.uses_bf16(True, cpu) is native
    # a torch without the probes reads as no native bf16 (emulated bf16 is slower than fp32)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert not loop.cpu_has_native_bf16()


def test_cpu_precision_follows_amp_and_hardware(
    trained: tuple[TrainResult, list[dict]], data: tuple[ArraySplit, ArraySplit], tmp_path: Path
) -> None:
    from fercurate.train import loop

    a, _ = trained
    native = loop.cpu_has_native_bf16()
    assert a.precision == ("bf16" if native else "fp32")
    fp32 = train(tiny(amp=False, epochs=1), *data, CLASSES)
    assert fp32.precision == "fp32"
    save_checkpoint(fp32, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt").precision == "fp32"
    if native:  # bf16 autocast is really used: the same seed gives a different first epoch
        bf16 = train(tiny(epochs=1), *data, CLASSES)
        assert bf16.history[0]["train_loss"] != fp32.history[0]["train_loss"]
        _, val = data
        # predictions follow amp too, so a fp32 run's model scores its best_metric in fp32
        proba = predict_proba(fp32.model, val.x, amp=False)
        assert float((proba.argmax(1) == val.y).mean()) == fp32.best_metric
