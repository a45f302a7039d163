"""Photo-textured landscapes: the procedural scenes (engine.data.landscapes) with each class region filled with
real photographic texture of that class, same label map and layout pixel for pixel.

Sources (`SOURCES`): terrain and cloud-layer textures of the Debian package `flightgear-data-base` (FlightGear's
photo-derived ground textures: grass, forest canopy, rock, snow, sand, water; sky cloud layers), GPL-2+. They are
never committed: `sgraffito data textures` (`install_textures`) copies them from an installed package, or fetches
the .deb with `apt-get download` and unpacks only these files, into the cache folder (`texture_dir()`: the
checkout's gitignored `data/textures/`, else `<user data>/textures`; $SGRAFFITO_TEXTURES overrides), downscaled
to at most 1024 px, with `manifest.json` (file -> class -> package, version -> licence) and the package's
copyright file. Never add Debian's `opencv-doc` or `mate-backgrounds` images or the repo's `assets/samples/`:
they are held out for evaluation (`install_textures` refuses them).

Rendering (`texture_scene`): the procedural image supplies what the photos cannot know, the scene's light (time of
day, season, weather, the sun side's shading) and its aerial haze: per class region its low-pass colour
(a normalised convolution inside the region, so classes never bleed into each other). The photo supplies the
rest: its detail (the texture divided by its own low-pass, multiplied in) and part of its colour (relit to the
scene's brightness). Textures are mapped in perspective: ground classes on the ground plane (a texel covers
more of the ground towards the horizon, so texture gets smaller there, with mip-mapped filtering), clouds on a
sky plane, mountains and tree lines in screen space at their distance's scale. Water is redone last: the
textured scene above the shoreline mirrored about it, rippled by the water photo's own waves, darkened towards
the viewer (Fresnel) over the water photo's body colour, so it still reflects what stands above it. A seed gives
the same textures and offsets at every size.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.data.landscapes import Scene, generate_scene, ids, water_ids
from engine.errors import InputError

PACKAGE = "flightgear-data-base"
PACKAGE_ROOT = "usr/share/games/flightgear/Textures"
LICENSE = "GPL-2+"
HELD_OUT = ("opencv-doc", "mate-backgrounds", "assets/samples")
MAX_SIDE = 1024

# texture class -> files under PACKAGE_ROOT
SOURCES: dict[str, tuple[str, ...]] = {
    "grass": ("Terrain/grass_hires.png", "Terrain/iceland_grass.png",
              "Terrain/grass_green_hires.png", "Terrain/herbtundra.png"),
    "grass-autumn": ("Terrain/grass_green_hires-autumn.png", "Terrain/iceland_grass-autumn.png",
                     "Terrain/grass_dry2.png"),
    "forest": ("Terrain/forest1a.png", "Terrain/deciduous-hires.png", "Terrain/mixedforest-hires.png",
               "Terrain/coniferous_forest.png", "Terrain/evergreen.png"),
    "forest-autumn": ("Terrain/mixedforest-hires-autumn.png", "Terrain/deciduous-hires-autumn.png"),
    "shrub": ("Terrain/shrub1.png", "Terrain/shrub.png", "Terrain/forest1b.png"),
    "rock": ("Terrain/rock.png", "Terrain/rock_alt.png", "Terrain/rock_grain01.png", "Terrain/rock_dark.png",
             "Terrain/dirtrock.png"),
    "snow": ("Terrain/snow1.png", "Terrain/snow3.png", "Terrain/snow2.png", "Terrain/glacier1.png"),
    "sand": ("Terrain/sand_hires.png", "Terrain/dunes.png", "Terrain/sand6_hires.png", "Terrain/sand_hires_ochre.png"),
    "water": ("Terrain/water.png", "Terrain/water-lake.png", "Terrain/water-inland.png"),
    "clouds": ("Sky/broken.png", "Sky/scattered.png", "Sky/cirrus.png", "Sky/overcast.png"),
    "road": ("Terrain/asphalt.png", "Terrain/gravel.png", "Terrain/gravel_brown.png"),
}


def texture_dir() -> Path:
    """The texture cache: $SGRAFFITO_TEXTURES, else the checkout's gitignored data/textures/, else the user's."""
    if env := os.environ.get("SGRAFFITO_TEXTURES"):
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        return checkout / "data" / "textures"
    from engine.paths import user_data_dir

    return user_data_dir() / "textures"


# -- the cache ---------------------------------------------------------------------------------------------------


def _package_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
        out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=60)
        for line in out.stdout.splitlines():
            if line.strip().startswith("Candidate:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown"


def _unpack_from_deb(package: str, members: list[str], into: Path, log=print) -> Path:
    """`apt-get download` the package and unpack only `members` (paths without the leading /) into `into`
    (engine.data.photos does the same for its packages; the .deb here is about 1.3 GB)."""
    from engine.data.photos import _unpack_from_deb as unpack

    unpack(package, members, into, log)
    return into


def install_textures(cache: Path | None = None, source_root: Path | None = None, log=print) -> Path:
    """Copy the SOURCES files (downscaled to MAX_SIDE, as PNG) and the package's copyright file into the cache and
    write manifest.json; returns the manifest's path. Files come from `source_root` (a folder that holds
    PACKAGE_ROOT), else from the installed package, else from the downloaded .deb."""
    cache = Path(cache or texture_dir())
    members = [f"{PACKAGE_ROOT}/{f}" for files in SOURCES.values() for f in files]
    copyright_member = f"usr/share/doc/{PACKAGE}/copyright"
    for bad in HELD_OUT:
        if any(bad in m for m in members):
            raise InputError(f"{bad} is held out for evaluation and must not be a texture source")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(source_root) if source_root else Path("/")
        if not all((root / m).is_file() for m in members):
            if source_root:
                missing = [m for m in members if not (root / m).is_file()]
                raise InputError(f"{source_root}: {len(missing)} texture files missing (e.g. {missing[0]})")
            root = _unpack_from_deb(PACKAGE, members + [copyright_member], Path(tmp), log)
        version = _package_version(PACKAGE)
        cache.mkdir(parents=True, exist_ok=True)
        entries = []
        for cls, files in SOURCES.items():
            for f in files:
                src = root / PACKAGE_ROOT / f
                with Image.open(src) as image:
                    image.load()
                    mode = "RGBA" if cls == "clouds" else "RGB"
                    image = image.convert("LA" if image.mode in ("L", "LA") and cls == "clouds" else image.mode)
                    image = image.convert(mode)
                    scale = MAX_SIDE / max(image.size)
                    if scale < 1:
                        image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), Image.LANCZOS)
                    name = f"{cls}/{Path(f).stem}.png"
                    (cache / cls).mkdir(exist_ok=True)
                    image.save(cache / name)
                entries.append({"file": name, "class": cls, "package": PACKAGE, "version": version,
                                "source": f"/{PACKAGE_ROOT}/{f}", "license": LICENSE})
        copyright_file = root / copyright_member
        if copyright_file.is_file():
            shutil.copyfile(copyright_file, cache / f"{PACKAGE}.copyright")
        manifest = cache / "manifest.json"
        manifest.write_text(json.dumps({"package": PACKAGE, "version": version, "license": LICENSE,
                                        "copyright_file": f"{PACKAGE}.copyright", "textures": entries}, indent=1) + "\n")
    log(f"{len(entries)} textures from {PACKAGE} {version} ({LICENSE}) cached in {cache}")
    return manifest


def textures_available(cache: Path | None = None) -> bool:
    return (Path(cache or texture_dir()) / "manifest.json").is_file()


# -- the library -------------------------------------------------------------------------------------------------


@dataclass
class Texture:
    name: str
    levels: list[np.ndarray]  # mip pyramid of float32 (h, w, C) in [0, 1]; C = 3, or 4 for clouds (alpha last)


class TextureLibrary:
    """The cached textures by class, loaded lazily; `pick(cls, rng)` draws one."""

    def __init__(self, cache: Path | None = None, textures: dict[str, list[Texture]] | None = None):
        self.cache = Path(cache or texture_dir())
        self._textures: dict[str, list[Texture]] = dict(textures or {})
        if textures is None:
            manifest = self.cache / "manifest.json"
            if not manifest.is_file():
                raise InputError(f"no photo textures in {self.cache}: run `sgraffito data textures` first")
            self.entries = json.loads(manifest.read_text())["textures"]
        else:
            self.entries = [{"file": t.name, "class": c} for c, ts in textures.items() for t in ts]

    @staticmethod
    def pyramid(image: np.ndarray, levels: int = 7) -> list[np.ndarray]:
        out = [image.astype(np.float32)]
        while len(out) < levels and min(out[-1].shape[:2]) >= 16:
            out.append(cv2.pyrDown(out[-1]))
        return out

    def textures(self, cls: str) -> list[Texture]:
        if cls not in self._textures:
            loaded = []
            for entry in self.entries:
                if entry["class"] == cls:
                    array = np.asarray(Image.open(self.cache / entry["file"])).astype(np.float32) / 255.0
                    loaded.append(Texture(entry["file"], self.pyramid(array)))
            self._textures[cls] = loaded
        return self._textures[cls]

    def pick(self, cls: str, rng: np.random.Generator) -> Texture | None:
        options = self.textures(cls)
        return options[int(rng.integers(len(options)))] if options else None


@functools.lru_cache(maxsize=2)
def default_library(cache: str | None = None) -> TextureLibrary:
    return TextureLibrary(Path(cache) if cache else None)


# -- sampling ----------------------------------------------------------------------------------------------------


def _sample(texture: Texture, u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Texture at texel coordinates (u, v) of level 0 (wrapping), filtered by `footprint` (level-0 texels per
    pixel): a trilinear blend of the two nearest mip levels."""
    level = np.clip(np.log2(np.maximum(footprint, 1e-6)), 0, len(texture.levels) - 1.001)
    lo = np.floor(level).astype(np.int32)
    out = None
    for k in np.unique(lo):
        sel = lo == k
        for j, weight in ((k, 1 - (level - k)), (k + 1, level - k)):
            tex = texture.levels[j]
            h, w = tex.shape[:2]
            # sampling only where needed: remap on the whole grid is cheaper than gathering at these sizes
            mx = np.mod(u / 2**j, w).astype(np.float32)
            my = np.mod(v / 2**j, h).astype(np.float32)
            value = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
            if value.ndim == 2:
                value = value[..., None]
            contribution = value * (weight * sel)[..., None]
            out = contribution if out is None else out + contribution
    return out


def _region_lowpass(image: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of `image` using only the pixels in `mask` (normalised convolution)."""
    m = mask.astype(np.float32)
    num = cv2.GaussianBlur(image * m[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(m, (0, 0), sigma)[..., None]
    fallback = image[mask].mean(axis=0) if mask.any() else np.zeros(image.shape[-1], np.float32)
    return np.where(den > 1e-4, num / np.maximum(den, 1e-4), fallback).astype(np.float32)


def _luma(image: np.ndarray) -> np.ndarray:
    return image[..., :3] @ np.float32([0.299, 0.587, 0.114])


# class -> (texture class, mapping, tiles across the image width at the bottom / per image height, detail
# strength, share of the photo's own colour)
_STYLE = {
    "grass": ("grass", "ground", 0.9, 1.0, 0.45),
    "flower": ("grass", "ground", 0.9, 0.6, -1.0),  # -1: keep the procedural blooms, add grass detail
    "hill": ("grass", "screen", 5.0, 0.8, 0.35),
    "tree": ("forest", "screen", 3.0, 1.0, 0.4),
    "bush": ("shrub", "ground", 1.2, 1.0, 0.35),
    "mountain": ("rock", "screen", 1.6, 1.0, 0.3),
    "rock": ("rock", "ground", 1.5, 1.0, 0.3),
    "snow": ("snow", "ground", 0.8, 1.0, 0.25),
    "sand": ("sand", "ground", 1.0, 1.0, 0.5),
    "road": ("road", "ground", 0.5, 0.8, 0.3),
    "clouds": ("clouds", "sky", 0.6, 0.8, 0.0),
}


def _texture_class(name: str, season: str, snowy: bool) -> str:
    cls = _STYLE[name][0]
    if season == "autumn" and cls in ("grass", "forest"):
        return cls + "-autumn"
    if name in ("hill", "bush") and snowy:
        return "snow"
    return cls


def _coordinates(mapping: str, h: int, w: int, horizon: float, tiles: float, size: int, rng) -> tuple:
    """(u, v, footprint) in level-0 texels of a `size`-texel texture for a whole (h, w) image."""
    y = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    xn = ((np.arange(w, dtype=np.float32) + 0.5) - w / 2)[None, :] / h  # image-height units from the centre
    ou, ov = rng.uniform(0, size, 2)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if mapping in ("ground", "sky"):
        below = (y - horizon) if mapping == "ground" else (horizon - y)
        dy = np.maximum(below, 0.015)
        bottom = max(1 - horizon, 0.2) if mapping == "ground" else max(horizon, 0.2)
        # texels per camera-height unit: `tiles` textures across the image width at the bottom (top) row
        k = tiles * size * bottom / (w / h)
        u = xn * k / dy + ou
        v = k / dy + ov
        if mapping == "sky":
            v = v * 0.6  # cloud decks are seen flattened
        footprint = np.sqrt((k / (dy * h)) * (k / (dy * dy * h)))
        # beyond the plane's vanishing line (snow on the peaks, clouds below the horizon) a texture stands
        # upright: screen space at a mountain face's scale
        upright = below < 0.015
        steep = 0.4 * size / h  # a mountain face's scale (1.6 textures per image height)
        u = np.where(upright, xx * steep + ou, u)
        v = np.where(upright, yy * steep + ov, v)
        footprint = np.where(upright, steep, footprint)
        footprint = np.broadcast_to(footprint, (h, w))
        u, v = np.broadcast_to(u, (h, w)), np.broadcast_to(v, (h, w))
    else:
        per_pixel = tiles * size / h / 4  # `tiles` per image height, a quarter of that for the coarse default
        u = np.broadcast_to(xx * per_pixel + ou, (h, w))
        v = np.broadcast_to(yy * per_pixel + ov, (h, w))
        footprint = np.full((h, w), per_pixel, np.float32)
    return u, v, footprint


def texture_scene(scene: Scene, library: TextureLibrary | None = None) -> Scene:
    """`scene` with photographic textures (see the module docstring); labels and meta kept, meta gains
    "textured": True and "textures" {class: file}."""
    library = library or default_library(str(texture_dir()))
    labels = scene.labels
    h, w = labels.shape
    meta = scene.meta
    rng = np.random.default_rng([int(meta.get("seed", 0)), 0x7E47])
    horizon = float(meta.get("horizon", 0.5))
    season = meta.get("season", "summer")
    procedural = scene.image.astype(np.float32) / 255.0
    out = procedural.copy()
    names = {getattr(ids(), n.replace("-", "_")): n for n in _STYLE}
    sigma = max(1.5, 0.012 * max(h, w))
    used = {}
    snowy_hills = bool(season == "winter")
    for label in np.unique(labels):
        name = names.get(int(label))
        if name is None:
            continue
        mask = labels == label
        cls = _texture_class(name, season, snowy_hills)
        texture = library.pick(cls, rng)
        if texture is None:
            continue
        _, mapping, tiles, strength, colour_share = _STYLE[name]
        size = texture.levels[0].shape[1]
        u, v, footprint = _coordinates(mapping, h, w, horizon, tiles, size, rng)
        rows = np.flatnonzero(mask.any(axis=1))
        r0, r1 = rows[0], rows[-1] + 1
        sample = _sample(texture, u[r0:r1], v[r0:r1], footprint[r0:r1])
        band_mask = mask[r0:r1]
        # ground: a wider low-pass drops the procedural grass streaks; faces keep their lit and shaded flanks
        sigma_c = sigma * (2.5 if mapping == "ground" and colour_share >= 0 else 1.0)
        p_low = _region_lowpass(procedural[r0:r1], band_mask, sigma_c)
        if cls == "clouds":  # cloud layers: luminance detail where the layer is dense
            alpha = sample[..., 3:4]
            rgb = sample[..., :3] * alpha + (1 - alpha) * 0.7
        else:
            rgb = sample[..., :3]
        s_low = _region_lowpass(rgb, band_mask, sigma_c)
        ratio = np.clip((rgb + 0.02) / (s_low + 0.02), 0.15, 3.0) ** strength
        # the photo's colour relit to the scene's brightness, mixed with the scene's (light, season, haze)
        relit = s_low * (_luma(p_low) / np.maximum(_luma(s_low), 1e-3))[..., None]
        if season == "winter":  # a snowy world: the scene's whites and greys, not the summer photo's colours
            colour_share *= 0.3
        if colour_share < 0:
            base = procedural[r0:r1]
        else:
            base = p_low * (1 - colour_share) + relit * colour_share
        band = np.clip(base * ratio, 0, 1.2)
        np.copyto(out[r0:r1], band, where=band_mask[..., None])
        used[name] = texture.name
    water = np.isin(labels, water_ids())
    if water.any() and meta.get("shoreline") is not None:
        texture = library.pick("water", rng)
        if texture is not None:
            out = _reflect(out, water, int(meta["shoreline"]), horizon, texture, rng)
            used["water"] = texture.name
    out = cv2.GaussianBlur(out, (0, 0), 0.35 * max(h, w) / 256)
    out = out + np.random.default_rng([int(meta.get("seed", 0)), h, w, 0x7E47]).normal(0, 0.008, out.shape)
    image = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    return replace(scene, image=image, meta={**meta, "textured": True, "textures": used})


def _reflect(image: np.ndarray, water: np.ndarray, shore: int, horizon: float, texture: Texture, rng) -> np.ndarray:
    """Water: the textured image above the shoreline mirrored about it, rippled by the water photo, over its body."""
    h, w = water.shape
    size = texture.levels[0].shape[1]
    u, v, footprint = _coordinates("ground", h, w, horizon, 0.8, size, rng)
    sample = _sample(texture, u, v, footprint)[..., :3]
    lum = _luma(sample)
    detail = (lum - cv2.GaussianBlur(lum, (0, 0), max(1.0, 0.01 * w))) / (lum.std() + 1e-3)
    ys = np.arange(h, dtype=np.float32)[:, None]
    below = np.clip((ys - shore) / max(1, h - shore), 0, 1)
    calm = rng.uniform(0.3, 1.0)
    ripple_x = calm * (0.003 + 0.02 * below) * w * detail
    ripple_y = calm * (0.001 + 0.006 * below) * h * cv2.GaussianBlur(detail, (0, 0), 1.0)
    map_y = np.clip((2 * shore - 1 - ys) + ripple_y, 0, max(shore - 1, 0)).astype(np.float32)
    map_x = (np.arange(w, dtype=np.float32)[None, :] + ripple_x).astype(np.float32)
    reflection = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    reflection = cv2.GaussianBlur(reflection, (0, 0), sigmaX=max(0.5, 0.004 * w), sigmaY=0.5)
    sky = image[: max(shore, 1)]
    light = float(_luma(sky).mean()) if sky.size else 0.6
    body = cv2.GaussianBlur(sample, (0, 0), max(1.0, 0.01 * w)) * np.float32(0.55 + 0.6 * light)
    fresnel = (0.84 - 0.4 * below)[..., None]
    colour = fresnel * reflection * np.float32(0.9) + (1 - fresnel) * body
    colour = colour * (1 + 0.08 * calm * np.clip(detail, -3, 3))[..., None]
    out = image.copy()
    np.copyto(out, colour.astype(np.float32), where=water[..., None])
    return out


def generate_textured_scene(seed: int, size: int | tuple[int, int] = 256, library: TextureLibrary | None = None) -> Scene:
    """The procedural scene of `seed` with photo textures: the same label map, another image."""
    return texture_scene(generate_scene(seed, size), library)
