"""ASSET's optimised token steps: the fp32 path samples exactly what the full-recompute reference samples, and
the reduced-precision paths (int8, bf16) pick fp32's top-1 token on at least 99 % of the steps of the shipped
demo model. (Their speed lives in tests/bench/bench_asset.py.)"""

import pytest
import torch

from engine.errors import InputError
from engine.models.asset_sampling import sample_tokens, sample_tokens_reference
from engine.precision import check_precision, resolve_precision, supported
from tests.test_asset_model import _mask, random_guidance, tiny, tokens

REDUCED = [p for p in supported("cpu") if p != "fp32"]


@pytest.mark.parametrize("candidates, attention", [(k, a) for k in (1, 3) for a in ("sga", "sga_reference_rows_5_6", "dense")]
                         + [(3, "sga_packed"), (1, "sga_packed_two_threads")])
def test_optimised_fp32_sampler_is_token_identical_to_reference(candidates, attention, monkeypatch):
    import engine.precision

    packed = []
    if attention.startswith("sga_packed"):  # the oneDNN-packed fp32 weights that large models get for several
        monkeypatch.setattr(engine.precision, "PACK_BYTES", 0)  # candidates, or for one on several threads
        onednn = engine.precision._onednn
        monkeypatch.setattr(engine.precision, "_onednn", lambda *a: packed.append(1) or onednn(*a))
    model = tiny()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(21 + candidates)
    side = 16 if attention == "dense" else 32
    _, cond, ids = tokens(cfg, side, 1, gen)
    guidance = None if attention == "dense" else random_guidance(cfg, candidates, gen, attention.endswith("5_6"))
    if attention == "dense":
        mask = _mask(16, slice(6, 12), slice(0, 16)) | _mask(16, 1, 3)
    else:  # tokens of blocks 5 and 6 (rows that may attend to their own block), a middle patch, a stray token
        mask = _mask(32, slice(2, 4), slice(10, 20)) | _mask(32, slice(16, 18), slice(3, 7)) | _mask(32, 29, 30)
    kw = dict(num_samples=candidates, guidance=guidance, top_k=6, temperature=1.2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if attention.endswith("two_threads") else threads)
    try:
        fast = sample_tokens(model, ids[0], cond[0], mask, generator=torch.Generator().manual_seed(8), **kw)
        slow = sample_tokens_reference(model, ids[0], cond[0], mask, generator=torch.Generator().manual_seed(8), **kw)
    finally:
        torch.set_num_threads(threads)
    assert bool(packed) == attention.startswith("sga_packed") or not engine.precision._mkldnn_linear_available()
    assert torch.equal(fast, slow)
    assert (fast[:, mask] != ids[:, mask]).float().mean() > 0.5  # the hole was resampled


def test_int8_row_keeps_its_precision_beside_larger_rows():
    """fbgemm quantizes a whole input with one scale; every row is brought to one range first, so a
    candidate's activations keep their 8 bits beside a candidate with activations 1000x larger."""
    from engine.precision import prepare_linear

    if "int8" not in REDUCED:
        pytest.skip("no int8 engine on this CPU")
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    int8 = prepare_linear(linear, "int8", rows=2)
    x = torch.randn(2, 1, 64)
    x[1] *= 1000
    with torch.no_grad():
        together, exact = int8(x), linear(x)
    for row in range(2):
        error = (together[row] - exact[row]).abs().max() / exact[row].abs().max()
        assert error < 0.05, (row, error)


@pytest.fixture(scope="module")
def demo_references():
    from tests.bench.bench_asset import demo_references

    return demo_references(seeds=(0, 1, 2))


@pytest.mark.parametrize("precision", REDUCED)
def test_reduced_precision_top1_agrees_with_fp32_on_the_demo_model(demo_references, precision):
    from tests.bench.bench_asset import top1_agreement

    counts = top1_agreement(demo_references, precision)
    agreed = sum(a for a, _, _ in counts.values())
    steps = sum(n for _, n, _ in counts.values())
    assert steps >= 900  # 3 trajectories of the guiding (64 masked tokens) and SGA (256) models
    assert agreed / steps >= 0.99, counts
    # a top-1 may change only where fp32's top two were a tie within the reduced precision's logit error
    assert all(beyond_ties == 0 for _, _, beyond_ties in counts.values()), counts


def test_precision_choices_are_checked():
    assert check_precision(" INT8 ") == "int8"
    assert check_precision(None) == "fp32"
    with pytest.raises(InputError, match="precision must be one of"):
        check_precision("int4")
    with pytest.raises(InputError, match="not available on cpu"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_edit_command_takes_precision(tmp_path):
    """`sgraffito edit --precision int8` reaches the backend (recorded with each candidate); a precision this
    device lacks is a user error, exit 2."""
    import json

    import numpy as np
    from PIL import Image

    from app.cli import main
    from tests.test_asset_pipeline import make_bundle, water_edit

    if "int8" not in REDUCED:
        pytest.skip("no int8 engine on this CPU")
    bundle = make_bundle(tmp_path / "tiny-asset", resolution=256, sga=False)
    scene, after = water_edit(seed=6)
    Image.fromarray(scene.image).save(tmp_path / "photo.png")
    Image.fromarray(scene.labels.astype(np.uint8)).save(tmp_path / "labels.png")
    Image.fromarray(after.astype(np.uint8)).save(tmp_path / "new.png")
    args = ["edit", str(tmp_path / "photo.png"), "--labels", str(tmp_path / "labels.png"), "--new-labels",
            str(tmp_path / "new.png"), "--samples", "1", "--model", str(bundle), "--device", "cpu"]
    assert main(args + ["--precision", "int8", "--out", str(tmp_path / "out")]) == 0
    info = json.loads((tmp_path / "out" / "candidates.json").read_text())
    assert info["candidates"][0]["info"]["precision"] == "int8"
    assert main(args + ["--precision", "fp16", "--out", str(tmp_path / "out16")]) == 2
