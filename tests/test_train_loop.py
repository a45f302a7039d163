"""The training loop's correctness: bit-identical resume, disjoint data per rank, the non-finite stop, fp16 with a
GradScaler, the device and backend choice under torchrun, TF32, torch.compile, nested --set overrides."""

import json
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tests.train_tiny_task as tiny  # registers "tiny-test"
from engine.errors import InputError
from engine.train import TrainConfig, train
from engine.train import loop
from engine.train.loop import TrainingDiverged, choose_device


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(out, **changes):
    values = dict(task="tiny-test", steps=6, batch_size=2, grad_accum=2, lr=1e-2, save_every=2, eval_every=3,
                  log_every=1, out_dir=str(out), ema_decay=0.9)  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


def _run(config, resume=False):
    task = tiny.TinyTask(config)
    return train(config, resume=resume, task=task), task


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(("options", "workers"), [
    ({"length": 32, "noise": True}, 0), ({"stream": True, "noise": True}, 0), ({"stream": True}, 2),
], ids=["map-style", "stream", "stream-2-workers"])  # fmt: skip
def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path, options, workers):
    # Evaluations at steps 2 and 4 draw random numbers; the resumed run skips the one at step 4.
    def config(out, **more):
        return _config(tmp_path / out, eval_every=2, num_workers=workers, options={**options, **more})

    whole, whole_task = _run(config("whole"))

    with pytest.raises(KeyboardInterrupt):  # killed while computing step 5, after the checkpoint of step 4
        _run(config("cut", crash_at=4))
    assert torch.load(tmp_path / "cut/checkpoint/state.pt", weights_only=True)["step"] == 4
    resumed, resumed_task = _run(config("cut"), resume=True)

    assert resumed.step == whole.step == 6
    assert _same(resumed.model, whole.model) and _same(resumed.ema, whole.ema)
    per_step = 2 * 2  # batch_size x grad_accum
    assert resumed_task.seen == whole_task.seen[4 * per_step :]  # the stream continues where it was...
    assert set(resumed_task.seen).isdisjoint(whole_task.seen[: 4 * per_step])  # ...and replays nothing
    state = torch.load(tmp_path / "cut/checkpoint/state.pt", weights_only=True)
    assert state["stream"][0]["start"] == 6 and state["stream"][0]["items"] == 6 * per_step


def test_map_style_resume_continues_the_epoch(tmp_path):
    """A resume that is not at a step the uninterrupted run saved (here: a time budget's stop) still continues the
    shuffled pass: the items are a function of the position alone."""
    out = tmp_path / "run"
    _, first = _run(_config(out, steps=3, save_every=0, eval_every=0, options={"length": 24}))
    _, second = _run(_config(out, steps=6, save_every=0, eval_every=0, options={"length": 24}), resume=True)
    assert sorted(first.seen + second.seen) == list(range(24))  # TRAIN_SEEDS[:24], each once


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        seen = {}
        for name, options in (("map", {"length": 32}), ("stream", {"stream": True})):
            config = _config(f"{out}/{name}", steps=3, save_every=2, eval_every=0, ema_decay=0, options=options)
            result, task = _run(config)
            seen[name] = {"seeds": task.seen, "weights": tiny.weights_hash(result.model)}
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(seen, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_draw_disjoint_samples(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork (as DataLoader workers are started) is twice as fast as spawn here; a deadline keeps a hang from lasting
    context = mp.start_processes(_rank_main, args=(port, str(tmp_path)), nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo ranks did not finish within 120 s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in ("map", "stream"):
        a, b = (r[name]["seeds"] for r in ranks)
        assert len(a) == len(b) == 3 * 2 * 2 and len(set(a)) == len(a)
        assert set(a).isdisjoint(b), name
        assert ranks[0][name]["weights"] == ranks[1][name]["weights"]  # DDP kept the replicas identical


@pytest.mark.parametrize(("option", "what"), [("nan_at", "the loss is not finite"),
                                              ("inf_grad_at", "the gradient norm is not finite")])
def test_non_finite_loss_or_gradient_stops_on_that_step(tmp_path, option, what):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=f"at step 4: {what}") as caught:
        _run(_config(out, options={"length": 16, option: 3}))
    error = caught.value
    assert isinstance(error, InputError) and error.step == 4
    assert "last checkpoint is step 2" in str(error)
    assert torch.load(out / "checkpoint/state.pt", weights_only=True)["step"] == 2
    assert not (out / "summary.json").exists()
    logged = (out / "train.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in logged[1:]] == ["1", "2", "3"]


def test_fp16_autocast_with_grad_scaler_resumes(tmp_path):
    out = tmp_path / "fp16"
    result, _ = _run(_config(out, steps=2, eval_every=0, precision="fp16", options={"length": 8}))
    assert result.step == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "torch.float16" and not summary["bf16"]
    state = torch.load(out / "checkpoint/state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
    assert "loss_scale" in (out / "train.csv").read_text().splitlines()[0]
    assert _run(_config(out, steps=3, eval_every=0, precision="fp16", options={"length": 8}), resume=True)[0].step == 3
    with pytest.raises(InputError, match="precision must be"):
        TrainConfig.from_dict({"precision": "fp8"})


def test_compile_flag_compiles_the_model(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or model)
    _run(_config(tmp_path / "c", steps=1, eval_every=0, compile=True, options={"length": 4}))
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    assert not TrainConfig().compile


@pytest.fixture
def cuda(monkeypatch):
    """A machine with 4 (pretend) CUDA GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_device_and_backend_under_torchrun(cuda):
    assert choose_device("cuda:2", world=2, local_rank=1, local_world=1) == (torch.device("cuda", 2), "nccl")
    assert choose_device("cuda", world=4, local_rank=3, local_world=4) == (torch.device("cuda", 3), "nccl")
    assert choose_device("auto", world=2, local_rank=1, local_world=2) == (torch.device("cuda", 1), "nccl")
    assert choose_device("cpu", world=2, local_rank=1, local_world=2) == (torch.device("cpu"), "gloo")
    assert choose_device("cuda:3") == (torch.device("cuda", 3), None)
    with pytest.raises(InputError, match="does not exist"):
        choose_device("cuda:4", world=2, local_rank=0, local_world=1)
    with pytest.raises(InputError, match="all 2 processes of this node on one GPU"):
        choose_device("cuda:1", world=2, local_rank=0, local_world=2)
    with pytest.raises(InputError, match="no GPU of its own"):
        choose_device("cuda", world=8, local_rank=5, local_world=8)


def test_no_cuda_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto", world=2, local_rank=1, local_world=2) == (torch.device("cpu"), "gloo")
    with pytest.raises(InputError, match="sees no CUDA GPU"):
        choose_device("cuda:0", world=2, local_rank=0, local_world=1)
    with pytest.raises(InputError, match="mps"):
        choose_device("mps", world=2, local_rank=0, local_world=2)


def test_dist_sets_the_gpu_and_starts_nccl(cuda, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **kw: calls.append(("destroy",)))
    for key, value in dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1").items():
        monkeypatch.setenv(key, value)
    d = loop._Dist(TrainConfig(device="cuda:3"))
    assert d.device == torch.device("cuda", 3) and d.rank == 1 and d.world == 2
    d.close()
    assert calls == [("set_device", torch.device("cuda", 3)), ("init", "nccl"), ("destroy",)]
    calls.clear()
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loop._Dist(TrainConfig(device="auto")).device == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]
    calls.clear()
    assert loop._Dist(TrainConfig(device="cpu")).device == torch.device("cpu") and calls == [("init", "gloo")]


def test_tf32_on_ampere_and_newer_only(monkeypatch):
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
        assert not loop._tf32(TrainConfig(), torch.device("cuda", 0))
        assert not torch.backends.cuda.matmul.allow_tf32
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
        assert not loop._tf32(TrainConfig(tf32=False), torch.device("cuda", 0))
        assert not loop._tf32(TrainConfig(), torch.device("cpu"))
        assert loop._tf32(TrainConfig(), torch.device("cuda", 0))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_nested_set_overrides(tmp_path):
    from engine.commands.train import _overrides

    settings = _overrides(["lr=1e-3", "options.generator.hidden=64", "options.generator.depth=3",
                           "options.weights={l1: 2.0}", "betas=[0.5, 0.9]", "precision=fp16"])  # fmt: skip
    assert settings == {"lr": "1e-3", "options": {"generator": {"hidden": 64, "depth": 3}, "weights": {"l1": 2.0}},
                        "betas": [0.5, 0.9], "precision": "fp16"}  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text("steps: 5\noptions:\n  size: 128\n  generator: {hidden: 16, width: 8}\n"
                    "  weights: {l1: 1.0, fm: 3.0}\n")
    config = TrainConfig.from_yaml(path, **settings, task="tiny-test")
    assert config.lr == 1e-3 and config.steps == 5 and config.betas == (0.5, 0.9) and config.precision == "fp16"
    assert config.options == {"size": 128, "generator": {"hidden": 64, "width": 8, "depth": 3},
                              "weights": {"l1": 2.0, "fm": 3.0}}  # fmt: skip

    for bad, message in [("lr", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"), ("a..b=1", "not a setting name"),
                         ("options.x=[1", "not valid YAML")]:  # fmt: skip
        with pytest.raises(InputError, match=message):
            _overrides([bad])
    with pytest.raises(InputError, match="options.size is already set to 3"):
        _overrides(["options.size=3", "options.size.x=4"])
    with pytest.raises(InputError, match="steps must be an integer"):
        TrainConfig.from_yaml(path, **_overrides(["steps.x=4"]))
    with pytest.raises(InputError, match="options must be a mapping"):
        TrainConfig.from_dict(_overrides(["options=3"]), "command line")
    with pytest.raises(InputError, match="unknown training settings stepz"):
        TrainConfig.from_dict(_overrides(["stepz=3"]), "command line")


def test_an_unseeded_iterable_dataset_is_refused(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ()

    task = tiny.TinyTask(_config(tmp_path, steps=1))
    task.train_dataset = Stream
    with pytest.raises(InputError, match="not an engine.data.datasets.SeededStream"):
        train(_config(tmp_path / "r", steps=1), task=task)


def test_cli_nested_set_and_divergence_message(tmp_path, capsys):
    from app.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text("steps: 3\nbatch_size: 2\nlog_every: 1\nema_decay: 0\noptions:\n  length: 8\n"
                    "  extra: {a: 1, b: 2}\n")
    out = tmp_path / "run"
    code = main(["train", "tiny-test", "--config", str(path), "--out", str(out), "--set", "options.extra.b=5",
                 "--set", "options.nan_at=1", "--set", "lr=2e-2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "sgraffito train: error: tiny-test: training diverged at step 2: the loss is not finite (loss nan" in err
    saved = (out / "config.yaml").read_text()
    assert "lr: 0.02" in saved and "extra:\n    a: 1\n    b: 5" in saved and "nan_at: 1" in saved


def test_vqgan_codebook_care_resumes_bit_identical(tmp_path):
    """The seg VQGAN task's codebook care (k-means after the warm-up, re-seeding dead codes) keeps state between
    steps; a run interrupted after the k-means and resumed ends with the weights of an uninterrupted one."""
    from engine.train.tasks_vqgan import SegVQGANTask

    options = {"ch": 8, "norm_groups": 4, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
               "z_channels": 8, "embed_dim": 4, "n_embed": 16, "scene_size": 64, "crop": 32, "crops_per_scene": 2,
               "restart_every": 2, "autoencoder_steps": 2, "eval_scenes": 1, "export_dir": str(tmp_path / "export")}

    def run(out, steps, resume=False):
        config = TrainConfig(task="seg_vqgan", steps=6, batch_size=2, lr=1e-2, save_every=3, eval_every=0,
                             log_every=1, ema_decay=0, precision="fp32", out_dir=str(tmp_path / out),
                             options=options)
        task = SegVQGANTask(config)
        if steps < 6:  # stop right after the checkpoint of `steps`, as a kill would
            original = task.loss

            def loss(model, batch):
                if task.step == steps:
                    raise KeyboardInterrupt
                return original(model, batch)

            task.loss = loss
        return train(config, resume=resume, task=task), task

    whole, _ = run("whole", 6)
    with pytest.raises(KeyboardInterrupt):
        run("cut", 3)
    resumed, task = run("cut", 6, resume=True)
    assert task.codebook.initialised  # the k-means state came back with the checkpoint
    assert _same(resumed.model, whole.model)


def test_a_logged_term_that_starts_later_widens_the_csv_instead_of_being_dropped(tmp_path):
    """A discriminator's losses appear only after disc_start: their column is added, earlier rows kept."""
    import csv

    log = loop._Log(tmp_path, enabled=True)
    log.write("train", {"step": 1, "loss": 0.5})
    log.write("train", {"step": 2, "loss": 0.4, "d": 1.9})
    log.write("train", {"step": 3, "loss": 0.3, "d": 1.7})
    log.close()
    rows = list(csv.DictReader((tmp_path / "train.csv").open()))
    assert [(r["step"], r["loss"], r["d"]) for r in rows] == [("1", "0.5", ""), ("2", "0.4", "1.9"), ("3", "0.3", "1.7")]
    assert not list(tmp_path.glob("*.tmp"))
