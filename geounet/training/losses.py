"""Training losses, by the name ``TrainConfig.loss`` gives.

Every loss takes logits ``(batch, channels, rows, cols)`` and a target ``(batch, rows, cols)``
of class ids, and ignores pixels whose target is :data:`~geounet.labels.IGNORE` (nodata in
the image, unlabelled in the mask): they add nothing to the loss or its gradient.

One channel is a binary model (sigmoid foreground score, target 1 = foreground):

- ``bce``: binary cross-entropy, averaged over the labelled pixels;
- ``focal_dice``: focal loss (gamma 2: confident pixels weigh less) plus soft Dice;
- ``bce_dice``: BCE plus soft Dice of the foreground, which keeps thin rare classes from
  being drowned by the background.

More channels are a softmax model (target = class id); the same names mean:

- ``bce``: cross-entropy (weighted by ``weights`` per class if given), averaged over the
  labelled pixels (by their weights);
- ``focal_dice``: focal cross-entropy (gamma 2) plus multi-class soft Dice;
- ``bce_dice``: cross-entropy plus multi-class soft Dice: the mean over classes of each
  class's soft Dice loss, so a rare class weighs as much as the background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geounet.labels import IGNORE

FOCAL_GAMMA = 2


def loss(logits: torch.Tensor, target: torch.Tensor, kind: str,
         weights: torch.Tensor | None = None) -> torch.Tensor:
    """The ``kind`` loss (a name of ``TrainConfig.loss``) of ``logits`` against ``target``.

    One channel: the binary loss; more: the softmax loss, with per-class ``weights`` of the
    pixel term if given (binary models take none).
    """
    if logits.shape[1] == 1:
        return binary_loss(logits[:, 0], target, kind)
    return softmax_loss(logits, target, kind, weights)


def softmax_loss(logits: torch.Tensor, target: torch.Tensor, kind: str,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (or focal) + multi-class soft Dice of ``logits`` ``(batch, classes,
    rows, cols)`` against class ids ``target`` ``(batch, rows, cols)``."""
    classes = logits.shape[1]
    keep = target != IGNORE
    if not keep.any():
        return logits.sum() * 0
    ids = torch.where(keep, target, 0).long()
    log_prob = F.log_softmax(logits, dim=1)
    pixel = -log_prob.gather(1, ids[:, None])[:, 0]          # (batch, rows, cols)
    if kind == "focal_dice":
        pixel = (1 - torch.exp(-pixel)) ** FOCAL_GAMMA * pixel
    weight = keep.float() if weights is None else weights[ids] * keep
    mean = (pixel * weight).sum() / weight.sum().clamp_min(1e-6)
    if kind == "bce":
        return mean
    prob = log_prob.exp() * keep[:, None]
    truth = F.one_hot(ids, classes).permute(0, 3, 1, 2).float() * keep[:, None]
    inter = (prob * truth).sum(dim=(0, 2, 3))
    dice = (2 * inter + 1) / (prob.sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3)) + 1)
    return mean + (1 - dice).mean()


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
