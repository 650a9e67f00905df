"""The recipe's CNN: three blocks of two 3x3 convolutions, a dense layer and a linear head.

Imports torch. Layer order follows the Keras original (``Conv2D(activation="relu")`` then
``BatchNormalization``), and so does initialisation (Glorot-uniform kernels, zero biases), so the
PyTorch model is the same function family the 85% result was reached with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fercurate.train.config import TrainConfig


def _block(c_in: int, c_out: int, dropout: float, config: TrainConfig) -> nn.Sequential:
    """Two ``conv3x3 -> ReLU -> BN`` layers, then a 2x2 max-pool and dropout."""
    layers: list[nn.Module] = []
    for c in (c_in, c_out):
        layers += [
            nn.Conv2d(c, c_out, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(c_out, eps=config.bn_eps, momentum=config.bn_momentum),
        ]
    layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def flat_size(config: TrainConfig) -> int:
    """Features after the three blocks: each 2x2 max-pool floors the side in half."""
    side = config.image_size // 2 // 2 // 2
    return config.widths[-1] * side * side


class ViewAverage(nn.Module):
    """Test-time augmentation around a network: in eval mode, the mean of the class probabilities
    over several views of each image, returned as log-probabilities (valid logits: their softmax
    is that mean). The views are the image, moved ``shift`` pixels each way along each axis
    (borders reflected, as training's random shifts fill them) when ``shift`` is positive, and
    the mirror image of each when ``flip`` is set. In train mode it is the bare network, so
    training augmentation and cost are unchanged.

    The wrapped network is the attribute ``net`` whatever the views, so checkpoints of a
    flip-only model load into it unchanged."""

    def __init__(self, net: nn.Module, flip: bool = True, shift: int = 0) -> None:
        super().__init__()
        self.net = net
        self.flip = flip
        self.shift = shift

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The views averaged in eval mode, each shaped like ``x``."""
        out = [x]
        s = self.shift
        if s > 0:
            side_h, side_w = x.shape[-2], x.shape[-1]
            padded = F.pad(x, (s, s, s, s), mode="reflect")
            for dy, dx in ((0, s), (2 * s, s), (s, 0), (s, 2 * s)):  # down, up, right, left
                out.append(padded[..., dy : dy + side_h, dx : dx + side_w])
        if self.flip:
            out += [v.flip(-1) for v in out]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            out: torch.Tensor = self.net(x)
            return out
        # one view at a time: a batch of ten views at once would hold ten times the activations
        logs = [self.net(v).float().log_softmax(dim=1) for v in self.views(x)]
        return torch.logsumexp(torch.stack(logs), dim=0) - math.log(len(logs))


def build_model(config: TrainConfig, n_classes: int) -> nn.Module:
    """Build the recipe's network for ``n_classes`` outputs.

    The model returns logits; softmax lives in the loss and in ``predict_proba`` where it can be
    computed stably in fp32.

    Args:
        config: Supplies ``widths``, ``dense``, ``dropouts``, ``image_size`` and BN settings.
        n_classes: Number of output classes (at least 2).

    Returns:
        An ``nn.Module`` mapping ``(N, 1, S, S)`` floats in [0, 1] to ``(N, n_classes)`` logits,
        wrapped in :class:`ViewAverage` when ``config.tta_flip`` or ``config.tta_shift`` is set.
    """
    w1, w2, w3 = config.widths
    d1, d2, d3, d4 = config.dropouts
    model = nn.Sequential(
        _block(1, w1, d1, config),
        _block(w1, w2, d2, config),
        _block(w2, w3, d3, config),
        nn.Flatten(),
        nn.Linear(flat_size(config), config.dense),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(config.dense, eps=config.bn_eps, momentum=config.bn_momentum),
        nn.Dropout(d4),
        nn.Linear(config.dense, n_classes),
    )
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            # Keras defaults; PyTorch's kaiming-uniform(a=sqrt(5)) would be a different recipe.
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if config.tta_flip or config.tta_shift:
        return ViewAverage(model, flip=config.tta_flip, shift=config.tta_shift)
    return model


def kernel_parameters(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split parameters into kernels and the rest, for the recipe's L2.

    Conv and dense kernels are L2-regularised (Keras ``kernel_regularizer``); biases and
    batch-norm scales/offsets are not, as in Keras.

    Returns:
        ``(kernels, others)``.
    """
    kernels: list[torch.Tensor] = []
    others: list[torch.Tensor] = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            kernels.append(m.weight)
            if m.bias is not None:
                others.append(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            others += [m.weight, m.bias]
    return kernels, others
