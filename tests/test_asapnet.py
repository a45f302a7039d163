"""ASAPNet generator: official checkpoint layout, configuration from shapes, positional codes, tiled MLP."""

import math

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError, InputError
from engine.models.asapnet import (ASAPNetConfig, ASAPNetsGenerator, LabelEncoding, config_from_state_dict,
                                   cosine_codes, tent_downsample)

TINY = dict(lr_width=16, lr_max_width=64, lr_depth=2, hr_width=16, hr_depth=5)


def official_keys(c_in, n_params, reflection, lr_width=16, lr_max_width=64, lr_depth=2, n_ds=4):
    """netG.state_dict() names and shapes as tamarott/ASAPNet builds them, written out from its index arithmetic:
    every 3x3 conv is Sequential(conv without bias, affine IN); reflection puts a ReflectionPad2d before each one."""
    keys, step = {}, 3 if reflection else 2  # [pad,] Sequential(conv, IN), ReLU

    def conv_in(prefix, cin, cout):
        keys[f"{prefix}.0.weight"] = (cout, cin, 3, 3)
        keys[f"{prefix}.1.weight"] = (cout,)
        keys[f"{prefix}.1.bias"] = (cout,)

    first = 1 if reflection else 0
    conv_in(f"lowres_stream.model.{first}", c_in, lr_width)
    i = first + 2  # after the first conv and its ReLU
    for d in range(n_ds):
        cout = lr_max_width if d == n_ds - 1 else lr_width
        conv_in(f"lowres_stream.model.{i + (1 if reflection else 0)}", lr_width, cout)
        i += step
    for _ in range(lr_depth):
        conv_in(f"lowres_stream.model.{i}.conv_block.{1 if reflection else 0}", lr_max_width, lr_max_width)
        i += 1
    keys[f"lowres_stream.model.{i}.weight"] = (n_params, lr_max_width, 1, 1)
    keys[f"lowres_stream.model.{i}.bias"] = (n_params,)
    return keys


def synthetic_checkpoint(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * (0.3 if len(shape) > 1 else 0.1) for k, shape in keys.items()}


@pytest.mark.parametrize("reflection, head", [(False, 12), (True, 17)])
def test_official_layout_loads_strictly_for_both_paddings(reflection, head):
    # cityscapes-like: 35 labels + instance edge, LR-only instance channel, S = 16
    cfg = ASAPNetConfig(in_channels=36, downsampling=16, lr_instance=True,
                        padding="reflection" if reflection else "zero", **TINY)
    keys = official_keys(36, cfg.num_params, reflection)
    assert f"lowres_stream.model.{head}.weight" in keys and len(keys) == 23
    sd = synthetic_checkpoint(keys)
    model = ASAPNetsGenerator(cfg)
    assert model.load_state_dict(sd, strict=True).missing_keys == []
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    out = model(torch.zeros(1, 36, 32, 48).index_fill_(1, torch.tensor([3]), 1.0))
    assert out.shape == (1, 3, 32, 48) and out.abs().max() <= 1


@pytest.mark.parametrize("reflection", [False, True])
def test_configuration_is_inferred_from_shapes(reflection):
    pad = "reflection" if reflection else "zero"
    for c_in, s, lr_instance in [(36, 16, True), (13, 32, False), (13, 64, False)]:
        cfg = ASAPNetConfig(in_channels=c_in, downsampling=s, lr_instance=lr_instance, padding=pad, **TINY)
        keys = official_keys(c_in, cfg.num_params, reflection)
        meta = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
        assert config_from_state_dict(meta, hr_width=16, hr_depth=5) == cfg


@pytest.mark.parametrize("c_in, n_params, s, lr_instance", [(36, 16003, 16, True), (13, 14851, 32, False),
                                                             (13, 15107, 64, False)])
def test_full_size_official_configs_are_recognised(c_in, n_params, s, lr_instance):
    # the worked numbers of the Cityscapes and both facades checkpoints, on meta tensors (no 330 MB allocation)
    keys = official_keys(c_in, n_params, reflection=c_in == 13, lr_width=64, lr_max_width=1024, lr_depth=7)
    cfg = config_from_state_dict({k: torch.empty(v, device="meta") for k, v in keys.items()})
    assert (cfg.in_channels, cfg.downsampling, cfg.lr_instance, cfg.num_params) == (c_in, s, lr_instance, n_params)
    assert (cfg.hr_width, cfg.hr_depth, cfg.lr_depth, cfg.lr_max_width) == (64, 5, 7, 1024)
    assert cfg.padding == ("reflection" if c_in == 13 else "zero")


def test_foreign_state_dict_is_rejected_with_the_key():
    with pytest.raises(CheckpointError, match="netD"):
        config_from_state_dict({"netD.model.0.weight": torch.zeros(4, 3, 3, 3)}, source="x.pth")


def test_results_agree_across_batch_sizes_and_resolutions():
    """Upstream caches the positional codes of the first call with its batch size and H x W baked in, so a later
    call of another size fails. Ours must give the same image whatever was rendered before."""
    torch.manual_seed(0)
    cfg = ASAPNetConfig(in_channels=6, downsampling=16, **TINY)
    model = ASAPNetsGenerator(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    labels = torch.randint(0, 6, (3, 1, 4, 6)).repeat_interleave(16, 2).repeat_interleave(16, 3)  # 64 x 96
    x = torch.zeros(3, 6, 64, 96).scatter_(1, labels, 1.0)
    small = x[:1, :, :32, :48]
    fresh = ASAPNetsGenerator(cfg).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        first_small = fresh(small)
        batch = model(x)
        singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
        later_small = model(small)
    # (not torch.testing.assert_close: its first call imports torch.distributed, seconds of test time)
    assert (batch - singles).abs().max() < 2e-3  # float noise through large random weights
    assert (later_small - first_small).abs().max() < 1e-6
    assert batch[0].sub(batch[1]).abs().max() > 0.05  # different label maps do give different images


def test_tiled_mlp_equals_naive_per_pixel_mlp():
    torch.manual_seed(1)
    cfg = ASAPNetConfig(in_channels=5, downsampling=16, lr_instance=True, **TINY)
    model = ASAPNetsGenerator(cfg).eval()
    x = torch.rand(1, 5, 32, 48)
    params = torch.randn(1, cfg.num_params, 2, 3) * 0.3
    with torch.no_grad():
        tiled = model.highres_stream(x, params)[0]
    ch = cfg.hr_channels  # [4 labels (instance dropped) + 16 codes, 16, 16, 16, 16, 3]
    for y, xx in [(0, 0), (5, 17), (15, 15), (16, 0), (31, 47), (20, 33)]:
        codes = []
        for f in (16, 8, 4, 2):
            ax, ay = 2 * math.pi * (xx % f) / f, 2 * math.pi * (y % f) / f
            codes += [math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay)]
        h = torch.cat([x[0, :4, y, xx], torch.tensor(codes)])
        p = params[0, :, y // 16, xx // 16]
        offset = 0
        for layer, (nci, nco) in enumerate(zip(ch[:-1], ch[1:])):
            b = p[offset:offset + nco]
            w = p[offset + nco:offset + nco + nci * nco].view(nci, nco)  # bias first, then input-major weights
            offset += nco + nci * nco
            h = h @ w + b
            h = torch.tanh(h) if layer == len(ch) - 2 else torch.where(h > 0, h, 0.01 * h)
        assert (tiled[:, y, xx] - h).abs().max() < 1e-5


def test_cosine_codes_order_and_tile_periodicity():
    codes = cosine_codes(32, 48, 16)[0]
    assert codes.shape == (16, 32, 48)
    assert codes[0, 0, 4] == pytest.approx(math.cos(2 * math.pi * 4 / 16), abs=1e-6)  # cos x at f = 16
    assert codes[3, 4, 0] == pytest.approx(math.sin(2 * math.pi * 4 / 16), abs=1e-6)  # sin y at f = 16
    assert torch.equal(codes[:, :16, :16], codes[:, 16:, 32:])


def test_tent_downsample_matches_the_1_3_3_1_filter():
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8) ** 1.5
    got = tent_downsample(x, 2)[0, 0].numpy()
    padded = np.pad(x[0, 0].numpy(), 1, mode="reflect")
    k = np.array([1, 3, 3, 1]) / 8
    want = np.array([[k @ padded[2 * i:2 * i + 4, 2 * j:2 * j + 4] @ k for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert tent_downsample(torch.ones(1, 2, 16, 24), 4).shape == (1, 2, 4, 6)


def test_label_encoding_compact_ids_dontcare_and_edges():
    enc = LabelEncoding(num_classes=3, class_ids=(156, 105, 119), dontcare=True, instance_edge=True)
    labels = np.array([[156, 156, 105, 105], [156, 156, 255, 7]], np.uint8)
    x = enc.encode(labels)
    assert x.shape == (1, 5, 2, 4)
    assert x[0, :4].argmax(0).tolist() == [[0, 0, 1, 1], [0, 0, 3, 3]]  # 255 and unknown 7 -> dontcare
    assert x[0, 4].tolist() == [[0, 1, 1, 1], [0, 1, 1, 1]]
    strict = LabelEncoding(num_classes=3)
    with pytest.raises(InputError, match=r"labels.png: ids \[5\]"):
        strict.encode(np.array([[0, 5]]), "labels.png")


def _pixel_mlp(inputs: torch.Tensor, p: torch.Tensor, ch: list[int]) -> torch.Tensor:
    """One pixel through the MLP whose flat parameters are `p` (bias first, then input-major weights)."""
    h, offset = inputs, 0
    for layer, (nci, nco) in enumerate(zip(ch[:-1], ch[1:])):
        b, w = p[offset:offset + nco], p[offset + nco:offset + nco + nci * nco].view(nci, nco)
        offset += nco + nci * nco
        h = h @ w + b
        h = torch.tanh(h) if layer == len(ch) - 2 else torch.where(h > 0, h, 0.01 * h)
    return h


def test_extensions_are_off_by_default_and_change_only_the_mlp_input():
    base = ASAPNetConfig(in_channels=13, downsampling=16, **TINY)
    assert (base.hr_coor, base.noise_channels, base.tile_blend) == ("cosine", 0, False)
    assert base.hr_channels[0] == 13 + 16
    assert ASAPNetConfig(in_channels=13, downsampling=16, hr_coor=None, noise_channels=4, **TINY).hr_channels[0] == 17
    # a model folder written before the fields existed reads as upstream's model
    assert ASAPNetConfig.from_dict({k: v for k, v in base.to_dict().items()
                                    if k not in ("hr_coor", "noise_channels", "tile_blend")}) == base
    for bad in (dict(hr_coor="sine"), dict(noise_channels=-1), dict(noise_channels=1.5)):
        with pytest.raises(ValueError):
            ASAPNetConfig(in_channels=13, **bad)
    model = ASAPNetsGenerator(base)
    with pytest.raises(ValueError, match="no noise input"):
        model.highres_stream(torch.zeros(1, 13, 16, 16), torch.zeros(1, base.num_params, 1, 1),
                             noise=torch.zeros(1, 1, 16, 16))


def test_tile_blend_mixes_the_four_nearest_tiles_mlps_bilinearly():
    torch.manual_seed(2)
    cfg = ASAPNetConfig(in_channels=4, downsampling=16, hr_coor=None, noise_channels=2, tile_blend=True, **TINY)
    model = ASAPNetsGenerator(cfg).eval()
    x, noise = torch.rand(1, 4, 32, 48), torch.randn(1, 2, 32, 48)
    params = torch.randn(1, cfg.num_params, 2, 3) * 0.3
    with torch.no_grad():
        out = model.highres_stream(x, params, noise)[0]
    for y, xx in [(0, 0), (5, 17), (7, 7), (8, 8), (15, 16), (16, 15), (24, 40), (31, 47)]:
        inputs = torch.cat([x[0, :, y, xx], noise[0, :, y, xx]])
        want = 0
        fy, fx = (y - 7.5) / 16, (xx - 7.5) / 16  # position in tile units from the first tile's centre
        for ty in (math.floor(fy), math.floor(fy) + 1):
            for tx in (math.floor(fx), math.floor(fx) + 1):
                weight = (1 - abs(fy - ty)) * (1 - abs(fx - tx))
                p = params[0, :, min(max(ty, 0), 1), min(max(tx, 0), 2)]  # the border tiles extend outwards
                want = want + weight * _pixel_mlp(inputs, p, cfg.hr_channels)
        assert (out[:, y, xx] - want).abs().max() < 1e-5, (y, xx)


def test_blending_removes_the_steps_between_tiles():
    torch.manual_seed(3)
    x = torch.zeros(1, 4, 64, 64)
    x[:, 1] = 1
    params = torch.randn(1, 1, 4, 4)
    steps = {}
    for blend in (False, True):
        cfg = ASAPNetConfig(in_channels=4, downsampling=16, hr_coor=None, tile_blend=blend, **TINY)
        grid = torch.randn(1, cfg.num_params, 4, 4) * 0.3 + params  # every tile its own MLP
        with torch.no_grad():
            out = ASAPNetsGenerator(cfg).highres_stream(x, grid)[0]
        dx = (out[:, :, 1:] - out[:, :, :-1]).abs().mean(dim=(0, 1))  # mean jump between neighbouring columns
        steps[blend] = (dx[15::16].mean() / dx.mean()).item()  # at tile borders, relative to all columns
    assert steps[False] > 10 and steps[True] < 2, steps


def test_noise_gives_texture_that_does_not_repeat_per_tile():
    """A uniform region: upstream's design repeats one texture in every tile (codes repeat, parameters equal), the
    noise model without codes does not, and its texture follows the seed."""
    from engine.metrics import grid_spectrum_ratio
    from engine.models.asapnet import noise_maps
    from engine.train.tasks_asapnet import init_hypernetwork

    x = torch.zeros(1, 4, 128, 128)
    x[:, 2] = 1
    ratios = {}
    for name, extra in (("upstream", {}), ("noise", dict(hr_coor=None, noise_channels=4, tile_blend=True))):
        torch.manual_seed(4)
        model = ASAPNetsGenerator(ASAPNetConfig(in_channels=4, downsampling=16, **TINY, **extra)).eval()
        init_hypernetwork(model, modulation=1.0)
        noise = noise_maps(1, 4, 128, 128, torch.Generator().manual_seed(0)) if extra else None
        with torch.no_grad():
            out = model(x, noise)[0]
        if extra:
            with torch.no_grad():
                again = model(x, noise_maps(1, 4, 128, 128, torch.Generator().manual_seed(0)))[0]
                other = model(x, noise_maps(1, 4, 128, 128, torch.Generator().manual_seed(1)))[0]
            assert torch.equal(out, again) and (out - other).abs().mean() > 0.01
        image = ((out.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy().astype(np.uint8)
        ratios[name] = grid_spectrum_ratio(image)
    assert ratios["noise"] < 1.2 and ratios["upstream"] > 2, ratios


def test_noise_maps_are_smooth_at_their_scale_and_have_no_grid_period():
    """Upsampling a coarse noise grid would modulate the contrast with periods 2, 4, 8 (harmonics of the 16-px
    tile): grid ratios of 20-200. Blurred white noise has none."""
    from engine.metrics import grid_spectrum_ratio
    from engine.models.asapnet import noise_maps

    maps = noise_maps(2, 4, 256, 256, torch.Generator().manual_seed(0))
    assert maps.shape == (2, 4, 256, 256)
    assert torch.allclose(maps.std(dim=(0, 2, 3)), torch.ones(4), atol=0.05)
    neighbour = [float((maps[:, c, :, 1:] * maps[:, c, :, :-1]).mean()) for c in range(4)]
    assert neighbour[0] < 0.05 < neighbour[1] < neighbour[2] < neighbour[3]  # white, then smoother and smoother
    for c in range(4):
        ratios = [grid_spectrum_ratio(np.repeat(((m[c].clamp(-3, 3) + 3) * 42.5).numpy().astype(np.uint8)[..., None],
                                                3, 2)) for m in maps]
        assert np.mean(ratios) < 2.5, (c, ratios)
