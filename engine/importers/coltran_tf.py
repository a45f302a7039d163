"""ColTran's official TF2 checkpoints (the coltran.zip release) -> our state dicts, read without TensorFlow.

`sgraffito import coltran DIR_OR_ZIP` finds the three stages' newest bundles by their variables' scopes, maps every
EMA weight by name and shape onto engine.models.coltran, and writes one model folder.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch

from engine.errors import CheckpointError
from engine.importers import Importer
from engine.importers.tfbundle import read_bundle
from engine.model_store import new_model_dir, save_model_dir
from engine.safe_io import extract_zip
from engine.models.coltran import (ColorUpsampler, ColTranConfig, ColTranCore, CoreConfig, SpatialUpsampler,
                                   UpsamplerConfig)

# ----------------------------------------------------------------------------------------------------------------
# Official TF2 checkpoints -> our state dicts
#
# The official code saves every variable under its Keras name (`tf.train.Checkpoint(**{v.name: v})`) plus an EMA
# shadow per trainable variable, and restores by overwriting trainable weights with their shadows. Keras numbers
# unnamed layers with process-wide counters (`dense_17`, `self_attention_nd_3`, ...), so the numbers depend on what
# else was built first. We therefore rank auto-numbered layers among their siblings of the same kind in the same
# scope ("canonical names"), which only depends on creation order, and map canonical names to our parameters.
# The feed-forward Dense layers inside Keras Sequentials carry no scope at all (`dense_6/kernel:0`): they rank
# globally, in creation order (encoder, then outer decoder, then inner decoder).

AUTO_NUMBERED = ("dense", "self_attention_nd", "layer_normalization", "conditional_layer_norm", "position_embed")
STAGE_SCOPES = {"colorizer": "col_tran_core", "color_upsampler": "color_upsampler",
                "spatial_upsampler": "spatial_upsampler"}


def unescape_checkpoint_key(key: str) -> str | None:
    """'col_tran_core.Sdense.Skernel:0/.ATTRIBUTES/VARIABLE_VALUE' -> 'col_tran_core/dense/kernel:0'; None for
    keys that are not variables of the model (optimizer slots, the object graph, save counters)."""
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    if not key.endswith(suffix) or key.startswith(("optimizer/", "save_counter")) or "OPTIMIZER_SLOT" in key:
        return None
    escaped, out, i = key[: -len(suffix)], [], 0
    while i < len(escaped):  # TF escapes '.' as '..' and '/' as '.S' in local names
        if escaped[i] == "." and i + 1 < len(escaped):
            out.append("/" if escaped[i + 1] == "S" else escaped[i + 1])
            i += 2
        else:
            out.append(escaped[i])
            i += 1
    return "".join(out)


def _split_number(component: str) -> tuple[str, int]:
    base, _, number = component.rpartition("_")
    return (base, int(number)) if base and number.isdigit() else (component, -1)


def canonical_names(variable_names) -> dict[str, str]:
    """Official variable name (without ':0') -> canonical name, e.g.
    'col_tran_core/outer_decoder/conditional_layer_norm_3/dense_13/kernel' ->
    'col_tran_core/outer_decoder/conditional_layer_norm#3/dense#0/kernel' and 'dense_6/kernel' -> 'ff_dense#2/kernel'."""
    siblings: dict[tuple[str, str], set[tuple[int, str]]] = {}
    for name in variable_names:
        parts = name.split("/")
        for depth, component in enumerate(parts[:-1]):
            base, number = _split_number(component)
            if base in AUTO_NUMBERED:
                siblings.setdefault(("/".join(parts[:depth]), base), set()).add((number, component))
    ranks = {key: {component: rank for rank, (_, component) in enumerate(sorted(found))}
             for key, found in siblings.items()}
    canonical = {}
    for name in variable_names:
        parts = name.split("/")
        out = []
        for depth, component in enumerate(parts[:-1]):
            base, _ = _split_number(component)
            if base in AUTO_NUMBERED:
                rank = ranks[("/".join(parts[:depth]), base)][component]
                out.append(f"ff_dense#{rank}" if depth == 0 and base == "dense" else f"{base}#{rank}")
            else:
                out.append(component)
        canonical[name] = "/".join(out + parts[-1:])
    return canonical


def _attention_entries(table, scope, ours, axis, conditional):
    table[f"{scope}/q/kernel"] = (f"{ours}.q.weight", "heads_in")
    table[f"{scope}/k/kernel"] = (f"{ours}.k.weight", "heads_in")
    table[f"{scope}/v/kernel"] = (f"{ours}.v.weight", "heads_in")
    table[f"{scope}/output/kernel"] = (f"{ours}.output.weight", "heads_out")
    bias = "relative_attention_bias_1" if axis == "row" else "relative_attention_bias_0"
    table[f"{scope}/{bias}"] = (f"{ours}.{bias}", "same")
    if conditional:
        for name in ("cond_q", "cond_k", "cond_v"):
            table[f"{scope}/{name}/kernel"] = (f"{ours}.{name}.weight", "heads_in")


def _dense_entries(table, scope, ours, bias=True):
    table[f"{scope}/kernel"] = (f"{ours}.weight", "transpose")
    if bias:
        table[f"{scope}/bias"] = (f"{ours}.bias", "same")


def _norm_entries(table, scope, ours):
    table[f"{scope}/gamma"] = (f"{ours}.weight", "same")
    table[f"{scope}/beta"] = (f"{ours}.bias", "same")


class _FeedForwards:
    """Hands out the global ranks of the scope-less feed-forward Dense layers in creation order."""

    def __init__(self, table):
        self.table, self.next = table, 0

    def add(self, ours):
        _dense_entries(self.table, f"ff_dense#{self.next}", f"{ours}.dense_in")
        _dense_entries(self.table, f"ff_dense#{self.next + 1}", f"{ours}.dense_out")
        self.next += 2


def _factorized_entries(table, scope, ours, num_layers, ffs):
    table[f"{scope}/position_embed#0/position_embedding_0"] = (f"{ours}.pos_embed.position_embedding_0", "same")
    table[f"{scope}/position_embed#0/position_embedding_1"] = (f"{ours}.pos_embed.position_embedding_1", "same")
    for j in range(2 * num_layers):
        _attention_entries(table, f"{scope}/self_attention_nd#{j}", f"{ours}.residual_layers.{2 * j}",
                           "row" if j % 2 == 0 else "column", conditional=False)
        ffs.add(f"{ours}.residual_layers.{2 * j + 1}")
    for k in range(4 * num_layers):
        _norm_entries(table, f"{scope}/layer_normalization#{k}", f"{ours}.layer_norms.{k}")


def _conditional_norm_entries(table, scope, ours):
    table[f"{scope}/spatial_average"] = (f"{ours}.spatial_average", "same")
    _dense_entries(table, f"{scope}/dense#0", f"{ours}.channel_dense")
    _norm_entries(table, f"{scope}/normalize", f"{ours}.normalize")


def official_table(stage: str, config) -> dict[str, tuple[str, str]]:
    """Canonical official name -> (our state-dict key, how to transform the TF tensor)."""
    root, table = STAGE_SCOPES[stage], {}
    ffs = _FeedForwards(table)
    if stage == "colorizer":
        enc = f"{root}/gray_scale_encoder"
        _dense_entries(table, f"{enc}/dense#0", "encoder.embedding")
        _factorized_entries(table, f"{enc}/factorized_attention", "encoder.encoder", config.num_encoder_layers, ffs)
        _dense_entries(table, f"{root}/parallel_logits", "parallel_logits", bias=False)
        _dense_entries(table, f"{root}/dense#0", "pixel_embed_layer", bias=False)
        outer = f"{root}/outer_decoder"
        for name in ("position_embedding_0", "position_embedding_1"):
            table[f"{outer}/position_embed#0/{name}"] = (f"outer_decoder.pos_embed.{name}", "same")
        for i in range(config.num_outer_layers):
            _attention_entries(table, f"{outer}/unmask_row_att_{i}", f"outer_decoder.unmask_row_att_{i}", "row", True)
            ffs.add(f"outer_decoder.row_dense_{i}")
            _attention_entries(table, f"{outer}/mask_col_att_{i}", f"outer_decoder.mask_col_att_{i}", "column", True)
            ffs.add(f"outer_decoder.col_dense_{i}")
            _dense_entries(table, f"{outer}/affine_r_{i}", f"outer_decoder.affine_r_{i}")
            _dense_entries(table, f"{outer}/affine_c_{i}", f"outer_decoder.affine_c_{i}")
        for k in range(4 * config.num_outer_layers):
            _conditional_norm_entries(table, f"{outer}/conditional_layer_norm#{k}", f"outer_decoder.layer_norms.{k}")
        inner = f"{root}/inner_decoder"
        for name in ("position_embedding_0", "position_embedding_1"):
            table[f"{inner}/position_embed#0/{name}"] = (f"inner_decoder.pos_embed.{name}", "same")
        for i in range(config.num_inner_layers):
            _attention_entries(table, f"{inner}/mask_row_att_{i}", f"inner_decoder.mask_row_att_{i}", "row", True)
            ffs.add(f"inner_decoder.dense_{i}")
            _dense_entries(table, f"{inner}/affine_c_{i}", f"inner_decoder.affine_c_{i}")
        for k in range(2 * config.num_inner_layers):
            _conditional_norm_entries(table, f"{inner}/conditional_layer_norm#{k}", f"inner_decoder.layer_norms.{k}")
        _dense_entries(table, f"{root}/auto_logits", "auto_logits")
        _norm_entries(table, f"{root}/layer_normalization#0", "final_norm")
    else:
        embedding = "bit_embedding" if stage == "color_upsampler" else "channel_embedding"
        _dense_entries(table, f"{root}/dense#0", embedding, bias=False)
        _dense_entries(table, f"{root}/dense#1", "gray_embedding", bias=False)
        _dense_entries(table, f"{root}/dense#2", "input_dense")
        _factorized_entries(table, f"{root}/factorized_attention", "encoder", config.num_encoder_layers, ffs)
        _dense_entries(table, f"{root}/dense#3", "final_dense")
    return table


def _transform(array, how: str) -> torch.Tensor:
    tensor = torch.from_numpy(array.copy())
    if how == "transpose":  # Keras Dense kernel [in, out] -> Linear weight [out, in]
        return tensor.t().contiguous()
    if how == "heads_in":  # DenseND [D, heads, per_head] -> [heads * per_head, D]
        return tensor.reshape(tensor.shape[0], -1).t().contiguous()
    if how == "heads_out":  # DenseND [heads, per_head, D] -> [D, heads * per_head]
        return tensor.reshape(-1, tensor.shape[-1]).t().contiguous()
    return tensor


def infer_stage_config(stage: str, variables: dict):
    """The architecture of one stage from its official variables' canonical names and shapes."""
    names = set(variables)
    root = STAGE_SCOPES[stage]

    def shape(name):
        if name not in variables:
            raise KeyError(name)
        return variables[name].shape

    fa = f"{root}/gray_scale_encoder/factorized_attention" if stage == "colorizer" else f"{root}/factorized_attention"
    height, _, dim = shape(f"{fa}/position_embed#0/position_embedding_0")
    width = shape(f"{fa}/position_embed#0/position_embedding_1")[0]
    heads = shape(f"{fa}/self_attention_nd#0/q/kernel")[1]
    ff_size = shape("ff_dense#0/kernel")[1]
    encoder_layers = sum(1 for n in names if n.startswith(f"{fa}/self_attention_nd#") and n.endswith("/q/kernel")) // 2
    if stage != "colorizer":
        return UpsamplerConfig(hidden_size=dim, ff_size=ff_size, num_heads=heads,
                               num_encoder_layers=encoder_layers, resolution=(height, width))
    outer = sum(1 for n in names if n.startswith(f"{root}/outer_decoder/unmask_row_att_") and n.endswith("/q/kernel"))
    inner = sum(1 for n in names if n.startswith(f"{root}/inner_decoder/mask_row_att_") and n.endswith("/q/kernel"))
    return CoreConfig(hidden_size=dim, ff_size=ff_size, num_heads=heads, num_encoder_layers=encoder_layers,
                      num_outer_layers=outer, num_inner_layers=inner, resolution=(height, width))


# Non-trainable variables have no EMA shadow; the official restore keeps their raw value (the inner `normalize`
# LayerNormalization of each conditional layer norm is built with trainable=False).
_NON_TRAINABLE = ("/normalize/gamma", "/normalize/beta")


def _renamed_scope(names, scope: str) -> str | None:
    """The Keras-numbered variant of `scope` (e.g. 'col_tran_core_1') the variables use, if any."""
    found = sorted({n.split("/")[0] for n in names if re.fullmatch(rf"{re.escape(scope)}_\d+", n.split("/")[0])})
    return found[0] if found else None


def _renamed_message(source, stage: str, renamed: str) -> str:
    return (f"{source}: the {stage} variables are under the scope {renamed!r} instead of "
            f"{STAGE_SCOPES[stage]!r}: Keras numbered the model's top-level scope because another model of the same "
            f"class was built first in the process that saved it. Its layer numbering may differ too, so it is not "
            f"imported; save the checkpoint from a process that builds the {stage} once")


def convert_official_stage(stage: str, tensors: dict, source: str, *, raw_weights: bool = False):
    """Bundle tensors of one stage (keys as in the checkpoint) -> (config, state dict), taking each trainable
    weight's EMA shadow as the official restore does (a trainable variable without its shadow is refused, since
    mixing raw and averaged weights gives wrong logits; `raw_weights` takes the raw value of every variable
    instead). Raises CheckpointError naming every official variable left unmapped and every parameter of ours
    left without a value."""

    raw, shadows = {}, {}
    for key, array in tensors.items():
        name = unescape_checkpoint_key(key)
        if name is None:
            continue
        name = name.removesuffix(":0")
        if name.endswith("/ExponentialMovingAverage"):
            shadows[name.removesuffix("/ExponentialMovingAverage")] = array
        else:
            raw[name] = array
    root = STAGE_SCOPES[stage]
    if not any(n.startswith(root + "/") for n in raw):
        renamed = _renamed_scope(raw, root)
        if renamed:
            raise CheckpointError(_renamed_message(source, stage, renamed))
        found = sorted({n.split("/")[0] for n in raw if not n.startswith("ff_dense") and "/" in n})
        raise CheckpointError(f"{source}: no {stage} variables (scope {root!r}); scopes found: {', '.join(found) or 'none'}")
    canonical = canonical_names(raw)
    values = {canonical[n]: (array if raw_weights else shadows.get(n, array)) for n, array in raw.items()}
    try:
        config = infer_stage_config(stage, values)
    except KeyError as missing:
        raise CheckpointError(f"{source}: cannot infer the {stage} architecture, variable {missing} is missing") from None
    model = ColTranCore(config) if stage == "colorizer" else (
        ColorUpsampler(config) if stage == "color_upsampler" else SpatialUpsampler(config))
    expected = model.state_dict()
    table = official_table(stage, config)
    by_canonical = {c: n for n, c in canonical.items()}
    unmapped = sorted(by_canonical[c] for c in values if c not in table)
    missing = sorted(f"{c} (for {ours})" for c, (ours, _) in table.items() if c not in values)
    state, mismatched = {}, []
    for name, (ours, how) in table.items():
        if name not in values:
            continue
        tensor = _transform(values[name], how)
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            mismatched.append(f"{by_canonical[name]} {tuple(values[name].shape)} -> {ours} {tuple(expected[ours].shape)}")
        state[ours] = tensor
    uncovered = sorted(set(expected) - set(state) - {k for _, (k, _) in table.items()})
    # the official restore overwrites every trainable weight with its EMA shadow: one without a shadow would mix
    # raw and averaged weights (wrong colours), so it is refused unless raw weights are asked for throughout
    unshadowed = [] if raw_weights else sorted(
        n for n in raw if n not in shadows and not n.endswith(_NON_TRAINABLE) and canonical[n] in table)
    problems = [(f"{len(unshadowed)} trainable variables without their EMA shadow (ExponentialMovingAverage), "
                 "which the official restore uses (--raw-weights takes every variable's raw value instead)",
                 unshadowed),
                (f"{len(unmapped)} official variables with no place in our model", unmapped),
                (f"{len(missing)} variables our model needs are not in the checkpoint", missing),
                (f"{len(mismatched)} shape mismatches", mismatched),
                (f"{len(uncovered)} of our parameters have no official counterpart", uncovered)]
    report = [f"  {title}:\n" + "\n".join(f"    {item}" for item in items) for title, items in problems if items]
    if report:
        raise CheckpointError(f"{source}: the {stage} checkpoint does not match ColTran:\n" + "\n".join(report))
    return config, state


# ----------------------------------------------------------------------------------------------------------------
# `sgraffito import coltran DIR_OR_ZIP`


def find_stage_checkpoints(root) -> dict[str, tuple[str, dict]]:
    """Every stage's newest bundle under `root`: {stage: (prefix, tensors)}, recognised by its variables'
    scope, not by folder names (users unzip the release in different layouts)."""


    def step(prefix: Path) -> int:
        match = re.search(r"-(\d+)$", prefix.name)
        return int(match.group(1)) if match else -1

    found: dict[str, tuple[int, str, dict]] = {}
    renamed: dict[str, tuple[str, str]] = {}
    for index in sorted(Path(root).rglob("*.index")):
        prefix = index.with_suffix("")
        tensors = read_bundle(prefix)
        names = {unescape_checkpoint_key(k) or "" for k in tensors}
        for stage, scope in STAGE_SCOPES.items():
            if any(n.startswith(scope + "/") for n in names) and step(prefix) > found.get(stage, (-2,))[0]:
                found[stage] = (step(prefix), str(prefix), tensors)
            elif other := _renamed_scope(names, scope):
                renamed.setdefault(stage, (str(prefix), other))
    for stage, (prefix, other) in renamed.items():
        if stage not in found:
            raise CheckpointError(_renamed_message(prefix, stage, other))
    return {stage: (prefix, tensors) for stage, (_, prefix, tensors) in found.items()}


def _extract_zip(path, into) -> None:
    """Extract the release zip member by member with engine.safe_io's bounds (regular file only, no member
    outside `into` or a symlink, a compression-ratio limit, a total within the free disk space)."""
    extract_zip(path, into, CheckpointError, kind="archive")


def import_official(source, name: str, *, overwrite: bool = False, raw_weights: bool = False):
    """Convert the official release (a folder or the coltran.zip) into a model folder; returns its path."""


    source = Path(source)
    if not source.exists():
        raise CheckpointError(f"{source}: no such file or folder")
    with tempfile.TemporaryDirectory() as scratch:
        if source.is_file():
            _extract_zip(source, scratch)
            root = Path(scratch)
        else:
            root = source
        stages = find_stage_checkpoints(root)
        missing = [s for s in STAGE_SCOPES if s not in stages]
        if missing:
            raise CheckpointError(f"{source}: no checkpoint found for {', '.join(missing)} "
                                  f"(expected TF checkpoints model-N.index/.data-* of all three ColTran stages)")
        configs, states = {}, {}
        for stage, (prefix, tensors) in stages.items():
            configs[stage], states[stage] = convert_official_stage(stage, tensors, prefix, raw_weights=raw_weights)
    config = ColTranConfig(configs["colorizer"], configs["color_upsampler"], configs["spatial_upsampler"])
    directory = new_model_dir(name, overwrite=overwrite)
    return save_model_dir(directory, states, {
        "kind": "coltran", "title": f"ColTran ({source.name})", "source": str(source),
        "architecture": config.to_dict()})


def _add_import_arguments(parser) -> None:
    parser.description = ("Convert the official ColTran TF2 checkpoints (the coltran.zip release, or a folder "
                          "holding colorizer/, color_upsampler/ and spatial_upsampler/ checkpoints) without "
                          "TensorFlow: EMA weights, every tensor mapped by name and shape.")
    parser.add_argument("--raw-weights", action="store_true",
                        help="take every variable's raw value instead of its EMA shadow (for checkpoints saved "
                             "without EMA; the official restore uses the shadows)")


def _run_import(args):
    return import_official(args.file, args.name or "coltran", overwrite=args.force,
                           raw_weights=getattr(args, "raw_weights", False))


IMPORTER = Importer("coltran", "official ColTran TF2 checkpoints (folder or coltran.zip)", _add_import_arguments,
                    _run_import)
