"""Write TensorFlow V2 tensor bundles (PREFIX.index + PREFIX.data-00000-of-00001) in the official format, so
the tests can exercise the TF-free importer on files they make themselves. Checked once against TensorFlow 2.21
(tf.train.load_checkpoint reads what this writes)."""

from __future__ import annotations

import struct

import numpy as np

from engine.importers.tfbundle import TABLE_MAGIC, masked_crc32c

DTYPE_CODES = {np.dtype(np.float32): 1, np.dtype(np.int64): 9, np.dtype(np.int32): 3}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A table block with every entry a restart point (no prefix sharing): valid, if not the most compact."""
    body, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(body))
        body += varint(0) + varint(len(key)) + varint(len(value)) + key + value
    restarts = restarts or [0]
    return bytes(body) + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))


def write_bundle(prefix: str, tensors: dict[str, np.ndarray], strings: dict[str, bytes] | None = None) -> None:
    data = bytearray()
    entries = [(b"", field_varint(1, 1) + field_bytes(3, field_varint(1, 1)))]  # 1 shard, little endian, version
    for key in sorted(set(tensors) | set(strings or {})):
        if key in tensors:
            array = np.array(tensors[key], order="C")  # (ascontiguousarray would make scalars 1-d)
            raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
            shape = b"".join(field_bytes(2, field_varint(1, d) if d else b"") for d in array.shape)
            entry = (field_varint(1, DTYPE_CODES[array.dtype]) + field_bytes(2, shape) + field_varint(4, len(data))
                     + field_varint(5, len(raw)) + varint(6 << 3 | 5) + struct.pack("<I", masked_crc32c(raw)))
        else:  # a string scalar such as _CHECKPOINTABLE_OBJECT_GRAPH; its encoding is irrelevant to readers here
            raw = strings[key]
            entry = field_varint(1, 7) + field_bytes(2, b"") + field_varint(4, len(data)) + field_varint(5, len(raw))
        entries.append((key.encode(), entry))
        data += raw
    index = bytearray()

    def append_block(contents: bytes) -> bytes:
        handle = varint(len(index)) + varint(len(contents))
        index.extend(contents + b"\x00" + struct.pack("<I", masked_crc32c(contents + b"\x00")))
        return handle

    data_handle = append_block(block(entries))
    meta_handle = append_block(block([]))
    index_handle = append_block(block([(entries[-1][0], data_handle)]))
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    with open(f"{prefix}.index", "wb") as f:
        f.write(bytes(index) + footer)
    with open(f"{prefix}.data-00000-of-00001", "wb") as f:
        f.write(bytes(data))
