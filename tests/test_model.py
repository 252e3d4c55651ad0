"""The segmenter family: shapes for any frame size, every named size, loss, export-friendliness."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from train.losses import BceDiceLoss, soft_dice_loss  # noqa: E402
from train.model import SIZES, UNetConfig, build_model  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("hw", [(64, 96), (50, 77), (200, 200)])
def test_every_size_returns_logits_at_input_size(size, hw):
    model = build_model({"size": size, "in_channels": 1, "num_classes": 3}).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 1, *hw))
    assert y.shape == (2, 3, *hw)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_any_input_channels_and_class_count():
    model = build_model(UNetConfig(size="nano", in_channels=3, num_classes=7)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 65)).shape == (1, 7, 33, 65)


def test_unknown_size_fails_listing_valid_ones():
    with pytest.raises(ValueError) as e:
        build_model({"size": "huge", "in_channels": 1, "num_classes": 4})
    for name in SIZES:
        assert name in str(e.value)


def test_unknown_config_field_is_named():
    with pytest.raises(ValueError, match="widht"):
        build_model({"size": "nano", "in_channels": 1, "num_classes": 4, "widht": 3})


def test_padding_does_not_leak_into_the_cropped_output():
    # A 32-multiple frame needs no padding: the crop must be the identity there,
    # and a non-multiple frame must equal the top-left of a run on its own padding.
    torch.manual_seed(0)
    model = build_model({"size": "nano", "in_channels": 1, "num_classes": 2}).eval()
    x = torch.randn(1, 1, 40, 70)
    padded = torch.nn.functional.pad(x, (0, 26, 0, 24), mode="replicate")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[:, :, :40, :70])


def test_traced_model_matches_eager_at_fixed_size():
    # Static-shape tracing is what ONNX export relies on: no data-dependent control flow.
    model = build_model({"size": "nano", "in_channels": 1, "num_classes": 4}).eval()
    x = torch.randn(1, 1, 50, 100)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        x2 = torch.randn(1, 1, 50, 100)
        torch.testing.assert_close(traced(x2), model(x2))


def test_bigger_sizes_have_more_parameters():
    counts = [sum(p.numel() for p in build_model({"size": s, "in_channels": 1, "num_classes": 4}).parameters()) for s in SIZES]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_soft_dice_is_zero_for_a_perfect_prediction_and_high_for_the_opposite():
    target = torch.zeros(2, 2, 8, 8)
    target[:, :, 2:5, 2:5] = 1
    perfect = (target * 2 - 1) * 50
    assert soft_dice_loss(perfect, target).item() < 1e-3
    assert soft_dice_loss(-perfect, target).item() > 0.9


def test_loss_falls_when_fitting_a_rectangle():
    torch.manual_seed(0)
    model = build_model({"size": "nano", "in_channels": 1, "num_classes": 1})
    x = torch.zeros(4, 1, 32, 64)
    y = torch.zeros(4, 1, 32, 64)
    x[:, :, 8:20, 10:40] = 2.0
    y[:, :, 8:20, 10:40] = 1.0
    loss_fn = BceDiceLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
