"""Fitting the two label-agreement judges of engine.metrics (training lives apart from the metrics that use it).

`python -m engine.train.label_judges --fit` fits the appearance classifier on 240 procedural TRAIN scenes (a minute
on one core); `--fit-vgg` the VGG16 judge's per-pixel MLP on 240 TRAIN scenes, every second one photo-textured (about
4 min on one core; needs `sgraffito data textures`). Each is measured on held-out EVAL scenes and saved under
assets/metrics/ with its held-out accuracy in the file's metadata.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engine import metrics


def _samples(seeds, size: int, per_scene: int, rng: np.random.Generator, features_of=None, textured: bool = False):
    """Per-pixel (features, class) pairs of generated scenes; with `textured` every second scene is photo-textured."""
    from engine.data.landscapes import generate_scene

    features_of = features_of or metrics.appearance_features
    table = metrics.class_table()
    xs, ys = [], []
    for index, seed in enumerate(seeds):
        if textured and index % 2:
            from engine.data.textures import generate_textured_scene

            scene = generate_textured_scene(int(seed), size)
        else:
            scene = generate_scene(seed, size)
        features = features_of(scene.image)
        fh, fw = features.shape[:2]
        labels = cv2.resize(scene.labels, (fw, fh), interpolation=cv2.INTER_NEAREST)
        target = table[labels].reshape(-1)
        flat = features.reshape(-1, features.shape[-1])
        known = np.flatnonzero(target >= 0)
        pick = known if per_scene <= 0 else rng.choice(known, min(per_scene, known.size), replace=False)
        xs.append(flat[pick])
        ys.append(target[pick])
    return np.concatenate(xs), np.concatenate(ys)


def _fit_classifier(model, x: np.ndarray, y: np.ndarray, classes: int, epochs: int, weight_decay: float = 0.0):
    import torch

    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    # balance classes so rare ones (flowers, rocks, roads) are not ignored
    counts = torch.bincount(y_t, minlength=classes).float().clamp(min=1)
    loss_fn = torch.nn.CrossEntropyLoss(weight=(counts.sum() / counts) ** 0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * (0.5 * (1 + np.cos(np.pi * epoch / epochs)))
        for batch in torch.randperm(len(x_t), generator=generator).split(4096):
            optimizer.zero_grad()
            loss_fn(model(x_t[batch]), y_t[batch]).backward()
            optimizer.step()
    return model


def _save_classifier(model, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={k: str(v) for k, v in metadata.items()})
    metrics.forget_loaded_classifiers()


def _held_out_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def fit_label_classifier(path: Path | None = None, scenes: int = 240, eval_scenes: int = 60, epochs: int = 15):
    """Fit the appearance classifier on TRAIN scenes, measure it on EVAL scenes, save it; returns the accuracy."""
    from engine.data.landscapes import EVAL_SEEDS, TRAIN_SEEDS
    from engine.paths import assets_dir

    rng = np.random.default_rng(0)
    x, y = _samples(TRAIN_SEEDS[:scenes], 256, 2000, rng)
    names = metrics.class_names()
    model = _fit_classifier(metrics.classifier_module(len(names)), x, y, len(names), epochs)
    accuracy = _held_out_accuracy(model, *_samples(EVAL_SEEDS[:eval_scenes], 256, 0, rng))
    _save_classifier(model, Path(path or assets_dir() / metrics.CLASSIFIER_FILE),
                     {"classes": ",".join(names), "eval_accuracy": f"{accuracy:.4f}", "train_scenes": scenes,
                      "eval_scenes": eval_scenes})  # fmt: skip
    return accuracy


def fit_vgg_label_classifier(path: Path | None = None, scenes: int = 240, eval_scenes: int = 40, epochs: int = 20):
    """Fit the VGG judge's per-pixel MLP on TRAIN scenes, half of them photo-textured (`sgraffito data textures`),
    measure it on as many EVAL scenes of each kind, save it; returns the held-out accuracy."""
    from engine.data.landscapes import EVAL_SEEDS, TRAIN_SEEDS
    from engine.paths import assets_dir

    rng = np.random.default_rng(0)
    x, y = _samples(TRAIN_SEEDS[:scenes], 256, 1000, rng, metrics.vgg_features, textured=True)
    names = metrics.class_names()
    model = metrics.classifier_module(len(names), x.shape[1], (128,))
    model = _fit_classifier(model, x, y, len(names), epochs, weight_decay=1e-5)
    accuracy = _held_out_accuracy(model, *_samples(EVAL_SEEDS[:eval_scenes], 256, 0, rng, metrics.vgg_features, True))
    _save_classifier(model, Path(path or assets_dir() / metrics.VGG_CLASSIFIER_FILE),
                     {"classes": ",".join(names), "eval_accuracy": f"{accuracy:.4f}", "train_scenes": scenes,
                      "eval_scenes": eval_scenes, "scenes": "every second one photo-textured",
                      "backbone": metrics.VGG_BACKBONE_FILE})  # fmt: skip
    return accuracy


if __name__ == "__main__":
    import sys

    import torch

    torch.set_num_threads(1)  # small MLPs: threads only add contention
    if "--fit" in sys.argv:
        print(f"held-out per-pixel accuracy: {fit_label_classifier():.3f}")
    if "--fit-vgg" in sys.argv:
        print(f"VGG judge, held-out per-pixel accuracy: {fit_vgg_label_classifier():.3f}")
