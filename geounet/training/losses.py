"""Training losses, by the name ``TrainConfig.loss`` gives.

Every loss takes logits ``(batch, channels, rows, cols)`` and a target ``(batch, rows, cols)``
of class ids, and ignores pixels whose target is :data:`~geounet.labels.IGNORE` (nodata in
the image, unlabelled in the mask): they add nothing to the loss or its gradient.

One channel is a binary model (sigmoid foreground score, target 1 = foreground):

- ``bce``: binary cross-entropy, averaged over the labelled pixels;
- ``focal_dice``: focal loss (gamma 2: confident pixels weigh less) plus soft Dice;
- ``bce_dice``: BCE plus soft Dice of the foreground, which keeps thin rare classes from
  being drowned by the background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geounet.labels import IGNORE

FOCAL_GAMMA = 2


def loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``kind`` loss (a name of ``TrainConfig.loss``) of ``logits`` against ``target``.

    Only binary models (one channel) are trained so far; a softmax model would get its own
    pixel term (cross-entropy) and a Dice term per class here.
    """
    if logits.shape[1] != 1:
        raise ValueError(f"training losses are binary (one logit channel), the model has "
                         f"{logits.shape[1]}")
    return binary_loss(logits[:, 0], target, kind)


def binary_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """BCE (or focal) + soft Dice of foreground ``logits`` ``(batch, rows, cols)``."""
    keep = target != IGNORE
    truth = (target == 1).float()
    pixel = binary_pixel_loss(logits, truth, kind == "focal_dice")
    mean = pixel[keep].mean() if keep.any() else logits.sum() * 0
    if kind == "bce":
        return mean
    return mean + soft_dice(torch.sigmoid(logits) * keep, truth, keep)


def binary_pixel_loss(logits: torch.Tensor, truth: torch.Tensor, focal: bool) -> torch.Tensor:
    """Per-pixel binary cross-entropy of ``logits`` against ``truth`` (0/1), focal if asked."""
    bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    if focal:
        p_true = torch.exp(-bce)
        bce = (1 - p_true) ** FOCAL_GAMMA * bce
    return bce


def soft_dice(prob: torch.Tensor, truth: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice of ``prob`` (zero where not ``keep``) and ``truth`` over ``keep``."""
    inter = (prob * truth).sum()
    return 1 - (2 * inter + 1) / (prob.sum() + (truth * keep).sum() + 1)
