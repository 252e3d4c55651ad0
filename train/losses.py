"""BCE + soft Dice (+ optionally a Lovasz IoU term) on multi-label sigmoid outputs (one channel
per defect class)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, per class over the whole batch, averaged over classes.

    Pooling over the batch (not per image) keeps the gradient sane on the many
    images with no defect of a class, where a per-image Dice is undefined.
    """
    probs = torch.sigmoid(logits.float())
    target = target.float()
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice.mean()


def _jaccard_steps(gt_sorted: torch.Tensor) -> torch.Tensor:
    """How much 1 - IoU grows as each pixel, taken in order of decreasing error, turns wrong:
    the gradient of the Lovasz extension of the Jaccard loss (Berman et al., 2018). One row
    per class, pixels along the last dimension."""
    positives = gt_sorted.sum(-1, keepdim=True)
    intersection = positives - gt_sorted.cumsum(-1)
    union = positives + (1.0 - gt_sorted).cumsum(-1)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=-1)


def lovasz_iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Convex surrogate of 1 - IoU per class, pooled over the batch, averaged over classes.

    Soft Dice and BCE reward every pixel alike; this term weighs each pixel by how much it
    moves the pooled IoU (what NEU-Seg's mIoU scores), so the errors that cost IoU most, the
    thin rim of a small inclusion, get the largest share of the gradient. Errors are on
    probabilities (|target - p|), bounded like Dice, so it adds to BCE without rescaling.
    A class absent from the batch charges its single most confident false alarm.
    """
    target = target.float().transpose(0, 1).reshape(target.shape[1], -1)
    errors = (target - torch.sigmoid(logits.float()).transpose(0, 1).reshape_as(target)).abs()
    with torch.no_grad():  # the ordering is piecewise constant: only the errors carry gradient
        order = errors.argsort(dim=-1, descending=True)
        weights = torch.empty_like(errors).scatter_(-1, order, _jaccard_steps(target.gather(-1, order)))
    return (errors * weights).sum(-1).mean()


class BceDiceLoss(torch.nn.Module):
    """`pos_weight` (one per class): how much a defect pixel of that class counts against a
    background pixel in the BCE term; thin classes (pits, cracks) are a few pixels in a
    frame of background, and unweighted BCE lets the model ignore them.

    `weight_other_classes`: a pixel of another defect class counts against class c as
    much as c's own defect pixel does. Without it a heavily weighted class is cheap to
    fire on every dark mark: the built-in model flagged 84% of crack pixels as pits,
    because missing a pit cost 20 and calling a crack a pit cost 1.

    `lovasz_weight`: weight of `lovasz_iou_loss` added to BCE + Dice (0: not computed).
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, pos_weight: tuple[float, ...] | None = None,
                 weight_other_classes: bool = False, lovasz_weight: float = 0.0) -> None:
        super().__init__()
        if weight_other_classes and pos_weight is None:
            raise ValueError("weight_other_classes needs pos_weight (the weight an other-class pixel gets)")
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.weight_other_classes = weight_other_classes
        self.lovasz_weight = lovasz_weight
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pw = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        logits, target = logits.float(), target.float()
        if self.weight_other_classes:
            per_pixel = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
            other = (target.sum(1, keepdim=True) - target) > 0   # some other class is present here
            bce = (per_pixel * torch.where(other & (target == 0), pw, torch.ones_like(pw))).mean()
        else:
            bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
        loss = self.bce_weight * bce + self.dice_weight * soft_dice_loss(logits, target)
        if self.lovasz_weight:
            loss = loss + self.lovasz_weight * lovasz_iou_loss(logits, target)
        return loss
