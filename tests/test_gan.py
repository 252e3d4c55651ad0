"""The inpainting GAN: exact composite, global context of the FFC blocks, losses, pairs, a tiny fit + resume."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from helpers_gan_data import CLASSES, make_mask_folder, tiny_samples
from train.gan.discriminator import PatchDiscriminator
from train.gan.fit_gan import GanConfig, fit_gan, load_generator, paint
from train.gan.generator import FFCResBlock, GeneratorConfig, InpaintGenerator, composite
from train.gan.losses import d_adversarial, feature_matching, g_adversarial, masked_l1, r1_penalty
from train.gan.pairs import UNKNOWN, PairConfig, PairSampler, UnlabelledSampler, to_tensors
from train.gan.quality import frechet_distance, hole_l1_psnr
from train.gan.shape_bank import LabelledImage, labels_from_masks

torch.set_num_threads(1)


def _labelled(**kw):
    return [LabelledImage(s.image_id, s.image, labels_from_masks(s.masks)) for s in tiny_samples(**kw) if s.split == "train"]


def test_composite_keeps_pixels_outside_the_hole_bit_exact():
    torch.manual_seed(0)
    g = InpaintGenerator(GeneratorConfig(num_classes=2, base=8, ffc_blocks=1)).eval()
    real = torch.rand(2, 1, 32, 32) * 2 - 1
    hole = (torch.rand(2, 1, 32, 32) > 0.7).float()
    cmap = torch.zeros(2, 3, 32, 32)
    cmap[:, 0] = 1
    with torch.no_grad():
        gen = g(real * (1 - hole), hole, cmap)
    out = composite(gen, real, hole)
    outside = hole == 0
    assert torch.equal(out[outside], real[outside])  # bitwise, not approximately
    assert torch.equal(out[~outside], gen[~outside])
    assert gen.abs().max() <= 1.0


def test_painted_uint8_crops_equal_the_input_outside_the_hole():
    g = InpaintGenerator(GeneratorConfig(num_classes=2, base=8, ffc_blocks=1))
    pairs = [PairSampler(_labelled(), 2, PairConfig(crop=32)).sample(np.random.default_rng(i)) for i in range(4)]
    for p, out in zip(pairs, paint(g, pairs, 2)):
        assert out.dtype == np.uint8
        assert np.array_equal(out[~p.hole], p.image[~p.hole])
        assert p.hole.any()


def test_generator_rejects_sizes_it_cannot_downsample():
    g = InpaintGenerator(GeneratorConfig(num_classes=1, base=8, ffc_blocks=1))
    with pytest.raises(ValueError, match="multiples of 8"):
        g(torch.zeros(1, 1, 36, 32), torch.zeros(1, 1, 36, 32), torch.zeros(1, 2, 36, 32))


def test_one_ffc_block_sees_the_whole_image():
    # A 3x3 conv stack would need many layers to carry a corner to the opposite corner;
    # the spectral path does it in one block.
    torch.manual_seed(0)
    block = FFCResBlock(16, 0.75).eval()
    x = torch.randn(1, 16, 16, 16)
    y0 = block(x)
    x2 = x.clone()
    x2[..., 0, 0] += 5.0
    y1 = block(x2)
    assert (y1 - y0)[..., -1, -1].abs().max() > 1e-4


def test_discriminator_is_patchwise_returns_features_and_spectral_norm_is_optional():
    assert not any("parametrizations" in n for n, _ in PatchDiscriminator(num_classes=2, base=8).named_parameters())
    d = PatchDiscriminator(num_classes=2, base=8, spectral=True)
    logits, feats = d(torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64), torch.zeros(2, 3, 64, 64))
    assert logits.shape[0] == 2 and logits.shape[1] == 1 and logits.shape[-1] > 1
    assert len(feats) == 4
    assert any("parametrizations.weight" in n for n, _ in d.named_parameters())
    d.train()
    for _ in range(20):  # power iterations converge
        d(torch.randn(1, 1, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 3, 64, 64))
    w = d.layers[1][0].weight.detach().flatten(1)
    assert torch.linalg.matrix_norm(w, ord=2) < 1.1


def test_losses_behave():
    z = torch.zeros(4, 1, 3, 3)
    assert d_adversarial(z, z).item() == pytest.approx(2 * math.log(2))
    assert g_adversarial(z).item() == pytest.approx(math.log(2))
    real, gen = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    hole = torch.zeros(1, 1, 4, 4)
    hole[..., :2, :] = 1
    gen[..., 2:, :] = 5.0  # differences outside the hole do not count
    assert masked_l1(gen, real, hole).item() == 0.0
    gen[..., :2, :] = 1.0
    assert masked_l1(gen, real, hole, eps=0).item() == pytest.approx(1.0)


def test_adversarial_losses_call_only_the_painted_patches_fake():
    hole = torch.zeros(1, 1, 8, 8)
    hole[..., :4, :] = 1  # top half of the image painted: top half of a 2x2 patch grid
    real_logits = torch.full((1, 1, 2, 2), 3.0)
    fake_logits = torch.tensor([[[[-3.0, -3.0], [3.0, 3.0]]]])  # painted patches called fake, the real pixels real
    perfect = d_adversarial(real_logits, fake_logits, hole).item()
    assert perfect == pytest.approx(2 * math.log1p(math.exp(-3.0)))
    # Unmasked, the same discriminator is charged for calling the fake's real pixels real.
    assert d_adversarial(real_logits, fake_logits).item() > perfect + 1.0
    # The generator is judged on what it painted only: fooling there is all it can do.
    fooled = torch.tensor([[[[3.0, 3.0], [-9.0, -9.0]]]])
    assert g_adversarial(fooled, hole).item() == pytest.approx(math.log1p(math.exp(-3.0)))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    assert r1_penalty((3 * x).sum((1, 2, 3)), x).item() == pytest.approx(9 * 64)
    f = [torch.ones(1, 2), torch.zeros(1, 2)]
    assert feature_matching(f, [torch.zeros(1, 2), torch.zeros(1, 2)]).item() == pytest.approx(0.5)


def test_pairs_cover_real_defects_with_their_true_class_map():
    sampler = PairSampler(_labelled(), 2, PairConfig(crop=32))
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = sampler.sample(rng, "defect")
        assert p.image.shape == p.labels.shape == p.hole.shape == (32, 32)
        assert (p.labels[p.hole] > 0).any()  # a defect is inside the hole
        # The hole is a dilated component: its pixels next to the defect are clean steel.
        assert (p.labels[p.hole] == 0).any()
    clean = [sampler.sample(rng, "clean") for _ in range(10)]
    assert all(c.hole.any() for c in clean)
    real, hole, cmap = to_tensors(clean, 2)
    assert cmap.shape == (10, 3, 32, 32) and torch.all(cmap.sum(1) == 1)
    assert np.array_equal(cmap.argmax(1).numpy(), np.stack([c.labels for c in clean]))
    assert real.min() >= -1 and real.max() <= 1


def test_unlabelled_pairs_say_nothing_about_classes_and_take_their_holes_from_the_labelled_bank():
    labelled = _labelled()
    sampler = PairSampler(labelled, 2, PairConfig(crop=32))
    plain = [(f"u{i}", li.image) for i, li in enumerate(_labelled(seed=5))]  # other images, masks never passed
    unl = UnlabelledSampler(plain, sampler.bank, PairConfig(crop=32))
    rng = np.random.default_rng(0)
    pairs = [unl.sample(rng) for _ in range(12)]
    assert all(p.kind == "unlabelled" and p.hole.any() and (p.labels == UNKNOWN).all() for p in pairs)
    assert all(p.image.shape == p.hole.shape == (32, 32) for p in pairs)
    assert all(p.hole.mean() < 0.9 for p in pairs)  # a shape, not the whole crop: there is context to paint from
    mixed = pairs[:3] + [sampler.sample(rng, "defect") for _ in range(3)]
    _, _, cmap = to_tensors(mixed, 2)
    assert cmap.shape == (6, 3, 32, 32)
    assert torch.all(cmap[:3] == 0)  # unknown: no class channel is hot, not "clean steel"
    assert torch.all(cmap[3:].sum(1) == 1)
    with pytest.raises(ValueError, match="no unlabelled images"):
        UnlabelledSampler([], sampler.bank, PairConfig(crop=32))


def test_fit_with_unlabelled_images_reads_plain_folders_and_skips_broken_files(tmp_path):
    data = make_mask_folder(tmp_path / "data")
    plain = tmp_path / "plain"
    (plain / "line3").mkdir(parents=True)
    for i, s in enumerate(tiny_samples(n_train=5, n_val=0, seed=9)):
        cv2.imwrite(str(plain / "line3" / f"frame{i}.png"), s.image)
    (plain / "line3" / "broken.jpg").write_bytes(b"not a jpeg")
    cfg = dict(data=str(data), crop=32, batch_size=4, base=8, ffc_blocks=1, d_base=8, eval_pairs=4, threads=1, steps=2)
    m = fit_gan(GanConfig(out=str(tmp_path / "gan"), unlabelled_data=str(plain), **cfg))
    assert m["unlabelled_images"] == 5 and m["steps"] == 2
    assert len(m["unlabelled_skipped"]) == 1 and "broken.jpg" in m["unlabelled_skipped"][0]  # skipped, and said which
    # A labelled data set folder also serves: its masks are dropped as read.
    m = fit_gan(GanConfig(out=str(tmp_path / "gan2"), unlabelled_data=str(make_mask_folder(tmp_path / "other", seed=3)), **cfg))
    assert m["unlabelled_images"] == 12  # its train and val images alike
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no readable images"):
        fit_gan(GanConfig(out=str(tmp_path / "gan3"), unlabelled_data=str(tmp_path / "empty"), **cfg))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        fit_gan(GanConfig(out=str(tmp_path / "gan4"), unlabelled_data=str(tmp_path / "missing"), **cfg))
    with pytest.raises(ValueError, match="unlabelled_share"):
        GanConfig(out="x", unlabelled_share=1.0, **cfg)


def test_quality_numbers():
    a = np.zeros((8, 8), np.uint8)
    b = a.copy()
    hole = np.zeros((8, 8), bool)
    hole[:4] = True
    b[:4] = 51  # 0.2 of full scale in the hole
    b[4:] = 255  # outside the hole: ignored
    l1, psnr = hole_l1_psnr(b, a, hole)
    assert l1 == pytest.approx(0.2) and psnr == pytest.approx(10 * math.log10(1 / 0.04))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    assert abs(frechet_distance(x, x)) < 1e-6
    assert frechet_distance(x, x + np.array([2.0, 0, 0])) == pytest.approx(4.0, abs=1e-6)


def test_tiny_fit_writes_everything_and_resumes(tmp_path):
    data = make_mask_folder(tmp_path / "data")
    run = tmp_path / "gan"
    cfg = dict(data=str(data), out=str(run), crop=32, batch_size=2, base=8, ffc_blocks=1, d_base=8,
               eval_pairs=6, sample_every=2, checkpoint_every=2, threads=1)
    m = fit_gan(GanConfig(steps=3, **cfg))
    for name in ("config.json", "generator.pt", "gan_checkpoint.pt", "history.json", "gan_metrics.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_000002.png", "step_000003.png"]
    saved = json.loads((run / "gan_metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    for painter in ("gan", "telea"):
        assert 0 <= saved[painter]["masked_l1"] <= 1
        assert math.isfinite(saved[painter]["frechet_distance"]) and saved[painter]["frechet_distance"] >= -1e-6
    assert saved["steps"] == 3 and saved["pairs"] == 6
    g, meta = load_generator(run)
    assert meta["classes"] == list(CLASSES) and meta["crop"] == 32 and meta["step"] == 3

    m2 = fit_gan(GanConfig(steps=5, resume=True, **cfg))
    assert m2["steps"] == 5
    hist = json.loads((run / "history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2, 3, 4, 5]


def test_load_generator_refuses_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "generator.pt")
    with pytest.raises(ValueError, match="not an inspect-edge GAN generator"):
        load_generator(tmp_path)
    with pytest.raises(FileNotFoundError, match="train gan"):
        load_generator(tmp_path / "nowhere")


def test_gan_command_trains_reports_and_refuses_bad_crops(tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    data = make_mask_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = ["gan", "--data", str(data), "--out", str(run), "--steps", "2", "--crop", "32", "--batch-size", "2",
            "--base", "8", "--eval-pairs", "4", "--threads", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "held-out masked L1" in r.output and "Telea" in r.output
    assert json.loads((run / "config.json").read_text())["crop"] == 32
    r = CliRunner().invoke(app, [*args[:5], "--crop", "36"], env={"COLUMNS": "300"})
    assert r.exit_code != 0 and "multiple of 8" in r.output


def test_a_stochastic_generator_gives_different_fills_for_one_mask_and_repeats_with_a_seed():
    from train.gan.quality import fill_diversity

    pairs = PairSampler(_labelled(), 2, PairConfig(crop=32)).sample
    rng = np.random.default_rng(0)
    batch = [pairs(rng, "defect") for _ in range(4)]
    torch.manual_seed(0)
    noisy = InpaintGenerator(GeneratorConfig(num_classes=2, base=8, ffc_blocks=1, noise_channels=2)).eval()
    a, b, a_again = paint(noisy, batch, 2, seed=0), paint(noisy, batch, 2, seed=1), paint(noisy, batch, 2, seed=0)
    assert fill_diversity(a, b, batch) > 0.0  # two draws for the same masks differ ...
    assert all(np.array_equal(x, y) for x, y in zip(a, a_again))  # ... and a seed repeats exactly
    for x, p in zip(b, batch):
        assert np.array_equal(x[~p.hole], p.image[~p.hole])  # only inside the hole
    torch.manual_seed(0)
    fixed = InpaintGenerator(GeneratorConfig(num_classes=2, base=8, ffc_blocks=1)).eval()
    assert fill_diversity(paint(fixed, batch, 2, seed=0), paint(fixed, batch, 2, seed=1), batch) == 0.0


def test_texture_and_diversity_losses_point_the_right_way():
    from train.gan.losses import focal_frequency, mode_seeking

    torch.manual_seed(0)
    real = torch.rand(2, 1, 32, 32) * 2 - 1
    hole = torch.zeros(2, 1, 32, 32)
    hole[:, :, 8:24, 8:24] = 1
    blurred = torch.nn.functional.avg_pool2d(real, 5, stride=1, padding=2)
    flat = torch.full_like(real, float(real[hole > 0].mean()))
    assert focal_frequency(real, real, hole).item() == 0.0
    # A flat grey fill misses more of the spectrum than a blurred one; both cost.
    assert focal_frequency(flat, real, hole) > focal_frequency(blurred, real, hole) > 0
    z_a, z_b = torch.randn(2, 2, 32, 32), torch.randn(2, 2, 32, 32)
    same = mode_seeking(blurred, blurred, z_a, z_b, hole)
    apart = mode_seeking(blurred, real, z_a, z_b, hole)
    assert apart < same  # fills that differ for different codes lower the term


def test_high_frequency_energy_tells_texture_from_a_grey_blob():
    from train.gan.quality import hf_energy, texture_ratio
    from train.gan.pairs import Pair

    rng = np.random.default_rng(0)
    image = np.clip(120 + rng.normal(0, 20, (32, 32)), 0, 255).astype(np.uint8)
    hole = np.zeros((32, 32), bool)
    hole[8:24, 8:24] = True
    blob = image.copy()
    blob[hole] = 120
    assert hf_energy(blob, hole) < 0.1 * hf_energy(image, hole)
    labels = hole.astype(np.uint8)  # class 0 of the data set (label 1) in the hole
    r = texture_ratio([blob, image], [Pair(image, labels, hole, "a", "defect")] * 2)
    assert r["per_label"]["1"] == pytest.approx(r["all"]) and 0.5 < r["all"] < 0.6  # (blob ~0 + real 1) / 2


def test_gan_command_measures_a_quality_curve_and_maps_the_new_switches(tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    data = make_mask_folder(tmp_path / "data")
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["gan", "--data", str(data), "--out", str(run), "--steps", "4", "--crop", "32", "--batch-size", "2",
                                 "--base", "8", "--eval-pairs", "4", "--threads", "1", "--measure-at-min", "0,0",
                                 "--noise-channels", "0", "--ms-weight", "0", "--ffl-weight", "0"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["noise_channels"], cfg["ms_weight"], cfg["ffl_weight"]) == (0, 0.0, 0.0)
    curve = json.loads((run / "quality_curve.json").read_text())
    assert [p["step"] for p in curve] == [1, 2]  # one point per requested minute mark, as it is passed
    assert all(math.isfinite(p["gan"]["masked_l1"]) and p["gan"]["fill_diversity"] == 0.0 for p in curve)
    gm = json.loads((run / "gan_metrics.json").read_text())
    assert gm["gan"]["hf_energy_ratio"]["all"] > 0 and "fill_diversity" in gm["gan"]
