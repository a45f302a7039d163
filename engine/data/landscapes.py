"""Procedural landscape photographs with pixel-exact COCO-Stuff 182 label maps.

Nothing can be downloaded, so every demo model learns from these scenes. They are built to need context:

- water mirrors whatever stands above its shoreline (sky, mountains, trees), darkened and rippled, so a model that
  paints a lake must look far up the image (the long-range dependency ASSET's attention exists for);
- global style factors couple regions: the time of day colours the sky, the light on every surface and the water;
  winter puts snow on the ground, the peaks and the trees; autumn turns deciduous trees and grass.

A scene is a stack of layers painted back to front (sky, clouds, mountains, hills, far ground, tree line, water,
near ground, foreground objects); every layer writes its colour and its label through the same hard mask, so labels
and image agree pixel for pixel. Noise fields are made on a grid whose size depends only on the aspect ratio and
are upsampled, so a seed gives the same scene at 256 and 1024 pixels (finer grain aside), and a 256x256 scene takes
a few milliseconds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import SimpleNamespace

import cv2
import numpy as np

from engine.errors import InputError
from engine.labels import load_label_set

LABEL_SET = "coco-stuff-182"
# Held-out scenes for evaluation: no trainer may draw from this range.
EVAL_SEEDS = range(1_000_000_000, 1_000_001_000)
TRAIN_SEEDS = range(0, 1_000_000_000)

MIN_SIZE, MAX_SIZE = 64, 2048
_WORK = 256  # noise fields are summed at most at this resolution, then upsampled once
_LABEL_NAMES = (
    "sky-other", "clouds", "mountain", "hill", "rock", "snow", "sea", "river", "water-other",
    "grass", "tree", "bush", "sand", "flower", "road",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def ids() -> SimpleNamespace:
    """The label ids the generator paints, by name with '-' as '_' (ids().sky_other, ids().water_other...)."""
    label_set = load_label_set(LABEL_SET)
    return SimpleNamespace(**{name.replace("-", "_"): label_set.id_of(name) for name in _LABEL_NAMES})


def water_ids() -> tuple[int, ...]:
    i = ids()
    return (i.sea, i.river, i.water_other)



def water_under_mountains(scene):
    """The held-out edit: everything below the mountains' lowest row (ground, trees, ...) becomes sea,
    or None when the scene has no mountain."""
    i = ids()
    mountain = np.isin(scene.labels, [i.mountain, i.hill])
    rows = np.flatnonzero(mountain.any(1))
    if rows.size == 0:
        return None
    h = scene.labels.shape[0]
    top = max(int(rows[-1]) + 1, int(h * 0.6))
    if top >= h - 32:
        return None
    after = scene.labels.copy()
    after[top:] = i.sea
    return after

@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    labels: np.ndarray  # (H, W) uint8 COCO-Stuff 182 ids
    # seed, time_of_day (day|morning|sunset|dusk), season (spring|summer|autumn|winter), weather
    # (clear|cloudy|overcast|hazy), layout (lake|sea|river|meadow), horizon (row fraction), mountains (bool),
    # shoreline (first water row or None) and water (its label name or None)
    meta: dict = field(default_factory=dict)


# time of day -> (zenith, horizon, sun light, ambient light); colours in [0, 1] sRGB
_SKIES = {
    "day": ((0.16, 0.36, 0.74), (0.68, 0.80, 0.93), (1.00, 0.97, 0.90), (0.42, 0.48, 0.58)),
    "morning": ((0.32, 0.48, 0.78), (0.96, 0.84, 0.72), (1.00, 0.88, 0.74), (0.42, 0.44, 0.55)),
    "sunset": ((0.22, 0.22, 0.48), (1.00, 0.56, 0.26), (1.00, 0.62, 0.36), (0.36, 0.30, 0.42)),
    "dusk": ((0.05, 0.07, 0.20), (0.58, 0.36, 0.44), (0.50, 0.42, 0.62), (0.16, 0.16, 0.26)),
}
_GRASS = {
    "spring": (0.40, 0.62, 0.20),
    "summer": (0.28, 0.48, 0.16),
    "autumn": (0.52, 0.48, 0.22),
    "winter": (0.45, 0.44, 0.30),
}
_AUTUMN_LEAVES = ((0.80, 0.42, 0.10), (0.85, 0.62, 0.12), (0.62, 0.20, 0.08), (0.45, 0.40, 0.12))


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if not (MIN_SIZE <= int(h) <= MAX_SIZE and MIN_SIZE <= int(w) <= MAX_SIZE):
        raise InputError(f"scene size {h}x{w} is outside {MIN_SIZE}..{MAX_SIZE} pixels")
    return int(h), int(w)


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _mix(a, b, t):
    a = np.asarray(a, np.float32)
    return a + (np.asarray(b, np.float32) - a) * np.asarray(t, np.float32)


class _Painter:
    """One scene under construction: float RGB canvas, label map and the shared noise sources."""

    def __init__(self, seed: int, h: int, w: int):
        self.h, self.w = h, w
        self.rng = np.random.default_rng(seed)
        # pixel grain depends on the size; keep it off the main stream so layouts match across sizes
        grain_rng = np.random.default_rng([seed, h, w])
        self._grain = grain_rng.standard_normal((h + 16, w + 16), np.float32)  # shifted views act as new fields
        self._grain_turn = 0
        scale = min(1.0, _WORK / max(h, w))
        self.work = (max(8, round(h * scale)), max(8, round(w * scale)))
        self.full_y = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]  # (H, 1) in [0, 1]
        self.x = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]  # (1, W) in [0, 1]
        self.aspect = w / h
        self.full_image = np.zeros((h, w, 3), np.float32)
        self.full_labels = np.zeros((h, w), np.uint8)
        self.band(0.0, 1.0)

    def band(self, top: float, bottom: float) -> slice:
        """Restrict the following painting to rows top..bottom (image units): layers cost what they cover."""
        r0 = int(np.clip(np.floor(top * self.h) - 1, 0, self.h))
        r1 = int(np.clip(np.ceil(bottom * self.h) + 1, r0, self.h))
        self.rows = slice(r0, r1)
        self.y = self.full_y[self.rows]
        self.image = self.full_image[self.rows]
        self.labels = self.full_labels[self.rows]
        return self.rows

    # -- noise -------------------------------------------------------------------------------------------------

    def fbm(self, cells: float, octaves: int, gain: float = 0.5, sy: float = 1.0, sx: float = 1.0, ridged=False):
        """Fractal noise with unit standard deviation over the canvas; `sy`/`sx` > 1 compress features in y/x.
        Octaves are summed up a pyramid (each sum upsampled to the next octave's grid), so only the last
        upsampling touches every pixel; `ridged` folds each octave at full size instead (sharp creases)."""
        wh, ww = self.work
        long_side = max(self.h, self.w)
        total = None
        amp = 1.0
        for octave in range(octaves):
            f = cells * 2**octave
            gy = max(2, round(f * sy * self.h / long_side)) + 1
            gx = max(2, round(f * sx * self.w / long_side)) + 1
            grid = self.rng.standard_normal((gy, gx), np.float32)
            if ridged:
                layer = 1.0 - np.abs(cv2.resize(grid, (ww, wh), interpolation=cv2.INTER_CUBIC))
                total = amp * layer if total is None else total + amp * layer
            else:
                total = amp * grid if total is None else cv2.resize(total, (gx, gy), interpolation=cv2.INTER_CUBIC) + amp * grid
            amp *= gain
        if not ridged:
            total = cv2.resize(total, (ww, wh), interpolation=cv2.INTER_CUBIC)
        total -= total.mean()
        total /= total.std() + 1e-6
        if (wh, ww) != (self.h, self.w):
            total = cv2.resize(total, (self.w, self.h), interpolation=cv2.INTER_LINEAR)
        return total[self.rows]

    def fbm1d(self, cells: int, octaves: int, gain: float = 0.55) -> np.ndarray:
        """A ridge-like 1D profile over the columns (linear interpolation keeps midpoint-displacement kinks)."""
        total = np.zeros(self.w, np.float32)
        amp = 1.0
        xs = self.x[0]
        for octave in range(octaves):
            n = cells * 2**octave + 1
            total += amp * np.interp(xs, np.linspace(0, 1, n), self.rng.standard_normal(n)).astype(np.float32)
            amp *= gain
        return (total - total.mean()) / (total.std() + 1e-6)

    def grain(self, sigma: float) -> np.ndarray:
        self._grain_turn += 1
        dy, dx = (self._grain_turn * 5) % 16, (self._grain_turn * 11) % 16
        field = self._grain[dy : dy + self.h, dx : dx + self.w]
        return field[self.rows] * np.float32(sigma)

    # -- writing -----------------------------------------------------------------------------------------------

    def put(self, mask: np.ndarray, colour: np.ndarray, label: int) -> None:
        """Paint `colour` (band,W,3 or 3) and `label` through the boolean `mask` (band or full height)."""
        if mask.shape[0] != self.labels.shape[0]:
            mask = mask[self.rows]
        np.copyto(self.image, colour, where=mask[..., None])
        np.copyto(self.labels, np.uint8(label), where=mask)


def _style(rng: np.random.Generator) -> dict:
    tod = str(rng.choice(list(_SKIES), p=[0.45, 0.2, 0.22, 0.13]))
    season = str(rng.choice(["spring", "summer", "autumn", "winter"], p=[0.22, 0.34, 0.24, 0.2]))
    weather = str(rng.choice(["clear", "cloudy", "overcast", "hazy"], p=[0.35, 0.35, 0.18, 0.12]))
    return {"time_of_day": tod, "season": season, "weather": weather}


class _Scene(_Painter):
    def __init__(self, seed: int, h: int, w: int):
        super().__init__(seed, h, w)
        rng = self.rng
        self.style = _style(rng)
        tod, weather = self.style["time_of_day"], self.style["weather"]
        zenith, horizon_c, light, ambient = (np.array(c, np.float32) for c in _SKIES[tod])
        jitter = rng.normal(0, 0.03, (2, 3)).astype(np.float32)
        zenith, horizon_c = np.clip(zenith + jitter[0], 0, 1), np.clip(horizon_c + jitter[1], 0, 1)
        if weather == "overcast":
            grey = np.float32([0.62, 0.64, 0.68]) * (0.6 if tod == "dusk" else 1.0)
            zenith, horizon_c = _mix(zenith, grey * 0.8, 0.75), _mix(horizon_c, grey, 0.7)
            light, ambient = _mix(light, ambient, 0.6), ambient * 1.35
        self.zenith, self.horizon_colour, self.light, self.ambient = zenith, horizon_c, light, ambient
        self.sun_x = float(rng.uniform(0.15, 0.85))
        self.sun_side = -1.0 if self.sun_x < 0.5 else 1.0  # light comes from this side
        self.haze = {"clear": 0.25, "cloudy": 0.35, "overcast": 0.5, "hazy": 0.7}[weather]

        self.layout = str(rng.choice(["lake", "sea", "river", "meadow"], p=[0.27, 0.15, 0.15, 0.43]))
        self.horizon = float(rng.uniform(0.36, 0.56))

    def lit(self, albedo, shade):
        """Surface colour under the scene's sun (scaled by `shade` in [0, 1]) and sky ambient light."""
        albedo = np.asarray(albedo, np.float32)
        shade = np.asarray(shade, np.float32)[..., None]
        return albedo * self.ambient + shade * (albedo * self.light * np.float32(0.85))

    def hazed(self, colour, distance):
        """Aerial perspective: far things fade towards the horizon colour."""
        t = (self.haze * np.asarray(distance, np.float32))[..., None]
        return _mix(colour, self.horizon_colour, t)

    # -- sky ---------------------------------------------------------------------------------------------------

    def sky(self):
        i = ids()
        self.band(0.0, 1.0)
        t = np.clip(self.y / self.horizon, 0, 1) ** 0.8
        sky = _mix(self.zenith, self.horizon_colour, t[..., None])  # (H, 1, 3)
        sky = np.broadcast_to(sky, (self.h, self.w, 3)).copy()
        tod = self.style["time_of_day"]
        if tod in ("sunset", "morning", "dusk"):
            sun_y = self.horizon - (0.05 if tod != "dusk" else -0.02)
            d = np.hypot((self.x - self.sun_x) * self.aspect, (self.y - sun_y) * 1.6)
            glow = np.exp(-d / 0.18)[..., None] * np.float32(0.5 if tod == "dusk" else 0.75)
            sky = sky + glow * (self.light - sky * 0.5)
        self.image[:] = sky
        self.labels[:] = i.sky_other
        self.sky_canvas = sky  # what water shows where nothing stands above it

        cover = {"clear": 0.08, "cloudy": 0.35, "overcast": 0.8, "hazy": 0.15}[self.style["weather"]]
        cover = float(np.clip(cover + self.rng.normal(0, 0.08), 0.02, 0.9))
        self.band(0.0, self.horizon)
        density = self.fbm(2.0, 6, 0.55, sy=2.6)
        # clouds thin out towards the horizon (perspective) and are cut off by it
        density = density - 2.2 * np.clip((self.y - self.horizon * 0.55) / (self.horizon * 0.45), 0, 1)
        threshold = np.quantile(density[self.y[:, 0] < self.horizon], 1 - cover)
        alpha = _smoothstep(threshold, threshold + 0.35, density)
        mask = (alpha > 0.5) & (self.y < self.horizon)
        if not mask.any():
            return
        # lit where the density falls off towards the sun above (a crude self-shadowing)
        shift = max(1, self.h // 40)
        lit = np.clip(0.55 + 0.6 * (density - np.roll(density, shift, axis=0)), 0, 1)[..., None]
        dim = 0.55 if tod == "dusk" else 1.0
        shadow = _mix(self.zenith, np.float32([0.55, 0.55, 0.6]), 0.5) * np.float32(dim + 0.05)
        bright = np.clip(self.light * 0.97, 0, 1) * np.float32(dim)
        colour = _mix(shadow, bright, lit) + self.grain(0.01)[..., None]
        colour = _mix(self.image, colour, np.clip(alpha * 1.25, 0, 1)[..., None])
        np.copyto(self.image, colour, where=(self.y < self.horizon)[..., None])
        self.labels[mask] = i.clouds

    # -- mountains and hills -----------------------------------------------------------------------------------

    def ridge(self, base: float, height: float, peaks: int, jagged: float) -> np.ndarray:
        """Row (in [0,1] image units) of a ridge line per column: tent-shaped peaks plus fractal detail."""
        xs = self.x[0]
        profile = np.zeros(self.w, np.float32)
        for _ in range(peaks):
            cx = self.rng.uniform(-0.1, 1.1)
            top = self.rng.uniform(0.45, 1.0)
            slope_l, slope_r = self.rng.uniform(1.2, 3.5, 2) * self.aspect
            d = xs - cx
            profile = np.maximum(profile, top - np.where(d < 0, -d * slope_l, d * slope_r))
        detail = self.fbm1d(6, 6, 0.55)
        profile = np.clip(profile + jagged * detail * (0.3 + 0.7 * profile), 0.02, None)
        return (base - height * profile / max(profile.max(), 1e-3)).astype(np.float32)

    def mountains(self, base: float, height: float, distance: float, snow_line: float):
        i = ids()
        ridge = self.ridge(base, height, int(self.rng.integers(2, 6)), self.rng.uniform(0.08, 0.2))
        self.band(float(ridge.min()), base + 0.01)
        mask = (self.y >= ridge[None, :]) & (self.y < base + 0.01)
        # terrain: faces turn with the smoothed ridge (a lit and a shadowed flank per peak), crags and gullies
        # from ridged noise; shade by the slope facing the sun, which stands to one side and above
        gullies = self.fbm(5.0, 5, 0.5, sy=0.8, sx=1.6, ridged=True)
        bumps = self.fbm(6.0, 4, 0.55)
        below = np.clip(self.y - ridge[None, :], 0, None) / max(height, 1e-3)
        smooth = cv2.GaussianBlur(ridge[None, :], (0, 0), sigmaX=max(1.0, 0.03 * self.w))[0]
        flank = np.gradient(smooth)[None, :] * self.w * np.exp(-1.5 * below)  # >0 where the ridge falls to the right
        crag = 0.025 * (gullies + 0.6 * bumps) * (below + 0.3)
        crag_x = np.gradient(crag, axis=1) * self.w
        crag_y = np.gradient(crag, axis=0) * self.h
        slope = 0.35 * np.tanh(3 * flank) + 1.2 * crag_x
        shade = np.clip(0.55 - 1.6 * self.sun_side * slope - 0.8 * crag_y, 0.05, 1.0)
        if self.style["weather"] == "overcast":
            shade = _mix(shade, 0.55, 0.6)
        rock = np.float32(self.rng.uniform(0.32, 0.45)) * np.float32([1.0, 0.97, 0.92])
        rock = rock + self.rng.normal(0, 0.02, 3).astype(np.float32)
        texture = 1 + 0.12 * self.fbm(12.0, 4, 0.6) + self.grain(0.03)
        colour = self.lit(rock, shade) * texture[..., None]
        if self.style["season"] != "winter":  # forests on the lower slopes in the warm seasons
            green = np.float32(_GRASS[self.style["season"]]) * 0.7
            veg = _smoothstep(0.0, 0.35, below + 0.15 * gullies - 0.45)
            colour = _mix(colour, self.lit(green, shade) * texture[..., None], veg[..., None] * 0.8)
        self.put(mask, self.hazed(colour, distance), i.mountain)

        # snow above an altitude line, reaching further down in the gullies
        altitude = (base - self.y) / max(height, 1e-3)  # 0 at the base, 1 at the highest peak
        snow = mask & (altitude + 0.12 * gullies + 0.06 * bumps > snow_line)
        if snow.any():
            white = np.float32([0.93, 0.94, 0.97])
            snow_colour = self.lit(white, np.clip(shade * 1.15, 0.1, 1.0)) * (1 + self.grain(0.015))[..., None]
            self.put(snow, self.hazed(np.clip(snow_colour, 0, 1.05), distance), i.snow)

    def hills(self, base: float, height: float, distance: float):
        i = ids()
        ridge = base - height * (0.55 + 0.3 * self.fbm1d(2, 4, 0.45))
        self.band(float(ridge.min()), base + 0.01)
        mask = (self.y >= ridge[None, :]) & (self.y < base + 0.01)
        season = self.style["season"]
        albedo = np.float32(_GRASS[season]) * 0.85 if season != "winter" else np.float32([0.9, 0.91, 0.95])
        # rounded hills: shade by the slope of the smoothed profile (the raw one is piecewise linear: flat facets)
        smooth = cv2.GaussianBlur(ridge[None, :].astype(np.float32), (0, 0), sigmaX=max(1.0, 0.04 * self.w))[0]
        slope = np.gradient(-smooth * 3)[None, :] * (self.w / 3)
        shade = np.clip(0.7 - 4 * self.sun_side * slope + 0.1 * self.fbm(3.0, 3), 0.1, 1)
        texture = 1 + 0.1 * self.fbm(10.0, 3, 0.6) + self.grain(0.02)
        self.put(mask, self.hazed(self.lit(albedo, shade) * texture[..., None], distance), i.hill)

    # -- ground ------------------------------------------------------------------------------------------------

    def ground(self, top: np.ndarray | float, kind: str):
        """Grass, snow or sand from row `top` (per column) down, with perspective texture and distance haze."""
        i = ids()
        top = np.asarray(top, np.float32).reshape(1, -1)
        self.band(float(top.min()), 1.0)
        mask = self.y >= top
        depth = np.clip((self.y - self.horizon) / (1 - self.horizon), 0, 1)  # 0 at the horizon, 1 at the bottom
        patches = self.fbm(3.0, 4, 0.5, sy=3.0)
        fine = self.fbm(40.0, 2, 0.5, sy=0.4, sx=2.0)  # grass blades: tall thin streaks
        coarse = self.fbm(10.0, 2, 0.5, sy=0.6, sx=1.5)
        blades = _mix(fine, coarse, depth)  # finer texture far away
        if kind == "grass":
            season = self.style["season"]
            albedo = np.float32(_GRASS[season]) + self.rng.normal(0, 0.02, 3).astype(np.float32)
            dry = np.float32([0.58, 0.52, 0.30])
            colour = _mix(albedo, dry, np.clip(0.25 * patches + 0.15, 0, 0.6)[..., None])
            # blades at pixel scale, taller near the camera: vertical streaks of grain
            streaks = cv2.GaussianBlur(self.grain(1.0), (0, 0), sigmaX=0.6, sigmaY=1.0 + 2.5 * self.h / 256)
            streaks *= np.float32(2.5) * depth
            shade = np.clip(0.72 + 0.14 * blades * (0.4 + depth) + 0.08 * patches + 0.12 * streaks, 0.2, 1)
            label = i.grass
        elif kind == "snow":
            colour = np.float32([0.92, 0.93, 0.96])
            shade = np.clip(0.8 + 0.05 * patches + 0.03 * blades, 0.3, 1)
            label = i.snow
        else:
            colour = np.float32([0.80, 0.70, 0.52]) + self.rng.normal(0, 0.03, 3).astype(np.float32)
            shade = np.clip(0.8 + 0.06 * patches + 0.04 * coarse, 0.3, 1)
            label = i.sand
        if self.style["weather"] == "overcast":
            shade = _mix(shade, 0.6, 0.5)
        out = self.lit(colour, shade) * (1 + self.grain(0.02 if kind != "sand" else 0.04))[..., None]
        self.put(mask, self.hazed(out, (1 - depth) ** 3), label)

    # -- trees -------------------------------------------------------------------------------------------------

    def tree_line(self, base: float, height: float, coverage: float, conifer_share: float):
        """A band of tree crowns standing on row `base`; crowns as 1D silhouettes merged by a min over trees."""
        i = ids()
        xs = self.x[0] * self.aspect  # in image-height units, so crowns keep their shape on wide images
        n = int(self.aspect / (height * 0.35)) + 4
        cx = np.sort(self.rng.uniform(-0.05, self.aspect + 0.05, n)).astype(np.float32)
        # forest patches: drop trees where a slow noise is below the coverage
        keep = np.interp(cx / self.aspect, np.linspace(0, 1, 9), self.rng.standard_normal(9)) > (0.5 - coverage) * 2.5
        hs = (height * self.rng.uniform(0.55, 1.0, n)).astype(np.float32)
        conifer = self.rng.random(n) < conifer_share
        tint = self.rng.uniform(0.8, 1.15, (n, 1)).astype(np.float32)
        leaf_pick = self.rng.integers(0, len(_AUTUMN_LEAVES), n)
        edge_noise = self.fbm1d(40, 2)
        cx, hs, conifer, tint, leaf_pick = cx[keep], hs[keep], conifer[keep], tint[keep], leaf_pick[keep]
        if cx.size == 0:
            return
        radius = np.where(conifer, hs * 0.28, hs * 0.45).astype(np.float32)
        dx = xs[None, :] - cx[:, None]  # (n, W)
        u = np.abs(dx) / radius[:, None]
        dome = np.sqrt(np.clip(1 - u**2, 0, 1)) * 0.55 + 0.45
        frac = np.where(conifer[:, None], 1 - u, dome)  # crown height fraction at that column
        top = np.where(u < 1, base - hs[:, None] * frac, np.inf)
        owner = np.argmin(top, axis=0)
        columns = np.arange(self.w)
        crown_top = top[owner, columns] + 0.1 * height * edge_noise * np.isfinite(top[owner, columns])
        self.band(float(np.min(crown_top)), base)
        mask = (self.y >= crown_top[None, :]) & (self.y < base)
        if not mask.any():
            return

        season = self.style["season"]
        if season == "autumn":
            palette = np.float32(_AUTUMN_LEAVES)[leaf_pick]
        elif season == "winter":
            palette = np.broadcast_to(np.float32([0.30, 0.26, 0.22]), (cx.size, 3))  # bare branches
        else:
            palette = np.broadcast_to(np.float32(_GRASS[season]) * 0.75, (cx.size, 3))
        albedo = (np.where(conifer[:, None], np.float32([0.12, 0.24, 0.12]), palette) * tint)[owner]  # (W, 3)
        leaves = self.fbm(64.0, 2, 0.6)
        # round crowns: lit on the sun side of each tree, darker towards the base
        side = np.clip(dx[owner, columns] / radius[owner], -1, 1)[None, :]
        vertical = np.clip((self.y - crown_top[None, :]) / height, 0, 1)
        shade = np.clip(0.6 - 0.35 * self.sun_side * side + 0.25 * leaves - 0.35 * vertical, 0.05, 1)
        colour = self.lit(albedo[None, :, :], shade)
        if season == "winter":  # snow on the branches, most on the upper crown
            snowy = _smoothstep(-0.4, 0.6, leaves + 1.2 * (1 - vertical) - 0.9)[..., None] * np.float32(0.75)
            colour = _mix(colour, self.lit(np.float32([0.88, 0.9, 0.94]), shade * 0.7 + 0.3), snowy)
        distance = np.clip(1 - (base - self.horizon) / (1 - self.horizon), 0, 1) ** 2
        self.put(mask, self.hazed(colour, distance), i.tree)

    # -- water -------------------------------------------------------------------------------------------------

    def water(self, near: np.ndarray, shore: int, label: int):
        """Water from row `shore` down to `near` (per column): the canvas mirrored about the shoreline, rippled,
        darkened by the water body (more towards the viewer, where less is reflected) and glittering on the sun's
        path."""
        self.band(0.0, 1.0)
        mask = (np.arange(self.h)[:, None] >= shore) & (self.y < near[None, :])
        ys = np.arange(self.h, dtype=np.float32)[:, None]
        below = np.clip((ys - shore) / max(1, self.h - shore), 0, 1)  # 0 at the shore, 1 at the image bottom
        calm = self.rng.uniform(0.3, 1.0)
        waves = self.fbm(6.0, 3, 0.5, sy=9.0, sx=0.6)  # long horizontal wavelets
        ripple_x = calm * (0.004 + 0.03 * below) * self.w * waves
        ripple_y = calm * (0.002 + 0.012 * below) * self.h * self.fbm(8.0, 2, 0.5, sy=10.0, sx=1.0)
        canvas = self.image.copy()
        if shore < self.h:
            canvas[shore:] = self.sky_canvas[np.clip(2 * shore - 1 - np.arange(shore, self.h), 0, self.h - 1)]
        map_y = np.clip((2 * shore - 1 - ys) + ripple_y, 0, self.h - 1).astype(np.float32)
        map_x = (np.arange(self.w, dtype=np.float32)[None, :] + ripple_x).astype(np.float32)
        reflection = cv2.remap(canvas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        deep = np.float32([0.05, 0.16, 0.20]) if label != ids().sea else np.float32([0.04, 0.14, 0.26])
        body = self.lit(deep, 0.5)
        fresnel = (0.86 - 0.38 * below)[..., None]  # grazing angles reflect more
        colour = fresnel * reflection * np.float32(0.88) + (1 - fresnel) * body
        crest = np.clip(waves - 1.2, 0, None)
        path = np.exp(-(((self.x - self.sun_x) * self.aspect / (0.05 + 0.15 * below)) ** 2))
        strength = {"day": 0.25, "morning": 0.5, "sunset": 0.7, "dusk": 0.2}[self.style["time_of_day"]]
        if self.style["weather"] == "overcast":
            strength *= 0.2
        colour = colour + (strength * crest * path)[..., None] * self.light
        colour = colour * (1 + 0.04 * waves * calm)[..., None]
        self.put(mask, colour, label)

    # -- foreground objects ------------------------------------------------------------------------------------

    def region_band(self, region: np.ndarray) -> np.ndarray | None:
        """Enter the band of rows where the full-height `region` has pixels; return the region in that band."""
        rows = np.flatnonzero(region.any(axis=1))
        if rows.size == 0:
            return None
        self.band(rows[0] / self.h, (rows[-1] + 1) / self.h)
        return region[self.rows]

    def blobs(self, region: np.ndarray, share: float, cells: float, sy: float = 1.0) -> np.ndarray:
        """Organic patches covering about `share` of `region` (both in the current band)."""
        n = self.fbm(cells, 4, 0.55, sy=sy)
        return region & (n > np.quantile(n[region], 1 - share))

    def mounds(self, region: np.ndarray, count: int, size: float, lumps: int, flat: float):
        """Round objects standing on the ground inside `region` (full height): `count` clusters of up to `lumps`
        overlapping ellipsoids each, sized by perspective. Yields (window, mask, shade) per lump,
        far to near, with `shade` from the lump's sphere normal against the sun (Lambert)."""
        top = float(self.full_y[np.flatnonzero(region.any(axis=1))[0], 0]) if region.any() else 1.0
        spots = []
        for _ in range(count):
            x, y = self.rng.uniform(0, 1), self.rng.uniform(top, 1)
            r = size * (0.25 + (y - self.horizon) / (1 - self.horizon)) * self.rng.uniform(0.6, 1.3)
            n = int(self.rng.integers(1, lumps + 1))
            offsets = self.rng.uniform(-1, 1, (n, 2)) * np.float32([1.2, 0.3])
            radii = self.rng.uniform(0.55, 1.0, n)
            row, col = min(self.h - 1, int(y * self.h)), min(self.w - 1, int(x * self.w))
            if region[row, col]:
                spots.append((y, x, r, offsets, radii))
        light = np.float32([0.55 * self.sun_side, -0.7, 0.55])
        light /= np.linalg.norm(light)
        for y, x, r, offsets, radii in sorted(spots, key=lambda spot: spot[0]):
            for (ox, oy), k in zip(offsets, radii):
                rr = r * k
                cy, cx = y - rr * flat + oy * r, x + ox * r / self.aspect
                r0, r1 = int((cy - rr * flat) * self.h), int(np.ceil(min(y, cy + rr * flat) * self.h)) + 1
                c0, c1 = int((cx - rr / self.aspect) * self.w), int(np.ceil((cx + rr / self.aspect) * self.w)) + 1
                r0, r1, c0, c1 = max(r0, 0), min(r1, self.h), max(c0, 0), min(c1, self.w)
                if r1 - r0 < 1 or c1 - c0 < 1:
                    continue
                dy = (self.full_y[r0:r1] - cy) / (rr * flat)
                dx = (self.x[:, c0:c1] - cx) * self.aspect / rr
                d2 = dx * dx + dy * dy
                mask = (d2 < 1) & (self.full_y[r0:r1] <= y)
                if not mask.any():
                    continue
                nz = np.sqrt(np.clip(1 - d2, 0, 1))
                shade = np.clip(dx * light[0] + dy * light[1] + nz * light[2], 0, 1)
                yield (slice(r0, r1), slice(c0, c1)), mask, shade

    def bushes(self, region: np.ndarray):
        i = ids()
        season = self.style["season"]
        albedo = np.float32({"autumn": [0.42, 0.28, 0.09], "winter": [0.30, 0.27, 0.22]}.get(season, [0.17, 0.31, 0.12]))
        albedo = albedo * np.float32(self.rng.uniform(0.8, 1.2))
        self.band(0.0, 1.0)
        leaves = self.fbm(64.0, 2, 0.6)
        count = int(self.rng.integers(3, 14))
        for window, mask, shade in self.mounds(region, count, 0.07, 6, 0.75):
            leafy = leaves[window]
            if season == "winter":  # snow-laden: white with soft shadows, twigs showing through in places
                twigs = _smoothstep(1.0, 2.2, -leafy)[..., None] * np.float32(0.7)
                snow = self.lit(np.float32([0.88, 0.89, 0.93]), np.clip(0.35 + 0.6 * shade + 0.08 * leafy, 0, 1))
                colour = _mix(snow, self.lit(albedo, 0.4 + 0.3 * shade), twigs)
            else:
                colour = self.lit(albedo, np.clip(0.12 + 0.75 * shade + 0.22 * leafy, 0.03, 1))
            np.copyto(self.full_image[window], colour, where=mask[..., None])
            self.full_labels[window][mask] = i.bush

    def flowers(self, region: np.ndarray):
        i = ids()
        share = self.rng.uniform(0.1, 0.3)
        petals = np.float32([[0.95, 0.85, 0.15], [0.85, 0.15, 0.18], [0.62, 0.40, 0.85], [0.96, 0.96, 0.92]])
        colour = petals[self.rng.integers(0, len(petals))]
        if (region := self.region_band(region)) is None:
            return
        mask = self.blobs(region, share, 3.0, sy=2.5)
        dots = cv2.GaussianBlur(self.grain(1.0), (0, 0), 0.7)
        bloom = mask & (dots > 0.15)
        np.copyto(self.image, self.lit(colour, 0.85), where=bloom[..., None])
        self.labels[mask] = i.flower

    def rocks(self, region: np.ndarray):
        i = ids()
        grey = np.float32(self.rng.uniform(0.35, 0.55)) * np.float32([1.0, 0.97, 0.93])
        self.band(0.0, 1.0)
        cracks = self.fbm(24.0, 3, 0.6, ridged=True)
        count = int(self.rng.integers(2, 9))
        for window, mask, shade in self.mounds(region, count, 0.05, 2, 0.55):
            shade = np.clip(0.2 + 0.75 * shade + 0.12 * cracks[window], 0.05, 1)
            colour = self.lit(grey, shade) * (1 + self.grain(0.04)[window])[..., None]
            if self.style["season"] == "winter":  # snow settles on the upper, sunlit side
                cap = _smoothstep(0.55, 0.75, shade)[..., None]
                colour = _mix(colour, self.lit(np.float32([0.9, 0.9, 0.94]), shade), cap)
            np.copyto(self.full_image[window], colour, where=mask[..., None])
            self.full_labels[window][mask] = i.rock

    def road(self, top: float):
        i = ids()
        start, vanish = self.rng.uniform(0.2, 0.8), self.rng.uniform(0.3, 0.7)
        bend, width = self.rng.uniform(1, 2.5), self.rng.uniform(0.12, 0.22)
        dirt = self.rng.random() < 0.5
        self.band(top, 1.0)
        t = np.clip((self.y - top) / (1 - top), 0, 1)  # 0 at the vanishing row, 1 at the bottom
        centre = _mix(vanish, start, t) + 0.05 * np.sin(t * np.pi * bend) * (1 - t)
        half = (0.005 + width * t) / self.aspect
        mask = (np.abs(self.x - centre) < half) & (self.y > top)
        albedo = np.float32([0.55, 0.45, 0.32]) if dirt else np.float32([0.30, 0.30, 0.31])
        if self.style["season"] == "winter":
            albedo = _mix(albedo, np.float32([0.85, 0.86, 0.9]), 0.5)
        shade = np.clip(0.75 + 0.08 * self.fbm(12.0, 3) + self.grain(0.04), 0.2, 1)
        self.put(mask, self.hazed(self.lit(albedo, shade), (1 - t) ** 3), i.road)

    def finish(self) -> np.ndarray:
        """Camera: a slight vignette, softness and sensor noise."""
        self.band(0.0, 1.0)
        r2 = ((self.x - 0.5) * 1.2) ** 2 + (self.y - 0.5) ** 2
        image = self.image * (1 - 0.25 * r2)[..., None]
        image = cv2.GaussianBlur(image, (0, 0), 0.45 * max(self.h, self.w) / 256)
        image = image + self.grain(0.012)[..., None]
        return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate_scene(seed: int, size: int | tuple[int, int] = 256) -> Scene:
    """The landscape for `seed` at `size` (an int for square, or (height, width)); deterministic."""
    h, w = _shape(size)
    s = _Scene(int(seed), h, w)
    i = ids()
    rng = s.rng
    season, layout, horizon = s.style["season"], s.layout, s.horizon

    s.sky()
    has_mountains = rng.random() < (0.55 if layout == "sea" else 0.8)
    if has_mountains:
        snow_line = {"winter": 0.15, "spring": 0.55, "summer": 0.75, "autumn": 0.65}[season] + rng.uniform(-0.1, 0.1)
        if rng.random() < 0.7:
            s.mountains(horizon, rng.uniform(0.16, 0.32), 1.0, snow_line)
        s.mountains(horizon, rng.uniform(0.08, 0.2), 0.55, snow_line + 0.1)
    if layout != "sea" and rng.random() < 0.45:
        s.hills(horizon, rng.uniform(0.03, 0.09), 0.4)

    ground_kind = "snow" if season == "winter" and rng.random() < 0.8 else "grass"
    shore_row = horizon + {"sea": 0.0, "lake": rng.uniform(0.0, 0.04), "river": rng.uniform(0.06, 0.16),
                           "meadow": rng.uniform(0.0, 0.12)}[layout]  # fmt: skip
    if layout != "sea":
        s.ground(horizon, ground_kind)
        if rng.random() < {"lake": 0.8, "river": 0.9, "meadow": 0.7}[layout]:
            conifers = 0.8 if season == "winter" else rng.uniform(0.1, 0.8)
            s.tree_line(shore_row, rng.uniform(0.04, 0.12), rng.uniform(0.4, 1.0), conifers)

    shore = None
    if layout in ("sea", "lake", "river"):
        shore = int(round(shore_row * h))
        if layout == "river":
            near = shore_row + rng.uniform(0.08, 0.2) + 0.02 * s.fbm1d(3, 3)
        else:
            near = rng.uniform(0.72, 0.95) + 0.025 * s.fbm1d(3, 4)
            if layout == "sea" and rng.random() < 0.3:
                near = np.full_like(near, 2.0)  # open water down to the bottom edge
        label = {"sea": i.sea, "lake": i.water_other, "river": i.river}[layout]
        s.water(near, shore, label)
        kind = "sand" if layout == "sea" or rng.random() < 0.25 else ground_kind
        if near.min() < 1:
            s.ground(near, kind)
        foreground = s.full_y >= near[None, :]
    else:
        foreground = np.broadcast_to(s.full_y >= shore_row + 0.05, (h, w))
        if rng.random() < 0.4:
            s.road(horizon + rng.uniform(0.0, 0.05))

    labels = s.full_labels
    if ground_kind == "grass" and season in ("spring", "summer") and rng.random() < 0.45:
        s.flowers(foreground & (labels == i.grass))
    if rng.random() < 0.45:
        s.bushes(foreground & np.isin(labels, (i.grass, i.sand, i.snow)))
    if rng.random() < 0.3:
        s.rocks(foreground & np.isin(labels, (i.grass, i.sand, i.snow)))

    meta = dict(s.style)
    meta.update(
        seed=int(seed), layout=layout, horizon=horizon, mountains=bool(has_mountains), shoreline=shore,
        water=None if shore is None else {"sea": "sea", "lake": "water-other", "river": "river"}[layout],
    )  # fmt: skip
    return Scene(s.finish(), labels, meta)
