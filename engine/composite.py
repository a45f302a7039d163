"""Compositing: the edit mask, the model's working region, resizing to the model and back, blending.

A 24-MP photo never goes through a model: a job takes the edit mask's bounding box padded for context
(`working_region`), resizes that crop to the model's native resolution (`to_model`), and pastes the model's
output back into the full-resolution photo (`from_model` + `laplacian_blend`, or `transfer_chroma` for
colorization). Only the padded region is ever processed.
"""

from __future__ import annotations

import numpy as np

from engine.errors import InputError

Region = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive


def full_region(image: np.ndarray) -> Region:
    return 0, 0, image.shape[1], image.shape[0]


def edit_mask(labels_before: np.ndarray | None, labels_after: np.ndarray | None,
              user_mask: np.ndarray | None = None, *, shape: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) bool: the user's mask if given, else the pixels whose label changed, else (no labels) all."""
    if user_mask is not None:
        return np.asarray(user_mask) > 0
    if labels_before is not None and labels_after is not None:
        if labels_before.shape != labels_after.shape:
            raise InputError(f"label maps differ in size: {labels_before.shape} vs {labels_after.shape}")
        return labels_before != labels_after
    if shape is None:
        raise InputError("no mask and no label maps: cannot tell which pixels to edit")
    return np.ones(shape, bool)


def mask_bbox(mask: np.ndarray) -> Region | None:
    """Tight bounding box of the True pixels, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
