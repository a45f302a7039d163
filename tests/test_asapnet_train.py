"""The ASAPNet training task: one backward gives each network exactly its own GAN gradient."""

import torch
import torch.nn.functional as F

from engine.models.asapnet import ASAPNetConfig
from engine.train.tasks_asapnet import ASAPNetGAN


def test_combined_loss_gives_each_network_its_own_gradient():
    torch.manual_seed(0)
    cfg = ASAPNetConfig(in_channels=4, downsampling=16, lr_width=8, lr_max_width=16, lr_depth=1, hr_width=8)
    gan = ASAPNetGAN(cfg, {"fm": 10.0, "l1": 10.0, "grad": 5.0})
    x = torch.zeros(2, 4, 32, 32).scatter_(1, torch.randint(0, 4, (2, 1, 32, 32)), 1.0)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    loss, logs = gan(x, real)
    loss.backward()
    d_grad = [p.grad.clone() for p in gan.netD.parameters()]
    assert set(logs) == {"d", "g_adv", "fm", "l1", "grad"}

    # the discriminator's gradient must be that of its hinge loss alone ...
    gan.zero_grad()
    fake = gan.netG(x).detach()
    d_real, d_fake = gan.netD(torch.cat([x, real], 1)), gan.netD(torch.cat([x, fake], 1))
    hinge = sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(d_real, d_fake)) / 2
    hinge.backward()
    for got, want in zip(d_grad, [p.grad for p in gan.netD.parameters()]):
        assert (got - want).abs().max() <= 1e-5 * (1 + want.abs().max())
    # ... while the generator does get the adversarial and feature-matching gradients through the discriminator
    gan.zero_grad()
    gan.weights = {"fm": 0.0, "l1": 0.0, "grad": 0.0}
    gan(x, real)[0].backward()
    assert all(p.grad is not None for p in gan.netG.parameters())
    assert sum(float(p.grad.abs().sum()) for p in gan.netG.parameters()) > 0


def test_the_tile_period_loss_charges_texture_repeated_in_every_tile_not_texture_that_varies():
    from engine.train.tasks_asapnet import tile_period_loss

    torch.manual_seed(0)
    ramp = torch.linspace(-0.8, 0.8, 128)
    real = (ramp[None, :] * ramp[:, None].flip(0)).expand(1, 3, 128, 128).contiguous()  # smooth shading, no grid
    tile = torch.randn(1, 3, 16, 16) * 0.1
    repeated = real + tile.repeat(1, 1, 8, 8)  # the same 16-px texture in every tile: ASAPNet's mosaic
    varying = real + torch.randn(1, 3, 128, 128) * 0.1  # texture of the same strength that changes from tile to tile
    assert float(tile_period_loss(real, real, 16)) == 0.0
    assert float(tile_period_loss(repeated, real, 16)) > 4 * float(tile_period_loss(varying, real, 16))


TINY_GEN = {"lr_width": 8, "lr_max_width": 16, "lr_depth": 1, "hr_width": 8, "hr_depth": 3, "learned_ds_factor": 4}


def _tiny_run(out, **options):
    from engine.train import TrainConfig

    return TrainConfig(task="asapnet-landscape", steps=2, batch_size=1, lr=1e-3, warmup_steps=0, save_every=0,
                       eval_every=0, log_every=1, out_dir=str(out), ema_decay=0.0,
                       options={"size": 64, "eval_scenes": 1, "generator": TINY_GEN, **options})


def test_a_run_continues_a_generator_folder_and_logs_the_tile_period_term(tmp_path):
    from engine.model_store import read_safetensors
    from engine.train import train
    from engine.train.tasks_asapnet import ASAPNetLandscapeTask

    torch.manual_seed(0)
    first = ASAPNetLandscapeTask(_tiny_run(tmp_path / "unused"))
    folder = first.export(first.build_model(), tmp_path / "first")
    start = read_safetensors(folder / "netG.safetensors")
    second = ASAPNetLandscapeTask(_tiny_run(tmp_path / "run", init_from=str(folder)))
    loaded = second.build_model().netG.state_dict()
    assert all(torch.equal(loaded[k], start[k]) for k in start)  # it starts where the folder stopped

    train(_tiny_run(tmp_path / "run", init_from=str(folder),
                    weights={"fm": 1.0, "l1": 1.0, "grad": 1.0, "tile_period": 10.0}))
    trained = read_safetensors(tmp_path / "run" / "demo-asapnet-landscape" / "netG.safetensors")
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    header = (tmp_path / "run" / "train.csv").read_text().splitlines()[0].split(",")
    assert "tile_period" in header


def test_a_generator_folder_of_another_architecture_is_named(tmp_path):
    import pytest

    from engine.errors import InputError
    from engine.train.tasks_asapnet import ASAPNetLandscapeTask

    small = ASAPNetLandscapeTask(_tiny_run(tmp_path / "unused"))
    folder = small.export(small.build_model(), tmp_path / "small")
    wider = ASAPNetLandscapeTask(_tiny_run(tmp_path / "unused", init_from=str(folder),
                                           generator={**TINY_GEN, "hr_width": 16}))
    with pytest.raises(InputError, match="another generator architecture"):
        wider.build_model()


def test_a_noise_model_continues_another_models_lr_stream_but_not_its_head(tmp_path):
    import pytest

    from engine.errors import InputError
    from engine.model_store import read_safetensors
    from engine.train.tasks_asapnet import ASAPNetLandscapeTask

    torch.manual_seed(0)
    upstream = ASAPNetLandscapeTask(_tiny_run(tmp_path / "unused"))
    folder = upstream.export(upstream.build_model(), tmp_path / "upstream")
    start = read_safetensors(folder / "netG.safetensors")
    noise_gen = {**TINY_GEN, "hr_coor": None, "noise_channels": 2, "tile_blend": True}
    task = ASAPNetLandscapeTask(_tiny_run(tmp_path / "unused", init_trunk_from=str(folder), generator=noise_gen))
    netG = task.build_model().netG
    head = f"lowres_stream.model.{len(netG.lowres_stream.model) - 1}."
    loaded = netG.state_dict()
    assert all(torch.equal(loaded[k], start[k]) for k in start if not k.startswith(head))
    assert loaded[head + "weight"].shape[0] != start[head + "weight"].shape[0]  # another MLP input: a fresh head

    deeper = ASAPNetLandscapeTask(_tiny_run(tmp_path / "unused", init_trunk_from=str(folder),
                                            generator={**noise_gen, "lr_depth": TINY_GEN.get("lr_depth", 1) + 1}))
    with pytest.raises(InputError, match="another LR stream"):
        deeper.build_model()
