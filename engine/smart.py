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


class GrabCut:
    """GrabCut around a rectangle, refined by scribbles. It runs on a crop padded for background samples and
    scaled down to GRABCUT_SIDE; `result` scales the mask back to full resolution."""

    def __init__(self, rgb: np.ndarray, x0: int, y0: int, x1: int, y1: int):
        height, width = rgb.shape[:2]
        pad_x, pad_y = max(8, (x1 - x0) // 5), max(8, (y1 - y0) // 5)
        self.x0, self.y0 = max(0, x0 - pad_x), max(0, y0 - pad_y)
        self.x1, self.y1 = min(width, x1 + pad_x), min(height, y1 + pad_y)
        crop = np.ascontiguousarray(rgb[self.y0:self.y1, self.x0:self.x1, ::-1])  # OpenCV works in BGR
        self.scale = min(1.0, GRABCUT_SIDE / max(crop.shape[:2]))
        self.small = (cv2.resize(crop, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
                      if self.scale < 1 else crop)
        rx0, ry0 = self._small(x0, y0)
        rw = max(2, min(self.small.shape[1] - rx0, int(np.ceil((x1 - x0) * self.scale))))
        rh = max(2, min(self.small.shape[0] - ry0, int(np.ceil((y1 - y0) * self.scale))))
        self.mask = np.zeros(self.small.shape[:2], np.uint8)
        self.models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(self.small, self.mask, (rx0, ry0, rw, rh), *self.models, GRABCUT_ITERATIONS,
                    cv2.GC_INIT_WITH_RECT)

    def _small(self, x: float, y: float) -> tuple[int, int]:
        return int((x - self.x0) * self.scale), int((y - self.y0) * self.scale)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def mark(self, points: list[tuple[float, float]], radius: int, foreground: bool) -> None:
        """A scribble: these pixels are certainly object (foreground) or certainly not."""
        value = cv2.GC_FGD if foreground else cv2.GC_BGD
        thickness = max(1, round(2 * radius * self.scale))
        small = np.array([self._small(x, y) for x, y in points], np.int32)
        cv2.polylines(self.mask, [small], False, value, thickness)
        for x, y in small:
            cv2.circle(self.mask, (int(x), int(y)), thickness // 2, value, -1)

    def refine(self) -> None:
        cv2.grabCut(self.small, self.mask, None, *self.models, 2, cv2.GC_INIT_WITH_MASK)

    def result(self) -> tuple[int, int, np.ndarray]:
        """(x0, y0, bool mask) over the padded crop at full resolution."""
        chosen = ((self.mask == cv2.GC_FGD) | (self.mask == cv2.GC_PR_FGD)).astype(np.uint8) * 255
        if self.scale < 1:
            # linear upsampling then a threshold gives smoother edges than nearest
            chosen = cv2.resize(chosen, (self.x1 - self.x0, self.y1 - self.y0), interpolation=cv2.INTER_LINEAR)
        return self.x0, self.y0, chosen >= 128
