"""The editor with a 24-MP photo: time to open it into the main window, peak memory, and the cost of one brush
dab of radius 100 px including the synchronous repaint of the dirty rectangle.

Everything runs in a fresh child process (offscreen Qt), so the peak RSS is the editor's own and not that of
benchmarks that ran before in the same process."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.bench._child import run_child

DABS = 50
OPENS = 3
RADIUS = 100


def rss() -> int:
    """This process's resident set now, bytes (Linux; 0 elsewhere)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def child(photo: str) -> dict:
    import gc

    steps = {"python": rss()}
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow

    steps["imports (Qt, the app, numpy, OpenCV, torch)"] = rss()
    app = QApplication.instance() or QApplication([])
    window = MainWindow()
    window.resize(1400, 900)
    window.show()
    app.processEvents()
    steps["empty main window"] = rss()
    window.ask_save_changes = lambda: "discard"
    opens = []
    for index in range(OPENS):
        start = time.perf_counter()
        assert window.open_path(photo)
        window.canvas.viewport().repaint()  # the first full paint is part of opening
        opens.append(time.perf_counter() - start)
        gc.collect()
        steps[f"24-MP document open ({index + 1}. time)"] = rss()

    class Press:
        def button(self):
            return Qt.MouseButton.LeftButton

        def modifiers(self):
            return Qt.KeyboardModifier.NoModifier

    doc, canvas = window.document, window.canvas
    window.select_tool("brush")
    window.settings.set_radius(RADIUS)
    doc.set_active_label(doc.label_set.id_of("sea"))
    tool, event = window.tool, Press()
    results = {"open_s": opens}
    for zoom_name in ("fit", "100 %"):
        if zoom_name == "fit":
            canvas.fit()
        else:
            canvas.set_zoom(1.0, QPointF(3000, 2000))
        app.processEvents()
        visible = canvas.mapToScene(canvas.viewport().rect()).boundingRect() & QRectF(0, 0, *doc.size)
        x0, y0 = visible.left() + RADIUS, visible.top() + RADIUS
        span_x = max(1.0, visible.width() - 2 * RADIUS)
        times = []
        tool.press(QPointF(x0, y0), event)
        for i in range(DABS):
            # a zig-zag stroke across the visible part: every dab lands on new pixels
            point = QPointF(x0 + (i * 37.0) % span_x, y0 + (i % 7) * 23.0)
            start = time.perf_counter()
            tool.move(point, event)
            dirty = QRectF(point.x() - RADIUS - 40, point.y() - RADIUS - 40, 2 * RADIUS + 80, 2 * RADIUS + 80)
            canvas.viewport().repaint(canvas.mapFromScene(dirty).boundingRect())
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        tool.release(QPointF(x0, y0), event)
        results[f"commit_s {zoom_name}"] = time.perf_counter() - start
        results[f"dab_s {zoom_name}"] = times
    steps[f"after {2 * DABS} dabs (2 strokes, undo patches)"] = rss()
    document = window.document
    results["document_bytes"] = {
        "photo (decoded RGB)": document.photo.rgb.nbytes,
        "image (the result; the photo itself until the first Apply)":
            0 if document.image is document.photo.rgb else document.image.nbytes,
        "labels + original labels (uint16)": document.labels.nbytes + document.original_labels.nbytes,
        "canvas overlay (RGBA)": window.canvas.overlay.nbytes}
    from engine import smart

    start = time.perf_counter()
    smart.Superpixels(doc.image)
    results["superpixels_s"] = time.perf_counter() - start
    start = time.perf_counter()
    smart.GrabCut(doc.image, 2000, 1000, 3500, 2000).result()
    results["grabcut_s"] = time.perf_counter() - start
    from tests.bench._child import peak_rss_bytes

    results["peak_rss"] = peak_rss_bytes()
    steps["after superpixels and GrabCut"] = rss()
    results["rss_steps"] = steps
    results["undo_bytes"] = sum(doc.undo_stack.command(i).nbytes() for i in range(doc.undo_stack.count()))
    window.document.undo_stack.setClean()
    window.close()
    return results


def run() -> list[dict]:
    from tests.bench.bench_io import make_photo  # the same camera-like 24-MP JPEG as the I/O benchmark

    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as folder:
        photo = make_photo(Path(folder))
        output = run_child([sys.executable, "-m", "tests.bench.bench_editor", str(photo)], cwd=root,
                           env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    result = json.loads(output.strip().splitlines()[-1])
    rows = [{"name": "open 24-MP JPEG into the editor window", "value": round(statistics.median(result["open_s"]), 3),
             "unit": "s", "target": "< 2",
             "note": f"6000x4000: decode, empty label map, overlay buffer, first full repaint; median of {OPENS}"},
            {"name": "peak RSS, editor with a 24-MP photo", "value": round(result["peak_rss"] / 2**20), "unit": "MiB",
             "target": "< 1536", "note": "fresh process after opening it 3 times and 100 dabs of radius 100"}]
    # where the RSS goes: the process at each step, and the document's own arrays
    previous = 0
    for step, value in result["rss_steps"].items():
        rows.append({"name": f"RSS: {step}", "value": round(value / 2 ** 20), "unit": "MiB", "target": None,
                     "note": f"{(value - previous) / 2 ** 20:+.0f} MiB"})
        previous = value
    for part, nbytes in result["document_bytes"].items():
        rows.append({"name": f"24-MP document: {part}", "value": round(nbytes / 2 ** 20), "unit": "MiB",
                     "target": None, "note": "held while the document is open"})
    for zoom in ("fit", "100 %"):
        dabs = result[f"dab_s {zoom}"]
        rows.append({"name": f"brush dab r=100 + repaint, zoom {zoom}", "value": round(statistics.median(dabs) * 1e3, 2),
                     "unit": "ms", "target": "< 16",
                     "note": f"6000x4000 labels; stamp, recolour dirty rect, synchronous viewport repaint; median of "
                             f"{DABS}, max {max(dabs) * 1e3:.1f} ms"})
        rows.append({"name": f"end of a {DABS}-dab stroke (undo command), zoom {zoom}",
                     "value": round(result[f"commit_s {zoom}"] * 1e3, 1), "unit": "ms", "target": None,
                     "note": "before/after patches of the changed rectangle only"})
    rows.append({"name": "superpixels of a 24-MP photo", "value": round(result["superpixels_s"], 2), "unit": "s",
                 "target": None, "note": "SLIC on a 768-px copy, upscaled; once per photo, in a worker thread"})
    rows.append({"name": "GrabCut fill of a 1500x1000 rectangle", "value": round(result["grabcut_s"], 2), "unit": "s",
                 "target": None, "note": "padded crop scaled to 400 px, 4 iterations, mask scaled back"})
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 2:
        print(json.dumps(child(sys.argv[1])))
    else:
        for row in run():
            print(f"{row['name']:48s} {row['value']:>10} {row['unit']:4s} target {row['target']}  ({row['note']})")
