"""The built-in CNN trainer: the recipe that proves what cleaning a FER dataset bought.

Usage::

    from fercurate.train import ArraySplit, make_config, train, predict_proba

    result = train(make_config("cpu"), ArraySplit(x_tr, y_tr), ArraySplit(x_va, y_va), classes)
    proba = predict_proba(result.model, x_test)

Modules: ``config`` (TrainConfig, presets), ``data`` (splits, on-device batches, augmentation),
``model`` (the network), ``loop`` (train, evaluate, predict, checkpoints), ``metrics``.

Importing this package is cheap: ``config``, ``metrics`` and ``data.ArraySplit`` are numpy-only
and imported eagerly; ``loop`` and ``model`` import torch and are loaded on first use of one of
their names (PEP 562 module ``__getattr__``), so ``import fercurate.train.metrics`` or building a
config never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fercurate.train.config import (
    PRESET_HELP,
    PRESETS,
    TrainConfig,
    config_from_dict,
    config_hash,
    make_config,
)
from fercurate.train.data import ArraySplit, class_weights, synthetic_split
from fercurate.train.metrics import Metrics, classification_metrics, paired_bootstrap_ci

if TYPE_CHECKING:
    from fercurate.train.loop import (
        TrainResult,
        evaluate,
        focal_loss,
        load_checkpoint,
        lr_at,
        predict_proba,
        resolve_device,
        save_checkpoint,
        train,
        uses_bf16,
    )
    from fercurate.train.model import build_model

# Names that live in torch-importing modules, loaded on first access.
_LAZY = {
    "TrainResult": "fercurate.train.loop",
    "evaluate": "fercurate.train.loop",
    "focal_loss": "fercurate.train.loop",
    "load_checkpoint": "fercurate.train.loop",
    "lr_at": "fercurate.train.loop",
    "predict_proba": "fercurate.train.loop",
    "resolve_device": "fercurate.train.loop",
    "save_checkpoint": "fercurate.train.loop",
    "train": "fercurate.train.loop",
    "uses_bf16": "fercurate.train.loop",
    "build_model": "fercurate.train.model",
}

__all__ = [
    "PRESET_HELP",
    "PRESETS",
    "ArraySplit",
    "Metrics",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "class_weights",
    "classification_metrics",
    "config_from_dict",
    "config_hash",
    "evaluate",
    "focal_loss",
    "load_checkpoint",
    "lr_at",
    "make_config",
    "paired_bootstrap_ci",
    "predict_proba",
    "resolve_device",
    "save_checkpoint",
    "synthetic_split",
    "train",
    "uses_bf16",
]


def __getattr__(name: str) -> Any:
    # Not cached in globals(): looking the name up in its module every time keeps
    # monkeypatch.setattr(fercurate.train.loop, "train", ...) effective for package-level users.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
