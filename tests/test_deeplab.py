"""DeepLab-v2 ResNet-101 MSC (engine/models/deeplab.py) and `sgraffito import deeplab`: checkpoints with the
official key layout of kazuto1011/deeplab-pytorch (written here with torch.save at tiny widths) load strictly, a
renamed key is named, the MSC fusion and the preprocessing are upstream's, and an imported model segments."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from app.cli import run_command
from engine.errors import CheckpointError
from engine.importers.deeplab_pth import import_checkpoint
from engine.models.deeplab import MSC, DeepLabConfig, preprocess

WIDTH, BLOCKS, CLASSES = 4, (1, 2, 1, 1), 182


def official_state_dict(width=WIDTH, n_blocks=BLOCKS, n_classes=CLASSES, seed=0) -> OrderedDict:
    """The keys and shapes of upstream's `DeepLabV2_ResNet101_MSC(...).state_dict()`, spelled out from its
    libs/models/{resnet,deeplabv2,msc}.py (not built from our module), with random values."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()

    def conv_bn(prefix, cin, cout, k):
        sd[f"{prefix}.conv.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5
        sd[f"{prefix}.bn.weight"] = torch.rand(cout, generator=g) * 0.5 + 0.5
        sd[f"{prefix}.bn.bias"] = torch.randn(cout, generator=g) * 0.1
        sd[f"{prefix}.bn.running_mean"] = torch.randn(cout, generator=g) * 0.1
        sd[f"{prefix}.bn.running_var"] = torch.rand(cout, generator=g) + 0.5
        sd[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(100)

    ch = [width * 2**p for p in range(6)]
    conv_bn("base.layer1.conv1", 3, ch[0], 7)
    for stage, ((cin, cout), n) in enumerate(zip([(ch[0], ch[2]), (ch[2], ch[3]), (ch[3], ch[4]), (ch[4], ch[5])],
                                                 n_blocks)):
        for b in range(n):
            prefix = f"base.layer{stage + 2}.block{b + 1}"
            first = cin if b == 0 else cout
            conv_bn(f"{prefix}.reduce", first, cout // 4, 1)
            conv_bn(f"{prefix}.conv3x3", cout // 4, cout // 4, 3)
            conv_bn(f"{prefix}.increase", cout // 4, cout, 1)
            if b == 0:
                conv_bn(f"{prefix}.shortcut", first, cout, 1)
    for i in range(4):
        sd[f"base.aspp.c{i}.weight"] = torch.randn(n_classes, ch[5], 3, 3, generator=g) * 0.05
        sd[f"base.aspp.c{i}.bias"] = torch.randn(n_classes, generator=g) * 0.1
    return sd


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "deeplabv2_resnet101_msc-cocostuff164k-100000.pth"
    sd = official_state_dict()
    torch.save(sd, path)
    return path, sd


def test_an_official_layout_checkpoint_loads_strictly(checkpoint):
    path, sd = checkpoint
    config, state = import_checkpoint(path)
    assert config["kind"] == "deeplab" and config["label_set"] == "coco-stuff-182"
    assert config["network"] | {} == {"n_classes": 182, "n_blocks": list(BLOCKS), "atrous_rates": [6, 12, 18, 24],
                                      "width": WIDTH, "scales": [0.5, 0.75], "test_size": 513}
    assert list(state) == list(sd)  # the same keys in the same order: our module names are upstream's
    assert all(torch.equal(state[k], sd[k]) for k in sd)


def test_the_official_model_has_the_official_key_names():
    full = MSC(DeepLabConfig())  # official width: only the names and shapes are checked
    keys = full.state_dict()
    assert len(keys) == 632
    assert tuple(keys["base.layer5.block3.increase.conv.weight"].shape) == (2048, 512, 1, 1)
    assert tuple(keys["base.aspp.c3.weight"].shape) == (182, 2048, 3, 3)
    assert full.base.aspp.c3.dilation == (24, 24) and full.base.layer5.block1.conv3x3.conv.dilation == (4, 4)
    assert full.base.layer1.pool.ceil_mode
    assert sum(p.numel() for p in full.parameters()) == 55_919_384  # upstream's DeepLabV2_ResNet101_MSC(182)


def test_a_renamed_key_is_named(checkpoint, tmp_path):
    _, sd = checkpoint
    sd = OrderedDict((k.replace("block1.shortcut", "block1.downsample") if k.startswith("base.layer3.") else k, v)
                     for k, v in sd.items())
    path = tmp_path / "renamed.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as error:
        import_checkpoint(path)
    message = str(error.value)
    assert "base.layer3.block1.shortcut.conv.weight <- base.layer3.block1.downsample.conv.weight" in message
    assert str(path) in message


def test_msc_fuses_the_scales_by_their_pixelwise_maximum(checkpoint):
    _, sd = checkpoint
    model = MSC(DeepLabConfig(n_blocks=BLOCKS, width=WIDTH))
    model.load_state_dict(sd)
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        model.eval()
        fused = model(x)
        full = model.base(x)
        scaled = [F.interpolate(model.base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False)),
                                size=full.shape[-2:], mode="bilinear", align_corners=False) for p in (0.5, 0.75)]
        assert fused.shape == (1, 182, 9, 11)  # output stride 8 (ceil-mode stem pool)
        assert torch.equal(fused, torch.stack([full, *scaled]).max(0)[0])
        model.train()
        assert len(model(x)) == 4  # upstream's training outputs: 1.0, 0.5, 0.75 and the fused logits


def test_the_preprocessing_is_upstreams():
    rgb = np.zeros((300, 200, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    x = preprocess(rgb)
    assert x.shape == (1, 3, 513, 342)  # long side 513, cv2 rounding of 200 * 513 / 300
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([50 - 104.008, 100 - 116.669, 200 - 122.675]), atol=1e-4)


def test_import_then_segment_a_photo(checkpoint, tmp_path, capsys):
    from engine.imageio import load_label_map
    from engine.labels import load_label_set

    path, _ = checkpoint
    assert run_command(["import", "deeplab", str(path)]) == 0
    assert "deeplab-cocostuff164k" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (75, 101, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    out = tmp_path / "labels.png"
    # no --model: the imported DeepLab model is preferred over the demo segmenter
    assert run_command(["segment", str(tmp_path / "photo.png"), "--out", str(out), "--device", "cpu"]) == 0
    image = Image.open(out)
    assert image.mode == "P" and image.size == (101, 75)
    labels = load_label_map(out, load_label_set("coco-stuff-182"), (101, 75))
    assert labels.max() < 182
    out183 = tmp_path / "labels183.png"
    assert run_command(["segment", str(tmp_path / "photo.png"), "--out", str(out183), "--model",
                        "deeplab-cocostuff164k", "--label-set", "coco-stuff-183"]) == 0
    shifted = load_label_map(out183, load_label_set("coco-stuff-183"), (101, 75))
    np.testing.assert_array_equal(shifted, labels + 1)  # the same labels, matched by name (183 = 1-based)
