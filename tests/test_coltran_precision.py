"""Reduced-precision ColTran (issue 21): the pipeline's `precision` param. fp32 is the exact default; int8 and bf16
weights in the decoders' linear layers (engine.precision) must pick the same most likely colour as fp32 at 99 %
of the pixel steps of the shipped demo model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import InputError
from engine.imageio import load_photo
from engine.precision import PreparedLinearModule
from engine.paths import assets_dir
from engine.pipelines.coltran import area_resize, colorize, colorizer_at, load_model, to_gray
from engine.precision import supported


@pytest.fixture(scope="module")
def demo():
    return load_model()  # assets/models/demo-coltran


def camera_gray(size: int) -> torch.Tensor:
    """The sample photo as the pipeline feeds the colorizer: (1, size, size) gray levels."""
    gray = to_gray(load_photo(assets_dir() / "samples" / "camera.jpg").rgb)
    return torch.from_numpy(area_resize(area_resize(gray, 256, 256), size, size)).long()[None]


def step_agreement(reference, reduced, gray) -> float:
    """Share of pixel steps at which `reduced` gives the same top-1 colour as `reference`, both on the
    reference's greedy trajectory: the reduced sampler is held to the reference's symbols (colour constraints
    allowing only them) while its own logits at every step are recorded."""
    symbols = reference.sample(gray, mode="argmax")
    steps = []
    hook = reduced.auto_logits.register_forward_hook(lambda module, args, out: steps.append(out.argmax(-1)))
    try:
        forced = reduced.sample(gray, mode="argmax", constraints=F.one_hot(symbols, 512).bool())
    finally:
        hook.remove()
    assert torch.equal(forced, symbols)
    top1 = torch.stack(steps, dim=1).view_as(symbols)  # raster order
    return float((top1 == symbols).float().mean())


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_a_reduced_precision_picks_the_fp32_colour_at_99_percent_of_the_demo_models_steps(demo, precision):
    if precision not in supported("cpu"):
        pytest.skip(f"this CPU's torch runs no {precision} kernels")
    fp32, reduced = colorizer_at(demo, "fp32"), colorizer_at(demo, precision)
    assert fp32 is demo.colorizer  # the exact path is the model itself
    assert reduced is not fp32 and colorizer_at(demo, precision) is reduced  # converted once, then kept
    for part in (reduced.outer_decoder, reduced.inner_decoder):  # every linear layer of the decoders converted
        assert not any(isinstance(m, torch.nn.Linear) for m in part.modules())
        assert all(m.prepared.precision == precision for m in part.modules() if isinstance(m, PreparedLinearModule))
    assert reduced.encoder is demo.colorizer.encoder  # one pass per image: stays fp32, shared
    size = demo.config.core.resolution[0]
    agreement = step_agreement(fp32, reduced, camera_gray(size))
    print(f"{precision} top-1 agreement with fp32: {agreement:.4f} of {size * size} steps")
    assert agreement >= 0.99


def test_the_pipeline_samples_in_int8_on_request_and_in_exact_fp32_by_default():
    from tests.test_coltran import gradient_photo, tiny_coltran

    model = tiny_coltran().eval()
    keys = list(model.state_dict())
    gray = gradient_photo()
    default = colorize(model, gray, [4])[0]
    assert np.array_equal(default, colorize(model, gray, [4], precision="fp32")[0])
    int8 = colorize(model, gray, [4], precision="int8")[0]
    assert int8.shape == default.shape
    assert np.abs(int8.astype(np.float64) @ [0.299, 0.587, 0.114] - gray).max() <= 1.0  # the photo's luminance
    assert list(model.state_dict()) == keys  # the int8 copy is kept aside, not among the model's weights


def test_an_unknown_precision_is_a_clear_error(demo):
    with pytest.raises(InputError, match="precision"):
        colorize(demo, np.zeros((8, 8), np.uint8), [0], precision="int4")
