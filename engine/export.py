"""Exporting results and label maps, with the metadata a professional workflow expects.

Every export carries the parameters that made it (software, models, seeds...) as PNG text chunks or in an XMP
packet, and, once a generated candidate was applied, the IPTC digital source type that marks AI-assisted
composites (`compositeWithTrainedAlgorithmicMedia`), as Adobe, Google and C2PA tools read it.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from PIL import ExifTags, Image, ImageCms, PngImagePlugin, TiffImagePlugin, TiffTags

from engine import __version__
from engine.errors import InputError
from engine.imageio import Photo
from engine.labels import LabelSet
from engine.safe_io import atomic_write

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
COMPOSITE_WITH_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_BASIC = "http://ns.adobe.com/xap/1.0/"
SGRAFFITO_NS = "https://sgraffito.github.io/ns/1.0/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
SOFTWARE = f"Sgraffito {__version__}"
_TIFF_DESCRIPTIVE_TAGS = (ExifTags.Base.ImageDescription, ExifTags.Base.Make, ExifTags.Base.Model,
                          ExifTags.Base.DateTime, ExifTags.Base.Artist, ExifTags.Base.Copyright)
_SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def export_format(path: str | Path, fmt: str | None = None) -> str:
    if fmt:
        suffix = "." + fmt.lower()
        if suffix not in FORMATS:
            raise InputError(f"cannot export as {fmt}; choose PNG, JPEG, TIFF or WebP")
        return FORMATS[suffix]
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{Path(path).name}: unknown export format {suffix or '(no suffix)'!r}; "
                         "use .png, .jpg, .tif or .webp")
    return FORMATS[suffix]


def xmp_packet(metadata: dict, generated: bool) -> str:
    """An XMP packet: CreatorTool, the IPTC digital source type when generated, and our parameters as JSON."""
    attributes = [f"xmp:CreatorTool={quoteattr(str(metadata.get('Software', SOFTWARE)))}"]
    if generated:
        attributes.append(f"Iptc4xmpExt:DigitalSourceType={quoteattr(COMPOSITE_WITH_AI)}")
    parameters = escape(json.dumps(metadata, sort_keys=True, default=str))
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        f' <rdf:RDF xmlns:rdf="{RDF}">\n'
        f'  <rdf:Description rdf:about="" xmlns:xmp="{XMP_BASIC}" xmlns:Iptc4xmpExt="{IPTC_EXT}"'
        f' xmlns:sgraffito="{SGRAFFITO_NS}"\n   ' + "\n   ".join(attributes) + ">\n"
        f"   <sgraffito:Parameters>{parameters}</sgraffito:Parameters>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )


def export_image(
    path: str | Path,
    rgb: np.ndarray,
    *,
    fmt: str | None = None,
    quality: int = 95,
    metadata: dict | None = None,
    generated: bool = False,
    source: Photo | None = None,
) -> Path:
    """Write `rgb` ((H, W, 3) uint8 sRGB, the photo's native size and orientation) atomically.

    `metadata`: JSON-able values (models, seeds, strength...); "Software" is added. PNG gets one text chunk per
    key plus the XMP packet; JPEG, TIFF and WebP get the XMP packet and the EXIF/TIFF Software tag. All embed an
    sRGB ICC profile so colour-managed viewers show what the editor showed. With `source` (the photo the result
    was made from) its EXIF (camera, lens, capture time) is carried over, minus the GPS position (privacy) and
    the orientation tag (the pixels are already upright); TIFF keeps only the camera's IFD0 text tags.
    """
    path = Path(path)
    fmt = export_format(path, fmt)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"cannot export {path.name}: expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    if not 1 <= quality <= 100:
        raise InputError(f"export quality must be 1..100, got {quality}")
    metadata = {"Software": SOFTWARE, **(metadata or {})}
    if generated:
        metadata["DigitalSourceType"] = COMPOSITE_WITH_AI
    xmp = xmp_packet(metadata, generated)
    image = Image.fromarray(rgb)
    options: dict = {"icc_profile": _SRGB_ICC}
    exif = _source_exif(source)
    exif[0x0131] = metadata["Software"]
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in metadata.items():
            info.add_itxt(key, value if isinstance(value, str) else json.dumps(value, default=str))
        info.add_itxt("XML:com.adobe.xmp", xmp)
        # zlib level 1: the 24-MP bench photo in ~6 s instead of ~24 s at Pillow's default 6, and no larger
        # (photo noise does not deflate; the extra effort only pays on flat graphics)
        options.update(pnginfo=info, compress_level=1, exif=exif)
    elif fmt == "JPEG":
        # full-resolution chroma at high quality: 4:2:0 bleeds colour across the sharp edges where a generated
        # region meets the photo
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2, optimize=True, xmp=xmp.encode(),
                       exif=exif)
    elif fmt == "WEBP":
        # quality 100 means "keep every pixel": WebP's lossless mode, which lossy quality 100 is not
        options.update(quality=quality, lossless=quality == 100, method=4, xmp=xmp.encode(), exif=exif)
    else:
        tags = TiffImagePlugin.ImageFileDirectory_v2()
        # Pillow's TIFF writer takes either tiffinfo or exif and writes no EXIF sub-IFD: the XMP packet needs
        # tiffinfo, so the camera's descriptive IFD0 tags are copied into it and capture details are lost
        for tag in _TIFF_DESCRIPTIVE_TAGS:
            if tag in exif:
                tags[tag] = exif[tag]
        tags[305] = metadata["Software"]
        tags[700] = xmp.encode()
        tags.tagtype[700] = TiffTags.BYTE
        options.update(tiffinfo=tags, compression="tiff_adobe_deflate")
    with atomic_write(path) as handle:
        image.save(handle, format=fmt, **options)
    return path


def _source_exif(source: Photo | None) -> Image.Exif:
    if source is None:
        return Image.Exif()
    try:
        with Image.open(io.BytesIO(source.data)) as original:
            exif = original.getexif()
            exif.get_ifd(ExifTags.IFD.Exif)  # loaded sub-IFDs are written back; unloaded ones are dropped
    except (OSError, SyntaxError, ValueError):
        return Image.Exif()  # the photo opened, so this is only unreadable metadata: export without it
    for tag in (ExifTags.Base.Orientation, ExifTags.IFD.GPSInfo):
        if tag in exif:
            del exif[tag]
    return exif


def export_label_map(path: str | Path, labels: np.ndarray, label_set: LabelSet) -> Path:
    """An indexed PNG whose indices are the ids and whose palette is the set's colours, so it opens coloured in
    any viewer and reads back as ids (here and in dataset tools). PNG palettes hold 256 entries: a map with ids
    above 255 is written as a 16-bit grayscale id PNG instead, without colours."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"cannot export {path.name}: a label map is (H, W), got {labels.shape}")
    if labels.max(initial=0) < 256:
        image = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
        image.putpalette(label_set.lookup_table()[:256].tobytes())
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    info.add_text("LabelSet", label_set.name)
    with atomic_write(path) as handle:
        image.save(handle, format="PNG", pnginfo=info, optimize=False)
    return path


def history_models(history) -> list[str]:
    """The models that made an image's applied candidates, in order of first use (the "Models" metadata entry):
    each history entry's model, or "<engine> (default model)" for entries saved before models were named."""
    names: list[str] = []
    for entry in history or []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model") or (f"{entry['backend']} (default model)" if entry.get("backend") else None)
        if name and name not in names:
            names.append(name)
    return names


def read_export_metadata(path: str | Path) -> dict:
    """What a viewer finds in an exported file: format, size, PNG text, XMP fields and our parameters."""
    with Image.open(path) as image:
        found = {"format": image.format, "size": image.size, "mode": image.mode,
                 "text": dict(getattr(image, "text", {}) or {}), "software": None, "xmp": None,
                 "digital_source_type": None, "creator_tool": None, "parameters": None,
                 "icc_profile": bool(image.info.get("icc_profile"))}
        xmp = image.info.get("xmp") or found["text"].get("XML:com.adobe.xmp")
        exif = image.getexif()
        found["software"] = exif.get(0x0131) or found["text"].get("Software")
        if image.format == "TIFF":
            found["software"] = image.tag_v2.get(305) or found["software"]
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", errors="replace")
    if xmp:
        found["xmp"] = xmp
        root = ElementTree.fromstring(xmp[xmp.index("<x:xmpmeta"): xmp.index("</x:xmpmeta>") + len("</x:xmpmeta>")])
        for description in root.iter(f"{{{RDF}}}Description"):
            found["digital_source_type"] = description.get(f"{{{IPTC_EXT}}}DigitalSourceType")
            found["creator_tool"] = description.get(f"{{{XMP_BASIC}}}CreatorTool")
            parameters = description.find(f"{{{SGRAFFITO_NS}}}Parameters")
            if parameters is not None and parameters.text:
                found["parameters"] = json.loads(parameters.text)
    return found
