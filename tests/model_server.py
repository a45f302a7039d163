"""A real HTTP server on 127.0.0.1 in the test process (http.server in a thread) for the model-download tests,
and tiny checkpoints in the official layouts to serve. No test reaches the internet.

Routes map a path to a `Route`: the bytes to serve and how to misbehave (drop the connection after N bytes on
the first request, answer slowly, 404, ignore Range, Google Drive's confirmation page first). Every request is
logged as (path with query, Range header)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Route:
    data: bytes = b""
    status: int = 200
    drop_after: int | None = None  # close the connection after this many body bytes (first request only)
    delay: float = 0.0  # seconds before answering
    ranges: bool = True  # honour Range requests
    drive_confirm: bool = False  # answer with Google Drive's "download anyway" page unless confirm= is given
    content_type: str = "application/octet-stream"
    throttle: float = 0.0  # seconds between 64 KiB blocks
    hits: int = 0


@dataclass
class Server:
    base: str
    routes: dict[str, Route]
    log: list[tuple[str, str | None]] = field(default_factory=list)

    def add(self, path: str, data: bytes = b"", **options) -> str:
        self.routes[path] = Route(data, **options)
        return self.base + path


def _handler(server_state: Server):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            parts = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(parts.query)
            server_state.log.append((self.path, self.headers.get("Range")))
            route = server_state.routes.get(parts.path)
            if route is None or route.status == 404:
                body = b"not found"
                self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            route.hits += 1
            if route.delay:
                time.sleep(route.delay)
            if route.drive_confirm and query.get("confirm", [""])[0] != "t":
                page = (f'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
                        f'<p>Google Drive can\'t scan this file for viruses.</p>'
                        f'<form id="download-form" action="{parts.path}" method="get">'
                        f'<input type="submit" value="Download anyway"/>'
                        f'<input type="hidden" name="id" value="{query.get("id", ["x"])[0]}">'
                        f'<input type="hidden" name="export" value="download">'
                        f'<input type="hidden" name="confirm" value="t">'
                        f'<input type="hidden" name="uuid" value="0d6c7e1a"></form></body></html>').encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            data, start = route.data, 0
            header = self.headers.get("Range")
            if header and route.ranges and header.startswith("bytes="):
                start = int(header[6:].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(route.status)
            body = data[start:]
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes" if route.ranges else "none")
            self.end_headers()
            if route.drop_after is not None and route.hits == 1:
                self.wfile.write(body[:route.drop_after])
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            for offset in range(0, len(body), 65536):
                self.wfile.write(body[offset:offset + 65536])
                if route.throttle:
                    self.wfile.flush()
                    time.sleep(route.throttle)

    return Handler


def start_server() -> tuple[Server, http.server.ThreadingHTTPServer]:
    state = Server("", {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return state, httpd


# ---- tiny checkpoints in the official layouts ----------------------------------------------------------------

def tiny_vqgan_state_dict(cin=3, cout=3, n_embed=16, seed=0) -> dict:
    """A taming VQModel state dict (official key layout) at tiny widths: 2 levels, 32 channels."""
    from tests.test_vqgan import official_vqgan_shapes, random_state_dict

    shapes = official_vqgan_shapes(ch=32, ch_mult=(1, 2), nrb=1, z=32, n_embed=n_embed, embed_dim=8, cin=cin,
                                   cout=cout, attn_levels=(1,))
    return random_state_dict(shapes, seed=seed)


def taming_checkpoint_bytes(sd: dict | None = None) -> bytes:
    """A Lightning .ckpt as taming saves it (state_dict with the VQGAN and its training-only loss.* keys)."""
    sd = dict(sd if sd is not None else tiny_vqgan_state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    buffer = io.BytesIO()
    torch.save({"state_dict": sd, "global_step": 10, "epoch": 1, "pytorch-lightning_version": "1.0.8"}, buffer)
    return buffer.getvalue()


def asset_bundle_zip(stem="landscape_1024", guiding="landscape_guiding", heads=2, yaml_heads=None,
                     folder="landscape/") -> bytes:
    """ASSET's landscape.zip layout at tiny widths: MODEL.yaml, MODEL.ckpt (first_stage_model, cond_stage_model
    with its colorize buffer, transformer, guiding_transformer) and GUIDING.ckpt."""
    from engine.models.asset import ASSET, ASSETConfig

    torch.manual_seed(0)
    cfg = ASSETConfig(vocab_size=16, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=heads,
                      decoder_attention_heads=heads, encoder_ffn_dim=32, decoder_ffn_dim=32)
    sga, guide = ASSET(cfg).state_dict(), ASSET(cfg).state_dict()
    image = tiny_vqgan_state_dict(n_embed=16, seed=1)
    seg = tiny_vqgan_state_dict(cin=182, cout=182, n_embed=16, seed=2)
    seg["colorize"] = torch.randn(3, 182, 1, 1)
    main = {**{f"first_stage_model.{k}": v for k, v in image.items()},
            **{f"cond_stage_model.{k}": v for k, v in seg.items()},
            **{f"transformer.{k}": v for k, v in sga.items()},
            **{f"guiding_transformer.{k}": v for k, v in guide.items()}}
    yaml_text = asset_yaml(yaml_heads or heads)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, obj in ((f"{stem}.ckpt", {"state_dict": main}),
                          (f"{guiding}.ckpt", {"state_dict": {f"transformer.{k}": v for k, v in guide.items()}})):
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            z.writestr(folder + name, buffer.getvalue())
        z.writestr(folder + f"{stem}.yaml", yaml_text)
    return out.getvalue()


def asset_yaml(heads: int, d_model: int = 32, vocab: int = 16, n_labels: int = 182) -> str:
    """The official yaml's structure (model.params.transformer_config.params, first/cond stage params)."""
    return f"""model:
  base_learning_rate: 4.5e-07
  target: asset.models.cond_transformer.Net2NetTransformer
  params:
    is_SGA: True
    transformer_config:
      target: asset.modules.transformer.asset.ASSET
      params:
        vocab_size: {vocab}
        d_model: {d_model}
        encoder_attention_heads: {heads}
        decoder_attention_heads: {heads}
        encoder_ffn_dim: 32
        decoder_ffn_dim: 32
        max_position_embeddings: 256
        encoder_layers: 1
        decoder_layers: 1
        PEG_list: ['E_all', 'D_0']
        PEG_ks: 5
        block_h: 16
        block_w: 4
    first_stage_config:
      target: asset.models.vqgan.VQModel
      params:
        embed_dim: 8
        n_embed: {vocab}
    cond_stage_config:
      target: asset.models.vqgan.VQSegmentationModel
      params:
        n_embed: 16
        n_labels: {n_labels}
"""


def write_catalogue(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"version": 1, "models": entries}))
    return path


def entry(name: str, engine: str, url: str, data: bytes | None = None, *, file_name: str, archive=None,
          import_file: str | None = None, options=None, size=True, sha=True, page=None) -> dict:
    """A catalogue entry for served `data` (its size and sha256 recorded unless told otherwise)."""
    return {"name": name, "engine": engine, "title": f"test {name}", "purpose": "tests", "paper": "none",
            "licence": "test licence",
            "files": [{"name": file_name, "url": url, "page": page or url,
                       "size": len(data) if (size is True and data is not None) else (size if size is not True
                                                                                     else None),
                       "sha256": hashlib.sha256(data).hexdigest() if (sha is True and data is not None) else
                       (sha if sha is not True else None), "archive": archive}],
            "import": {"file": import_file or file_name, "options": options or {}}}
