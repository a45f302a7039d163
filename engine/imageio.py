"""Reading photos and label maps: every user-supplied image enters the engine through this module.

Photos become (H, W, 3) uint8 sRGB arrays with EXIF orientation applied and ICC profiles converted, while the
original file bytes are kept unchanged for the project file. Label maps become (H, W) uint16 id arrays.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from engine.errors import InputError, SgraffitoError
from engine.labels import LabelSet
from engine.safe_io import Budget, read_bytes

# Pillow's own bomb check is a process-wide setting that raises (or only warns) at a fixed size; ours runs on the
# header of every file we open, with a per-call limit and a message that names the file.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 200_000_000
MIN_SIDE = 16  # smaller than this is an icon or a broken file, not a photo anyone edits semantically
PHOTO_FORMATS = {"JPEG", "PNG", "TIFF", "WEBP", "BMP", "MPO"}  # MPO: phone JPEGs with an embedded preview
# 95th percentile of the chroma (CIELAB a*b* units) left after removing one tint (see detect_grayscale): measured on
# noisy sepia-toned JPEGs of the skimage photos ~2, on the colour originals 17-49.
GRAY_CHROMA_SPREAD = 6.0
MAX_TINT_HUE_SPREAD = 30.0  # degrees between the tints of different lightness levels


@dataclass(eq=False)
class Photo:
    rgb: np.ndarray  # (H, W, 3) uint8 sRGB, orientation applied, read-only: copy it to make a result image
    data: bytes = field(repr=False)  # the file's bytes, unchanged
    name: str  # file name without folder, e.g. "IMG_0042.jpg"
    format: str  # Pillow format name: JPEG, PNG, TIFF, WEBP, BMP
    is_grayscale: bool  # gray, or a single tint such as sepia: colorize mode applies
    bit_depth: int  # bits per channel in the file (8, 16 or 32)
    icc_converted: bool = False  # the file carried a non-sRGB profile that was converted
    orientation: int = 1  # the EXIF orientation tag that was applied (1 = none)
    floating: bool = False  # the file holds floating-point samples (a float TIFF)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) after orientation, as Qt and Pillow count sizes."""
        return self.rgb.shape[1], self.rgb.shape[0]


def _megapixels(pixels: int) -> str:
    value = pixels / 1e6
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
          (b"BM", "BMP"), (b"GIF8", "GIF"))


def _magic_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def _damage_detail(data: bytes, fmt: str) -> str:
    """Why Pillow's plugin for `fmt` refuses the header (Image.open only says "cannot identify")."""
    from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin

    plugin = {"PNG": PngImagePlugin.PngImageFile, "JPEG": JpegImagePlugin.JpegImageFile,
              "TIFF": TiffImagePlugin.TiffImageFile, "BMP": BmpImagePlugin.BmpImageFile,
              "WebP": WebPImagePlugin.WebPImageFile}.get(fmt)
    if plugin is None:
        return "its header cannot be parsed"
    try:
        plugin(io.BytesIO(data))
    except Exception as error:  # noqa: BLE001 - only its message is used
        return str(error) or type(error).__name__
    return "its header cannot be parsed"


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Parse only the header and refuse bombs before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    except UnidentifiedImageError:
        fmt = _magic_format(data)
        if fmt in ("PNG", "JPEG", "TIFF", "WebP", "BMP"):
            raise InputError(f"{name} is a damaged {fmt} file: {_damage_detail(data, fmt)}") from None
        raise InputError(f"{name} is not an image in a format Sgraffito reads (JPEG, PNG, TIFF, WebP, BMP)") from None
    except MemoryError:
        raise InputError(f"{name}: not enough memory to read its header") from None
    except Exception as error:  # noqa: BLE001 - Pillow's plugins raise many types on malformed headers
        raise InputError(f"{name} cannot be read: {error or type(error).__name__}") from None
    if width * height > max_pixels:
        raise InputError(
            f"{name} claims {width}x{height} pixels ({_megapixels(width * height)} MP), "
            f"more than the {_megapixels(max_pixels)} MP limit"
        )
    if min(width, height) < MIN_SIDE:
        raise InputError(f"{name} is only {width}x{height} pixels; Sgraffito needs at least {MIN_SIDE} on each side")
    return image


def _decode(image: Image.Image, name: str) -> None:
    try:
        image.load()
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode it") from None
    except Exception as error:  # noqa: BLE001 - OSError, SyntaxError, struct.error, IndexError... from plugins
        # Pillow says "image file is truncated (12 bytes not processed)" or "broken data stream": keep its detail
        raise InputError(f"{name} is damaged or truncated and cannot be decoded: "
                         f"{error or type(error).__name__}") from None


def _charge(budget: Budget | None, image: Image.Image, name: str) -> None:
    if budget is not None:
        budget.charge(image.size[0] * image.size[1], name)


def open_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
               budget: Budget | None = None) -> Image.Image:
    """Any image the user gave us (a PNG inside a project, say): header checks first (the size against
    max_pixels and against the pixels left in `budget`, shared by the images of one file), then a full decode."""
    image = _open(data, name, max_pixels)
    _charge(budget, image, name)
    _decode(image, name)
    return image


def _read(path: str | Path, kind: str = "image") -> tuple[bytes, str]:
    """The file's bytes (a regular file within the size cap of its kind: engine.safe_io) and its name."""
    path = Path(path)
    return read_bytes(path, kind), path.name


def _bit_depth(image: Image.Image, data: bytes) -> int:
    if image.mode in ("I", "F"):
        return 32
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return 16
    if image.format == "PNG" and len(data) > 24:
        return max(8, data[24])  # IHDR bit depth; 1/2/4-bit palettes count as 8
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, (8,))
        return int(bits[0] if isinstance(bits, tuple) else bits)
    return 8


def _srgb_transform(image: Image.Image, name: str):
    """The transform from the embedded ICC profile to sRGB, or None: no profile, sRGB already, or unusable."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "CMYK", "L"):
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError):
        return None  # an unreadable profile must not make the photo unreadable
    description = (ImageCms.getProfileDescription(source) or "").strip().lower()
    if image.mode == "RGB" and description.startswith("srgb"):
        return None
    try:
        return ImageCms.buildTransform(source, _SRGB, image.mode, "RGB", ImageCms.Intent.PERCEPTUAL)
    except ImageCms.PyCMSError as error:
        warnings.warn(f"{name}: ICC profile ignored ({error})", stacklevel=4)
        return None


def _jpeg_complete(data: bytes) -> bool:
    """True when the JPEG's scan data reaches its end-of-image marker. Walks the header segments (an EXIF
    thumbnail holds an EOI of its own) to the first scan; inside scans 0xFF is always escaped, so FF D9 there
    can only be the real EOI."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker == 0xDA:
            return data.find(b"\xff\xd9", position) != -1
        position += 2 + int.from_bytes(data[position + 2: position + 4], "big")
    return False


_STDERR_LOCK = threading.Lock()
_JPEG_CORRUPT = ("corrupt jpeg data", "premature end", "bogus", "invalid", "unsupported marker")


def _jpeg_damage(data: bytes) -> str | None:
    """libjpeg's warning when the scan data is damaged, else None. libjpeg decodes a JPEG cut short (then given
    an end marker again) with grey blocks and only a warning on stderr, which Pillow and OpenCV both swallow:
    run its entropy decoder (a 1/8-scale gray decode, a fraction of a full decode) with stderr captured."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as capture:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            return None  # no stderr to capture (a windowed app on Windows): skip the check
        try:
            os.dup2(capture.fileno(), 2)
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read(4096).decode("utf-8", "replace").strip()
    if any(word in text.lower() for word in _JPEG_CORRUPT):
        return text.splitlines()[0]
    return None


def _decode_jpeg_fast(data: bytes) -> np.ndarray | None:
    """OpenCV decodes straight into one RGB array with EXIF orientation applied (the same pixels as Pillow +
    exif_transpose, tested), about 3x faster than Pillow's decode plus its copy into numpy."""
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    return rgb if rgb is not None and rgb.ndim == 3 else None


_SRGB = ImageCms.createProfile("sRGB")


def _rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's convert("L") clips 16-bit values at 255 instead of scaling them
        values = np.asarray(image).clip(0, 65535).astype(np.uint32)
        gray = ((values + 128) // 257).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise InputError(f"{image.info.get('_sgraffito_name', 'the image')} has {bad} NaN or infinite pixels "
                             f"of {values.size}; Sgraffito needs finite floating-point values")
        scale = 255.0 if values.max() <= 1.0 else 1.0  # float TIFFs come as 0..1 or 0..255
        gray = (values * scale).clip(0, 255).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas are shown on white, as a viewer would show them
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def detect_grayscale(rgb: np.ndarray) -> bool:
    """True for gray photos and single-tint ones (sepia): little chroma left once the tint of each lightness
    level is removed, and all tints of one hue. Runs on a ~256 px thumbnail: milliseconds on a 24-MP photo."""
    # Area averaging, not striding alone: it removes film grain and colour noise, which would pass for chroma.
    # Striding to ~1024 px first keeps it cheap on a 24-MP photo and still averages 16 pixels per sample.
    step = max(1, max(rgb.shape[:2]) // 1024)
    coarse = np.ascontiguousarray(rgb[::step, ::step])
    height, width = coarse.shape[:2]
    scale = min(1.0, 256 / max(height, width))
    small = cv2.resize(coarse, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32) / 255.0
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    lightness, ab = lab[:, 0], lab[:, 1:]
    # Remove one tint per lightness level (sepia is stronger in the midtones than in the shadows), then demand
    # both little chroma left over and tints of one hue: otherwise a purple top and a green bottom would pass.
    levels = np.minimum((lightness / 100.0 * 16).astype(np.int64), 15)
    residual = np.empty(len(ab), np.float32)
    hues, weights = [], []
    for level in np.unique(levels):
        members = levels == level
        tint = np.median(ab[members], axis=0)
        residual[members] = np.linalg.norm(ab[members] - tint, axis=1)
        if np.hypot(*tint) > GRAY_CHROMA_SPREAD and members.mean() > 0.01:
            hues.append(np.arctan2(tint[1], tint[0]))
            weights.append(members.sum())
    if hues:
        mean_hue = np.angle(np.average(np.exp(1j * np.array(hues)), weights=weights))
        if np.degrees(np.abs(np.angle(np.exp(1j * (np.array(hues) - mean_hue))))).max() > MAX_TINT_HUE_SPREAD:
            return False
    return float(np.percentile(residual, 95)) < GRAY_CHROMA_SPREAD


def load_photo_bytes(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     budget: Budget | None = None) -> Photo:
    image = _open(data, name, max_pixels)
    _charge(budget, image, name)
    image.info["_sgraffito_name"] = name
    if image.format not in PHOTO_FORMATS:
        raise InputError(f"{name} is a {image.format} file; Sgraffito opens JPEG, PNG, TIFF, WebP and BMP photos")
    fmt = "JPEG" if image.format == "MPO" else image.format
    if getattr(image, "n_frames", 1) > 1 and fmt != "JPEG":
        image.seek(0)  # multi-page TIFF / animated WebP: the first frame is the photo
    bit_depth = _bit_depth(image, data)
    source_mode = image.mode
    complete = fmt != "JPEG" or _jpeg_complete(data)
    if fmt == "JPEG":
        problem = _jpeg_damage(data)
        if problem:
            raise InputError(f"{name} is a damaged JPEG file: {problem}")
    fast = fmt == "JPEG" and source_mode in ("RGB", "L") and complete
    if not fast:
        _decode(image, name)  # PNG keeps EXIF and ICC chunks anywhere in the file: read them all first
    orientation = int(image.getexif().get(0x0112, 1) or 1)
    transform = _srgb_transform(image, name)
    rgb = None
    if fast and transform is None:
        rgb = _decode_jpeg_fast(data)
        if rgb is not None and rgb.shape[:2] != (image.size[::-1] if orientation < 5 else image.size):
            rgb = None  # OpenCV read something else (a second MPO frame?): let Pillow decide
    if rgb is None:
        _decode(image, name)
        if orientation != 1:  # exif_transpose copies even when there is nothing to do: 100 MB at 24 MP
            image = ImageOps.exif_transpose(image)
        if transform is not None:
            image = ImageCms.applyTransform(image, transform)
        rgb = _rgb_array(image)
    del image
    rgb.flags.writeable = False
    gray = source_mode in ("L", "LA", "I;16", "I;16B", "I;16L", "I", "F", "1") or detect_grayscale(rgb)
    return Photo(rgb, data, name, fmt, gray, bit_depth, transform is not None, orientation,
                 floating=source_mode == "F")


def load_photo(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    """Open a photo file. InputError names the file for missing, unknown, damaged, too large or too small ones."""
    data, name = _read(path)
    return load_photo_bytes(data, name, max_pixels=max_pixels)


def photo_from_rgb(rgb: np.ndarray, name: str = "untitled.png") -> Photo:
    """A Photo for pixels that never were a file (a generated scene, a label-map-only document): PNG bytes."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{name}: expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    rgb = rgb.copy()  # frozen below: the caller keeps a writable array of its own
    rgb.flags.writeable = False
    return Photo(rgb, buffer.getvalue(), name, "PNG", detect_grayscale(rgb), 8)


def new_label_map(size: tuple[int, int], label_set: LabelSet) -> np.ndarray:
    """An all-unlabeled (H, W) uint16 map for a photo of `size` = (width, height)."""
    width, height = size
    return np.full((height, width), label_set.unlabeled, np.uint16)


def _packed_colours(image: Image.Image) -> np.ndarray:
    """(H, W) uint32 r | g << 8 | b << 16. Pillow keeps RGB pixels in 4 bytes, so this is one memcpy and a
    mask, where numpy shifts of three channels cost ~5x more on a 24-MP map."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    packed = np.frombuffer(rgb.tobytes("raw", "RGBX"), "<u4").reshape(rgb.height, rgb.width)
    return packed & np.uint32(0xFFFFFF)


def _colour_key(color: tuple[int, int, int]) -> int:
    r, g, b = color
    return r | g << 8 | b << 16


def _colour_ids(packed: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Each pixel's colour -> the first label (lowest id) of that colour, -1 for colours of no label."""
    lut = np.full(1 << 24, -1, np.int32)
    for label in sorted(label_set.labels, key=lambda item: item.id, reverse=True):
        lut[_colour_key(label.color)] = label.id
    if label_set.unlabeled not in label_set.by_id and lut[0] < 0:
        lut[0] = label_set.unlabeled  # black is how colorize() draws unlabeled pixels
    return lut[packed]


def _refuse_unknown_colours(packed: np.ndarray, unknown: np.ndarray, label_set: LabelSet, name: str) -> None:
    colours, counts = np.unique(packed[unknown], return_counts=True)
    order = np.argsort(-counts)
    parts = []
    for index in order[:8]:
        key = int(colours[index])
        y, x = (int(v[0]) for v in np.nonzero(packed == key))
        r, g, b = key & 255, key >> 8 & 255, key >> 16
        parts.append(f"#{r:02x}{g:02x}{b:02x} ({int(counts[index])} px, e.g. at x={x}, y={y})")
    more = f" and {len(colours) - 8} more" if len(colours) > 8 else ""
    raise InputError(
        f"{name} has colours that are not in label set {label_set.name!r}: {', '.join(parts)}{more}; "
        "save the map as an id PNG or an indexed PNG, or pick the matching label set"
    )


def _palette_ids(image: Image.Image, label_set: LabelSet) -> np.ndarray:
    indices = np.asarray(image)
    used = np.flatnonzero(np.bincount(indices.ravel(), minlength=256))
    palette = np.zeros((256, 3), np.uint8)
    raw = np.array(image.getpalette("RGB") or [], np.uint8).reshape(-1, 3)[:256]
    palette[: len(raw)] = raw
    canonical = label_set.lookup_table()[:256]
    by_colour = {}
    for label in sorted(label_set.labels, key=lambda item: item.id, reverse=True):
        by_colour[label.color] = label.id
    by_colour.setdefault((0, 0, 0), label_set.unlabeled)
    if (palette[used] == canonical[used]).all() or not all(tuple(palette[i]) in by_colour for i in used):
        return indices.astype(np.uint16)  # indices are ids (our own exports, dataset files)
    # every colour in use is a label colour, but not at its id: an editor re-indexed a colour-coded map
    index_to_id = np.zeros(256, np.uint16)
    for index in used:
        index_to_id[index] = by_colour[tuple(int(c) for c in palette[index])]
    return index_to_id[indices]


def is_label_map_export(path: str | Path, label_set: LabelSet) -> bool:
    """True for an indexed PNG whose whole palette is `label_set`'s colour table: the maps Sgraffito and
    `sgraffito segment` write, which no camera or photo editor produces. Reads the first 64 kB (the header and
    palette) and decodes no pixel, so a bomb or a special file costs nothing here; anything that is not such a
    PNG is False and left to the photo reader and its errors."""
    path = Path(path)
    try:
        if not path.is_file():  # folders, pipes, devices: the photo reader names the problem
            return False
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
        if not head.startswith(b"\x89PNG\r\n\x1a\n"):
            return False
        with Image.open(io.BytesIO(head)) as image:
            if image.mode != "P":
                return False
            palette = np.array(image.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
    except Exception:  # noqa: BLE001 - a malformed header is the photo reader's to report
        return False
    table = label_set.lookup_table()[:256]
    return len(palette) == len(table) and bool((palette == table).all())


ID_MAP_MAX_LEVELS = 64  # a label map uses a few dozen classes at most; a grayscale photo, hundreds of gray levels
ID_MAP_MAX_PIXELS = 50_000_000  # larger single-channel PNGs are not decoded twice just to ask


def looks_like_id_map(path: str | Path, label_set: LabelSet) -> bool:
    """True for a single-channel PNG (8 or 16 bit) whose few levels are all ids of `label_set` (or its
    unlabeled id): the way COCO-Stuff, ADE20K and SPADE store label maps, which would otherwise open as a dark
    grayscale photo. A photo has far more than ID_MAP_MAX_LEVELS gray levels; a posterized picture may pass,
    so the caller asks the user rather than deciding. Anything unreadable is False and left to the photo
    reader and its errors."""
    path = Path(path)
    try:
        if not path.is_file():
            return False
        with path.open("rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
        data, name = _read(path, "label map")
        image = _open(data, name, ID_MAP_MAX_PIXELS)
        if image.mode not in ("L", "I;16", "I;16B", "I;16L"):
            return False
        _decode(image, name)
        values = np.asarray(image)
        if values.dtype != np.uint8:
            if values.min() < 0 or values.max() > 65535:
                return False
            values = values.astype(np.uint16)
        counts = np.bincount(values.ravel(), minlength=256 if values.dtype == np.uint8 else 65536)
    except (SgraffitoError, OSError, ValueError, MemoryError):
        return False
    levels = np.flatnonzero(counts)
    valid = np.zeros(counts.size, bool)
    valid[label_set.valid_ids[label_set.valid_ids < counts.size]] = True
    if not 2 <= levels.size <= ID_MAP_MAX_LEVELS or not valid[levels].all():
        return False  # one flat gray is a blank picture far more often than a map of a single class
    # a flat, foggy photo may have only a few dozen gray levels, but they are one unbroken run (100, 101, 102,
    # ...); the classes of a map are scattered ids, of which few happen to be neighbours
    neighbours = np.isin(levels + 1, levels).sum()
    return levels.size <= 4 or neighbours < levels.size / 2


def load_label_map(
    path: str | Path,
    label_set: LabelSet,
    size: tuple[int, int] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a label map as (H, W) uint16 ids of `label_set`.

    Accepted: an indexed-palette PNG (the indices are the ids, as in VOC/ADE20K files; but a colour-coded map
    that an editor saved as indexed, whose palette order means nothing, is read by its colours), an 8- or 16-bit
    single-channel id PNG, or a colour-coded RGB PNG whose colours are the set's canonical colours.
    `size` = (width, height) of the photo the map belongs to.
    """
    data, name = _read(path, "label map")
    image = _open(data, name, max_pixels)
    if size is not None and tuple(image.size) != tuple(size):
        raise InputError(
            f"{name} is {image.size[0]}x{image.size[1]} but the photo is {size[0]}x{size[1]}; "
            "a label map must have the photo's size"
        )
    _decode(image, name)
    if image.mode == "P":
        ids = _palette_ids(image, label_set)
    elif image.mode == "L":
        ids = np.asarray(image).astype(np.uint16)
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise InputError(f"{name} has ids outside 0..65535")
        ids = values.astype(np.uint16)
    elif image.mode in ("RGB", "RGBA"):
        packed = _packed_colours(image)
        ids = _colour_ids(packed, label_set)
        unknown = ids < 0
        if not unknown.any():
            ids = ids.astype(np.uint16)
        else:
            red = packed & np.uint32(0xFF)
            if not (packed == red * np.uint32(0x010101)).all():
                _refuse_unknown_colours(packed, unknown, label_set, name)
            ids = red.astype(np.uint16)  # an 8-bit id map that an image editor saved as gray RGB
    else:
        raise InputError(f"{name} is a {image.mode} image; a label map is an id PNG, an indexed PNG or an RGB PNG")
    check_label_ids(ids, label_set, name)
    return ids


def check_label_ids(ids: np.ndarray, label_set: LabelSet, source: str) -> None:
    """LabelSet.check_ids, with a linear-time pass first: np.unique sorts, ~1 s on a 24-MP map."""
    valid = np.zeros(65536, bool)
    valid[label_set.valid_ids] = True
    if not valid[ids].all():
        label_set.check_ids(ids, source)  # only now: it builds the message with counts and positions
