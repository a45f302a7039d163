"""ColTran: exact cached decoding, causality, the TF-free importer, and the colorization pipeline."""

import re

import numpy as np
import pytest
import torch

from app.cli import main
from engine.pipelines.coltran import area_resize, colorize, hint_constraints, load_model, to_gray
from engine.hints import Hint
from engine.errors import CheckpointError, InputError
from engine.importers.coltran_tf import STAGE_SCOPES, convert_official_stage, official_table
from engine.models.coltran import (ColorUpsampler, ColTran, ColTranConfig, ColTranCore, CoreConfig, SpatialUpsampler,
                                   UpsamplerConfig, rgb_to_symbols)
from engine.importers.tfbundle import read_bundle
from tests.tf_bundle_writer import write_bundle

TINY = CoreConfig(hidden_size=16, ff_size=24, num_heads=2, num_encoder_layers=1, num_outer_layers=2,
                  num_inner_layers=2, resolution=(6, 6))


def randomized(module, seed=0):
    """Random weights everywhere (zero-initialised biases included) so every path matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "normalize" not in name:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return module.eval()


@pytest.fixture(scope="module")
def core():
    torch.manual_seed(0)  # the same model whichever tests ran before in this process
    return randomized(ColTranCore(TINY))


@pytest.mark.parametrize("quirk", [True, False])
@pytest.mark.parametrize("mode", ["sample", "argmax"])
def test_cached_decoder_gives_the_reference_samples(core, mode, quirk):
    gray = torch.randint(0, 256, (3, 6, 6), generator=torch.Generator().manual_seed(1))
    u = torch.rand(3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    reference = core.sample_reference(gray, uniforms=u, mode=mode, row_context_quirk=quirk)
    cached = core.sample(gray, uniforms=u, mode=mode, row_context_quirk=quirk)
    assert torch.equal(reference, cached)
    assert reference.unique().numel() > 3  # not a degenerate constant image


def test_cached_decoder_matches_the_reference_on_two_candidates_with_hints_and_a_shared_encoding(core):
    """The pipeline's call: k = 2 candidates of one gray image encoded once (`encoded`), colour constraints on
    some cells, a temperature: the whole image is the reference's, symbol for symbol."""
    gray = torch.randint(0, 256, (1, 6, 6), generator=torch.Generator().manual_seed(11)).expand(2, -1, -1)
    u = torch.rand(2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    allowed = torch.ones(2, 6, 6, 512, dtype=torch.bool)
    allowed[:, 1:3, 2:5] = False
    allowed[:, 1:3, 2:5, 100:140] = True
    encoded = core.encoder(gray[:1]).expand(2, -1, -1, -1)
    reference = core.sample_reference(gray, uniforms=u, temperature=0.7, constraints=allowed)
    cached = core.sample(gray, uniforms=u, temperature=0.7, constraints=allowed, encoded=encoded)
    assert torch.equal(reference, cached)
    assert ((cached[:, 1:3, 2:5] >= 100) & (cached[:, 1:3, 2:5] < 140)).all()
    assert not torch.equal(cached[0], cached[1])  # two candidates, two colourings


def test_without_the_quirk_sampling_follows_the_trained_model(core):
    """Greedy samples are the argmax of the teacher-forced logits at every pixel: the incremental decoder
    computes exactly the model that training optimises."""
    gray = torch.randint(0, 256, (2, 6, 6), generator=torch.Generator().manual_seed(3))
    symbols = core.sample(gray, mode="argmax", row_context_quirk=False)
    logits, _ = core(gray, symbols)
    assert torch.equal(logits.argmax(-1), symbols)


def test_the_colorizer_is_causal_in_raster_order(core):
    gray = torch.randint(0, 256, (1, 6, 6), generator=torch.Generator().manual_seed(4))
    symbols = torch.randint(0, 512, (1, 6, 6), generator=torch.Generator().manual_seed(5))
    base, _ = core(gray, symbols)
    for r, c in [(0, 0), (2, 3), (5, 5)]:
        changed = symbols.clone()
        changed[0, r, c] = (changed[0, r, c] + 77) % 512
        logits, _ = core(gray, changed)
        moved = (logits - base).abs().amax(-1)[0]
        position = torch.arange(36).view(6, 6)
        assert moved[position <= r * 6 + c].max() == 0, "a pixel sees itself or a later pixel"
        if r * 6 + c < 35:
            assert moved[position > r * 6 + c].max() > 0, "later pixels ignore an earlier one"


def test_temperature_zero_is_greedy_and_higher_temperature_diversifies(core):
    gray = torch.randint(0, 256, (1, 6, 6), generator=torch.Generator().manual_seed(6)).expand(4, -1, -1)
    u = torch.rand(4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    greedy = core.sample(gray, mode="argmax")
    assert torch.equal(core.sample(gray, uniforms=u, temperature=0), greedy)
    hot = core.sample(gray, uniforms=u, temperature=5.0)
    assert (hot != greedy).float().mean() > 0.5


# --- the official checkpoint format ------------------------------------------------------------------------


def official_names(stage, config, offset):
    """Canonical name -> a Keras-style variable name, with auto-numbering that starts at arbitrary counters
    (as in a process that built other layers first)."""
    def name_of(canonical):
        parts = []
        for part in canonical.split("/"):
            match = re.fullmatch(r"(\w+?)#(\d+)", part)
            if match:
                base, rank = match.group(1), int(match.group(2))
                base = "dense" if base == "ff_dense" else base
                parts.append(f"{base}_{rank + offset}")
            else:
                parts.append(part)
        return "/".join(parts)

    return {canonical: name_of(canonical) for canonical in official_table(stage, config)}


def escape(name):
    return name.replace(".", "..").replace("/", ".S")


def official_tensors(stage, model, config, offset=3, drop=(), extra=()):
    """The tensors of a checkpoint made as train_utils.create_checkpoint does: raw variables (here junk, since
    the restore replaces trainable ones by their EMA shadows), EMA shadows, optimizer state."""
    state = model.state_dict()
    heads = config.num_heads
    tensors = {"optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE": np.array(1000, np.int64)}
    for canonical, name in official_names(stage, config, offset).items():
        if canonical in drop:
            continue
        ours, how = official_table(stage, config)[canonical]
        value = state[ours].numpy()
        if how == "transpose":
            value = value.T
        elif how == "heads_in":
            value = value.T.reshape(value.shape[1], heads, -1)
        elif how == "heads_out":
            value = value.T.reshape(heads, -1, value.shape[0])
        value = np.ascontiguousarray(value, np.float32)
        if "normalize" in name:  # non-trainable: no shadow, the raw value is used
            tensors[f"{escape(name)}:0/.ATTRIBUTES/VARIABLE_VALUE"] = value
        else:
            tensors[f"{escape(name)}:0/.ATTRIBUTES/VARIABLE_VALUE"] = np.full_like(value, 123.0)
            tensors[f"{escape(name)}/ExponentialMovingAverage:0/.ATTRIBUTES/VARIABLE_VALUE"] = value
            tensors[f"optimizer/{escape(name)}/.OPTIMIZER_SLOT/optimizer/rms/.ATTRIBUTES/VARIABLE_VALUE"] = value
    for name in extra:
        tensors[f"{escape(name)}:0/.ATTRIBUTES/VARIABLE_VALUE"] = np.zeros(3, np.float32)
    return tensors


UPSAMPLER = UpsamplerConfig(hidden_size=16, ff_size=24, num_heads=2, num_encoder_layers=2, resolution=(8, 8))


@pytest.mark.parametrize("stage", ["colorizer", "color_upsampler", "spatial_upsampler"])
def test_importer_round_trips_a_bundle_written_in_the_official_format(tmp_path, stage):
    config = TINY if stage == "colorizer" else UPSAMPLER
    model = randomized({"colorizer": ColTranCore, "color_upsampler": ColorUpsampler,
                        "spatial_upsampler": SpatialUpsampler}[stage](config), seed=8)
    write_bundle(str(tmp_path / "model-7"), official_tensors(stage, model, config),
                 {"_CHECKPOINTABLE_OBJECT_GRAPH": b"\x0a\x00"})
    inferred, state = convert_official_stage(stage, read_bundle(tmp_path / "model-7"), "model-7")
    assert inferred == config
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key


def test_unmapped_and_missing_tensors_are_errors_that_name_them(tmp_path):
    model = randomized(ColTranCore(TINY))
    canonical = "col_tran_core/outer_decoder/affine_r_1/kernel"
    tensors = official_tensors("colorizer", model, TINY, drop={canonical},
                               extra=["col_tran_core/outer_decoder/mystery_layer/kernel"])
    write_bundle(str(tmp_path / "model-1"), tensors)
    with pytest.raises(CheckpointError) as error:
        convert_official_stage("colorizer", read_bundle(tmp_path / "model-1"), "model-1")
    message = str(error.value)
    assert "col_tran_core/outer_decoder/mystery_layer/kernel" in message
    assert "affine_r_1/kernel" in message and "outer_decoder.affine_r_1.weight" in message


def test_a_truncated_or_corrupt_bundle_is_refused(tmp_path):
    write_bundle(str(tmp_path / "m"), {"x:0/.ATTRIBUTES/VARIABLE_VALUE": np.arange(100, dtype=np.float32)})
    data = tmp_path / "m.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(CheckpointError, match="checksum"):
        read_bundle(tmp_path / "m")
    index = tmp_path / "m.index"
    index.write_bytes(index.read_bytes()[:30])
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint index"):
        read_bundle(tmp_path / "m")


def tiny_coltran(seed=9):
    """The official stages at a quarter of their resolution (16x16 colorizer, 64x64 spatial upsampler), so the
    pipeline tests sample 256 pixels instead of 4096."""
    config = ColTranConfig(
        CoreConfig(hidden_size=16, ff_size=16, num_heads=2, num_encoder_layers=1, num_outer_layers=1,
                   num_inner_layers=1, resolution=(16, 16)),
        UpsamplerConfig(hidden_size=16, ff_size=16, num_heads=2, num_encoder_layers=1, resolution=(16, 16)),
        UpsamplerConfig(hidden_size=8, ff_size=8, num_heads=1, num_encoder_layers=1, resolution=(64, 64)))
    model = ColTran(config)
    for stage in (model.colorizer, model.color_upsampler, model.spatial_upsampler):
        randomized(stage, seed)
    return model


@pytest.fixture(scope="module")
def imported_release(tmp_path_factory):
    """An official-layout release folder (colorizer/, color_upsampler/, spatial_upsampler/) of a tiny model."""
    root = tmp_path_factory.mktemp("release")
    model = tiny_coltran()
    for stage in STAGE_SCOPES:
        (root / stage).mkdir()
        part = getattr(model, stage)
        write_bundle(str(root / stage / "model-3"),
                     official_tensors(stage, part, getattr(model.config, "core" if stage == "colorizer" else stage)))
        (root / stage / "checkpoint").write_text('model_checkpoint_path: "model-3"\n')
    return root, model


def test_sgraffito_import_coltran_makes_a_usable_model(imported_release, isolated_user_data, capsys):
    root, model = imported_release
    assert main(["import", "coltran", str(root), "--name", "tiny-coltran"]) == 0
    assert "tiny-coltran" in capsys.readouterr().out
    loaded = load_model("tiny-coltran")
    for stage in STAGE_SCOPES:
        for key, value in getattr(model, stage).state_dict().items():
            assert torch.equal(getattr(loaded, stage).state_dict()[key], value)
    assert main(["import", "coltran", str(root / "colorizer"), "--name", "broken"]) == 2
    assert "no checkpoint found for color_upsampler, spatial_upsampler" in capsys.readouterr().err
    assert loaded.row_context_quirk  # the official weights sample as the official code samples them


def test_a_folder_trained_here_samples_with_the_context_it_was_trained_with(tmp_path):
    """Our exports say row_context_quirk: false; colorize() then samples as with row_context_quirk=False, which
    gives other colours than the official sampling-time context on the same seeds."""
    from engine.model_store import save_model_dir
    from engine.pipelines.coltran import load_folder_model

    model = tiny_coltran()
    states = {stage: getattr(model, stage).state_dict() for stage in STAGE_SCOPES}
    photo = gradient_photo()
    base = {"kind": "coltran", "title": "tiny", "architecture": model.config.to_dict()}
    trained_here = load_folder_model(save_model_dir(tmp_path / "ours", states, {**base, "row_context_quirk": False}))
    official = load_folder_model(save_model_dir(tmp_path / "official", states, base))
    assert not trained_here.row_context_quirk and official.row_context_quirk
    ours = colorize(trained_here, photo, [0, 1])
    assert all(np.array_equal(a, b) for a, b in zip(ours, colorize(model, photo, [0, 1], row_context_quirk=False)))
    theirs = colorize(official, photo, [0, 1])
    assert all(np.array_equal(a, b) for a, b in zip(theirs, colorize(model, photo, [0, 1], row_context_quirk=True)))
    assert any(not np.array_equal(a, b) for a, b in zip(ours, theirs))
    with pytest.raises(InputError, match="row_context_quirk must be true or false, not 'no'"):
        load_folder_model(save_model_dir(tmp_path / "bad", states, {**base, "row_context_quirk": "no"}))


# --- the pipeline -------------------------------------------------------------------------------------------


def test_area_resize_is_tf_area_with_half_to_even_rounding():
    image = np.arange(16, dtype=np.float64).reshape(4, 4)
    assert np.array_equal(area_resize(image, 2, 2), np.rint([[2.5, 4.5], [10.5, 12.5]]))  # 2, 4, 10, 12
    assert area_resize(np.array([[0.0, 1.0, 2.0]]), 1, 2).tolist() == [[0.0, 2.0]]  # 1/3 weights: 1/3, 5/3
    assert area_resize(np.array([[7.0, 9.0]]), 1, 4).tolist() == [[7.0, 7.0, 9.0, 9.0]]  # upsampling replicates


def gradient_photo(height=48, width=80):
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 3 + y * 2) % 256).astype(np.uint8)


def test_colorize_keeps_the_original_luminance_at_full_resolution():
    model = tiny_coltran().eval()
    gray = gradient_photo()
    images = colorize(model, gray, [1, 2])
    assert len(images) == 2 and images[0].shape == (48, 80, 3)
    luma = images[0].astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(luma - gray).max() <= 1.0
    assert not np.array_equal(images[0], images[1])  # different seeds, different colourings
    assert np.array_equal(colorize(model, gray, [2])[0], images[1])  # candidate i depends only on its seed


def test_sampling_runs_on_one_thread_and_the_upsamplers_on_all(monkeypatch):
    """The pixel chain samples on one intra-op thread (threads only add synchronisation there); the upsamplers are
    large parallel passes and must keep the process's threads (one thread made the CLI 17% slower)."""
    import engine.pipelines.coltran as pipeline
    from engine.device import job_threads

    model = tiny_coltran().eval()
    seen = {}
    sample, upsample = model.colorizer.sample, pipeline.upsample_argmax
    monkeypatch.setattr(model.colorizer, "sample",
                        lambda *a, **k: seen.setdefault("sample", torch.get_num_threads()) and sample(*a, **k))
    monkeypatch.setattr(pipeline, "upsample_argmax",
                        lambda *a, **k: seen.setdefault("upsample", torch.get_num_threads()) and upsample(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        colorize(model, gradient_photo(), [1], sampling_threads=lambda: job_threads(1))
        assert seen == {"sample": 1, "upsample": 2} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_hints_fix_the_coarse_colour_of_the_cells_they_cover():
    model = tiny_coltran().eval()
    hints = [Hint(x=20, y=12, radius=6, rgb=(200, 40, 40))]
    allowed = hint_constraints(hints, (48, 80), "stretch", coarse=16)
    cells = np.argwhere(~allowed.all(-1))
    assert len(cells) >= 1
    from engine.pipelines.coltran import uniforms

    coarse = torch.from_numpy(area_resize(area_resize(gradient_photo(), 64, 64), 16, 16)).long()[None]
    symbols = model.colorizer.sample(coarse, uniforms=uniforms([3], (16, 16)),
                                     constraints=torch.from_numpy(allowed)[None])
    expected = int(rgb_to_symbols(torch.tensor([200, 40, 40])))
    assert all(int(symbols[0, r, c]) == expected for r, c in cells)


def test_the_upsamplers_keep_a_hinted_cell_inside_its_coarse_colour_and_leave_the_rest_alone():
    """A hint fixes the colorizer's coarse level; the colour upsampler then refines inside that level in the
    hinted cells (random weights would drift anywhere), and elsewhere gives the unhinted argmax."""
    from engine.pipelines.coltran import hinted_value_range
    from engine.models.coltran import upsample_argmax

    model = tiny_coltran().eval()
    gray = torch.from_numpy(area_resize(gradient_photo(), 16, 16)).long()[None]
    bins = torch.randint(0, 8, (1, 16, 16, 3), generator=torch.Generator().manual_seed(5))
    allowed = torch.ones(1, 16, 16, 512, dtype=torch.bool)
    allowed[:, 2:5, 3:7] = False  # a hinted patch: one allowed symbol each
    allowed[:, 2:5, 3:7, 7] = True
    free = upsample_argmax(model.color_upsampler, bins, gray)
    low, high = hinted_value_range(bins, (~allowed).any(-1))
    hinted = upsample_argmax(model.color_upsampler, bins, gray, value_range=(low, high))
    patch = hinted[:, 2:5, 3:7]
    assert ((patch // 32) == bins[:, 2:5, 3:7]).all()
    assert not ((free[:, 2:5, 3:7] // 32) == bins[:, 2:5, 3:7]).all()  # without the range they drift
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[2:5, 3:7] = False
    assert torch.equal(hinted[0][outside], free[0][outside])
    assert hinted_value_range(bins, None) is None
    low, high = hinted_value_range(bins, (~allowed).any(-1), tolerance=1)
    assert int(low[0, 2, 3].min()) == max(0, int(bins[0, 2, 3].min()) - 1) * 32


def test_a_hint_colours_its_disk_round_and_leaves_the_photo_outside_it_as_without_hints():
    """Through the whole pipeline (tiny random model): every pixel well inside the hint's disk ends in the hint's
    coarse colour level before the photo's luma is put back, so its chroma follows the hint; pixels far from it
    are the unhinted colouring's."""
    from engine.pipelines.coltran import hint_cells

    model = tiny_coltran().eval()
    gray = gradient_photo(64, 64)
    hint = Hint(x=32, y=32, radius=12, rgb=(220, 60, 40))
    plain = colorize(model, gray, [4])[0]
    hinted = colorize(model, gray, [4], hints=[hint])[0]
    disk = hint_cells(hint, (64, 64), "stretch", 64)
    assert 300 < disk.sum() < 600  # round: about pi r^2 pixels, not whole 4x4 cells of the coarse grid
    from engine.metrics import lab_chroma

    hint_ab = lab_chroma(np.array([[hint.rgb]], np.uint8))[0, 0]
    inner = hint_cells(Hint(32, 32, 8, hint.rgb), (64, 64), "stretch", 64)
    ab = lab_chroma(hinted)[inner].mean(0)
    plain_ab = lab_chroma(plain)[inner].mean(0)
    assert np.linalg.norm(ab - hint_ab) < 0.5 * np.linalg.norm(plain_ab - hint_ab)
    far = np.ones((64, 64), bool)
    far[8:56, 8:56] = False
    assert np.abs(hinted[far].astype(int) - plain[far].astype(int)).mean() < 12


def test_sepia_photos_are_colorized_from_their_luma():
    sepia = np.stack([gradient_photo() * 1.0, gradient_photo() * 0.85, gradient_photo() * 0.6], -1).astype(np.uint8)
    gray = to_gray(sepia)
    assert gray.shape == (48, 80) and abs(int(gray[10, 10]) - round(0.299 * sepia[10, 10, 0] + 0.587 * sepia[10, 10, 1]
                                                              + 0.114 * sepia[10, 10, 2])) <= 1


def test_the_shipped_demo_model_colours_a_gray_photo():
    from engine.metrics import colorfulness

    model = load_model()  # assets/models/demo-coltran
    gray = gradient_photo(40, 60)
    image = colorize(model, gray, [0])[0]
    assert image.shape == (40, 60, 3)
    assert np.abs(image.astype(np.float64) @ [0.299, 0.587, 0.114] - gray).max() <= 1.0
    assert colorfulness(image) > 5, "the demo adds colour"
