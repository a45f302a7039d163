"""Smart labelling helpers (no Qt): superpixels computed once per image, and GrabCut on a downscaled crop."""

from __future__ import annotations

import cv2
import numpy as np

SUPERPIXEL_SIDE = 768  # SLIC runs on a copy this long; ~0.5 s for a 24-MP photo on a 2-core laptop
SUPERPIXEL_COUNT = 1500
GRABCUT_SIDE = 400
GRABCUT_ITERATIONS = 4


class Superpixels:
    """SLIC superpixels of an image at full resolution: `segments` (H, W) uint16 and each segment's bbox."""

    def __init__(self, rgb: np.ndarray):
        from scipy.ndimage import find_objects
        from skimage.segmentation import slic

        height, width = rgb.shape[:2]
        scale = min(1.0, SUPERPIXEL_SIDE / max(height, width))
        small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        segments = slic(small, n_segments=SUPERPIXEL_COUNT, compactness=10, start_label=1).astype(np.uint16)
        if scale < 1:
            segments = cv2.resize(segments, (width, height), interpolation=cv2.INTER_NEAREST)
        self.segments = segments
        self.boxes = find_objects(segments)  # boxes[i - 1] = (row slice, col slice) of segment i

    def ids_in(self, x0: int, y0: int, mask: np.ndarray) -> np.ndarray:
        h, w = mask.shape
        return np.unique(self.segments[y0:y0 + h, x0:x0 + w][mask])

    def region(self, segment: int) -> tuple[int, int, np.ndarray] | None:
        """(x0, y0, mask) of one segment, the mask cropped to its bounding box."""
        box = self.boxes[segment - 1] if 0 < segment <= len(self.boxes) else None
        if box is None:
            return None
        rows, cols = box
        return cols.start, rows.start, self.segments[box] == segment


def grabcut(rgb: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, np.ndarray]:
    """The foreground inside the rectangle as (x0, y0, mask); GrabCut runs on a crop padded for background
    samples and scaled down to GRABCUT_SIDE, then its mask is scaled back up."""
    height, width = rgb.shape[:2]
    pad_x, pad_y = max(8, (x1 - x0) // 5), max(8, (y1 - y0) // 5)
    cx0, cy0 = max(0, x0 - pad_x), max(0, y0 - pad_y)
    cx1, cy1 = min(width, x1 + pad_x), min(height, y1 + pad_y)
    crop = np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1, ::-1])  # OpenCV works in BGR
    scale = min(1.0, GRABCUT_SIDE / max(crop.shape[:2]))
    small = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else crop
    rx0, ry0 = int((x0 - cx0) * scale), int((y0 - cy0) * scale)
    rw = max(2, min(small.shape[1] - rx0, int(np.ceil((x1 - x0) * scale))))
    rh = max(2, min(small.shape[0] - ry0, int(np.ceil((y1 - y0) * scale))))
    mask = np.zeros(small.shape[:2], np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(small, mask, (rx0, ry0, rw, rh), background, foreground, GRABCUT_ITERATIONS,
                cv2.GC_INIT_WITH_RECT)
    chosen = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8) * 255
    if scale < 1:
        # linear upsampling then a threshold gives smoother edges than nearest
        chosen = cv2.resize(chosen, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    full = chosen[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] >= 128
    return x0, y0, full
