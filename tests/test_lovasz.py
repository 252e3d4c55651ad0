"""The Lovasz IoU term: on hard predictions it is exactly 1 - IoU pooled over the batch, it
ranks a worse mask above a better one where soft Dice need not, and it trains."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="losses are the train extra's")

from train.losses import BceDiceLoss, lovasz_iou_loss, soft_dice_loss  # noqa: E402


def hard_logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask > 0, 30.0, -30.0)


def pooled_iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    inter = (pred * target).sum().item()
    union = ((pred + target) > 0).sum().item()
    return inter / union


def test_on_hard_predictions_it_is_one_minus_the_pooled_iou_of_each_class():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(3, 2, 16, 16, generator=g) > 0.7).float()
    pred = target.clone()
    pred[:, 0, :4] = 1.0 - pred[:, 0, :4]   # class 0: a band of errors
    pred[1, 1, 5, :] = 1.0                   # class 1: one row of false alarms in one image
    want = [1.0 - pooled_iou(pred[:, c], target[:, c]) for c in range(2)]
    assert lovasz_iou_loss(hard_logits(pred), target).item() == pytest.approx(sum(want) / 2, abs=1e-5)
    assert lovasz_iou_loss(hard_logits(target), target).item() == pytest.approx(0.0, abs=1e-6)


def test_an_absent_class_charges_its_most_confident_false_alarm():
    target = torch.zeros(1, 1, 4, 4)
    logits = torch.full((1, 1, 4, 4), -6.0)
    logits[0, 0, 2, 2] = 1.0
    assert lovasz_iou_loss(logits, target).item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), rel=1e-5)


def test_it_follows_iou_where_the_summed_error_is_the_same():
    # Two predictions with the same summed error: one spreads it thinly over many pixels
    # (every pixel still on the right side of 0.5), one puts it all on a few pixels.
    target = torch.zeros(1, 1, 10, 10)
    target[0, 0, :5] = 1.0
    spread = torch.where(target > 0, 0.9, 0.1)
    lumped = target.clone()
    lumped[0, 0, 0, :] = 0.0   # 10 defect pixels missed outright: the same L1 error as 0.1 on 100 pixels
    logit = lambda p: torch.logit(p.clamp(1e-6, 1 - 1e-6))  # noqa: E731
    assert (spread - target).abs().sum().item() == pytest.approx((lumped - target).abs().sum().item())
    assert lovasz_iou_loss(logit(lumped), target) > lovasz_iou_loss(logit(spread), target)


def test_added_to_bce_dice_it_changes_the_loss_and_a_step_lowers_it():
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(2, 2, 12, 12, generator=g) > 0.8).float()
    logits = torch.randn(2, 2, 12, 12, generator=g, requires_grad=True)
    plain = BceDiceLoss()(logits, target)
    with_term = BceDiceLoss(lovasz_weight=0.5)(logits, target)
    assert with_term.item() == pytest.approx(plain.item() + 0.5 * lovasz_iou_loss(logits, target).item(), rel=1e-5)
    assert plain.item() == pytest.approx(
        (torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)).item(), rel=1e-6)
    opt = torch.optim.Adam([logits], lr=0.3)
    before = lovasz_iou_loss(logits, target).item()
    for _ in range(30):
        opt.zero_grad()
        lovasz_iou_loss(logits, target).backward()
        opt.step()
    assert lovasz_iou_loss(logits, target).item() < before / 2


def test_fit_config_refuses_a_negative_weight():
    from train.config import FitConfig

    with pytest.raises(ValueError, match="lovasz_weight must be >= 0"):
        FitConfig(data="d", out="o", lovasz_weight=-1.0)
