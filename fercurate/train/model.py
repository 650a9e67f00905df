"""The recipe's CNN: three blocks of two 3x3 convolutions, a dense layer and a linear head.

Imports torch. Layer order follows the Keras original (``Conv2D(activation="relu")`` then
``BatchNormalization``), and so does initialisation (Glorot-uniform kernels, zero biases), so the
PyTorch model is the same function family the 85% result was reached with.
"""

from __future__ import annotations

import math

import torch
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


class FlipAverage(nn.Module):
    """Test-time flip averaging around a network: in eval mode, the mean of the class
    probabilities of the image and of its mirror image, returned as log-probabilities (valid
    logits: their softmax is that mean). In train mode it is the bare network, so training
    augmentation and cost are unchanged."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            out: torch.Tensor = self.net(x)
            return out
        both = self.net(torch.cat([x, x.flip(-1)])).float().log_softmax(dim=1)
        plain, mirrored = both.chunk(2)
        return torch.logaddexp(plain, mirrored) - math.log(2.0)


def build_model(config: TrainConfig, n_classes: int) -> nn.Module:
    """Build the recipe's network for ``n_classes`` outputs.

    The model returns logits; softmax lives in the loss and in ``predict_proba`` where it can be
    computed stably in fp32.

    Args:
        config: Supplies ``widths``, ``dense``, ``dropouts``, ``image_size`` and BN settings.
        n_classes: Number of output classes (at least 2).

    Returns:
        An ``nn.Module`` mapping ``(N, 1, S, S)`` floats in [0, 1] to ``(N, n_classes)`` logits,
        wrapped in :class:`FlipAverage` when ``config.tta_flip`` is set.
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
    return FlipAverage(model) if config.tta_flip else model


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
