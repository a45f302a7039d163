"""Read TensorFlow 2 checkpoints (the V2 tensor bundle: `PREFIX.index` + `PREFIX.data-0000S-of-0000N`) without
TensorFlow, to import official ColTran weights.

`PREFIX.index` is a LevelDB-format table (sorted keys in prefix-compressed blocks, a block index and a 48-byte
footer); the empty key holds a BundleHeaderProto, every other key a BundleEntryProto saying where the tensor's raw
little-endian bytes lie in which data shard. Only the few protobuf fields we need are decoded.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from engine.errors import CheckpointError
from engine.safe_io import open_regular, read_bytes

MAX_RANK = 32
MAX_TENSORS = 1_000_000

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked crc32c of block and type (4 bytes)
CRC_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DT_STRING, DT_BFLOAT16 = 7, 14


def masked_crc32c(data: bytes) -> int:
    """LevelDB / TensorFlow store crc32c values masked, so a CRC of data that embeds CRCs stays well-behaved."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


def read_varint(buffer: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(buffer):
            raise CheckpointError("truncated varint in the checkpoint index")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift >= 64:
            raise CheckpointError("a varint of the checkpoint index is longer than 64 bits")


def protobuf_fields(buffer: bytes):
    """Yield (field number, wire type, value) of a serialized message; length-delimited values are bytes."""
    position = 0
    while position < len(buffer):
        tag, position = read_varint(buffer, position)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, position = read_varint(buffer, position)
        elif wire == 1:
            if position + 8 > len(buffer):
                raise CheckpointError("truncated fixed64 field in the checkpoint index")
            value = struct.unpack_from("<Q", buffer, position)[0]
            position += 8
        elif wire == 2:
            length, position = read_varint(buffer, position)
            if position + length > len(buffer):
                raise CheckpointError("a length-delimited field runs past its message in the checkpoint index")
            value = buffer[position: position + length]
            position += length
        elif wire == 5:
            if position + 4 > len(buffer):
                raise CheckpointError("truncated fixed32 field in the checkpoint index")
            value = struct.unpack_from("<I", buffer, position)[0]
            position += 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire} in the checkpoint index")
        yield field, wire, value


@dataclass(frozen=True)
class BundleEntry:
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool


def parse_entry(value: bytes) -> BundleEntry:
    dtype, shape, shard_id, offset, size, crc, sliced = 0, [], 0, 0, 0, None, False
    for field, wire, item in protobuf_fields(value):
        if field == 1:
            dtype = item
        elif field == 2:  # TensorShapeProto: repeated Dim dim = 2 { int64 size = 1 }
            if wire != 2:
                raise CheckpointError("a tensor shape of the checkpoint index is not a message")
            for dim_field, dim_wire, dim in protobuf_fields(item):
                if dim_field == 2:
                    if dim_wire != 2:
                        raise CheckpointError("a tensor dimension of the checkpoint index is not a message")
                    size_value = next((v for f, _, v in protobuf_fields(dim) if f == 1), 0)
                    if not isinstance(size_value, int) or size_value >= 1 << 63:  # int64: -1 means unknown
                        raise CheckpointError(f"a tensor dimension of the checkpoint index is {size_value!r:.20}")
                    shape.append(size_value)
                    if len(shape) > MAX_RANK:
                        raise CheckpointError(f"a tensor of the checkpoint index has more than {MAX_RANK} dimensions")
        elif field == 3:
            shard_id = item
        elif field == 4:
            offset = item
        elif field == 5:
            size = item
        elif field == 6:
            crc = item
        elif field == 7:
            sliced = True
    return BundleEntry(dtype, tuple(shape), shard_id, offset, size, crc, sliced)


def _block(index_bytes: bytes, handle: bytes, name: str) -> bytes:
    if not isinstance(handle, (bytes, bytearray)):
        raise CheckpointError(f"{name}: a block handle of the index is malformed")
    offset, position = read_varint(handle, 0)
    size, _ = read_varint(handle, position)
    end = offset + size + BLOCK_TRAILER_SIZE
    if end > len(index_bytes):
        raise CheckpointError(f"{name}: the index is truncated (a block ends at byte {end} of {len(index_bytes)})")
    contents, compression = index_bytes[offset: offset + size], index_bytes[offset + size]
    stored_crc = struct.unpack_from("<I", index_bytes, offset + size + 1)[0]
    if masked_crc32c(contents + bytes([compression])) != stored_crc:
        raise CheckpointError(f"{name}: a block of the index fails its checksum (corrupt file)")
    if compression != 0:
        raise CheckpointError(f"{name}: compressed index blocks (type {compression}) are not supported")
    return contents


def _block_entries(block: bytes):
    """Yield (key, value) of a table block: prefix-compressed keys, then restart offsets and their count."""
    if len(block) < 4:
        raise CheckpointError("a block of the checkpoint index is shorter than its trailer")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"a block of the checkpoint index claims {num_restarts} restart points, more than fit")
    position, key = 0, b""
    while position < limit:
        shared, position = read_varint(block, position)
        unshared, position = read_varint(block, position)
        value_length, position = read_varint(block, position)
        if shared > len(key) or position + unshared + value_length > limit:
            raise CheckpointError("an entry of the checkpoint index runs past its block")
        key = key[:shared] + block[position: position + unshared]
        position += unshared
        yield key, block[position: position + value_length]
        position += value_length


def read_index(prefix: str | Path) -> tuple[int, dict[str, BundleEntry]]:
    """(number of data shards, entry per tensor key). Every malformed byte is a CheckpointError naming the file."""
    index_path = Path(f"{prefix}.index")
    index_bytes = read_bytes(index_path, "TF checkpoint index", CheckpointError)
    try:
        return _parse_index(index_bytes, index_path)
    except CheckpointError as error:
        message = str(error)
        raise CheckpointError(message if str(index_path) in message else f"{index_path}: {message}") from None
    except (struct.error, UnicodeDecodeError, ValueError, IndexError, TypeError, OverflowError) as error:
        raise CheckpointError(f"{index_path} is damaged ({type(error).__name__}: {error})") from None


def _parse_index(index_bytes: bytes, index_path: Path) -> tuple[int, dict[str, BundleEntry]]:
    if len(index_bytes) < FOOTER_SIZE or struct.unpack_from("<Q", index_bytes, len(index_bytes) - 8)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{index_path} is not a TensorFlow checkpoint index (bad magic number or truncated)")
    footer = index_bytes[-FOOTER_SIZE:]
    _, position = read_varint(footer, 0)  # metaindex handle: offset
    _, position = read_varint(footer, position)  # metaindex handle: size
    index_handle = footer[position:]
    entries = {}
    for _, data_handle in _block_entries(_block(index_bytes, index_handle, str(index_path))):
        for key, value in _block_entries(_block(index_bytes, data_handle, str(index_path))):
            try:
                entries[key.decode("utf-8")] = value
            except UnicodeDecodeError:
                raise CheckpointError(f"{index_path}: a tensor name is not UTF-8 ({key[:40]!r})") from None
            if len(entries) > MAX_TENSORS:
                raise CheckpointError(f"{index_path}: more than {MAX_TENSORS} tensors")
    header = entries.pop("", None)
    if header is None:
        raise CheckpointError(f"{index_path} has no bundle header")
    fields = {f: v for f, _, v in protobuf_fields(header)}
    if fields.get(2, 0) != 0:  # endianness: 0 = little
        raise CheckpointError(f"{index_path}: big-endian checkpoints are not supported")
    num_shards = fields.get(1, 1)
    if not isinstance(num_shards, int) or not 1 <= num_shards <= 99999:
        raise CheckpointError(f"{index_path}: the bundle header claims {num_shards!r:.20} data shards")
    return num_shards, {key: parse_entry(value) for key, value in entries.items()}


def read_bundle(prefix: str | Path, keep=lambda key: True) -> dict[str, np.ndarray]:
    """Every numeric tensor of the checkpoint whose key `keep` accepts, checked against its crc32c. Each tensor
    is read from its shard by offset (a shard is never read whole); shards are regular files only."""
    prefix = str(prefix)
    num_shards, index = read_index(prefix)
    shards: dict[int, tuple] = {}
    tensors = {}
    try:
        for key, entry in sorted(index.items()):
            if not keep(key) or entry.dtype in (DT_STRING,) or entry.sliced:
                continue
            if entry.dtype == DT_BFLOAT16:
                raise CheckpointError(f"{prefix}: tensor {key!r} is bfloat16, which this importer does not read")
            if entry.dtype not in DTYPES:
                raise CheckpointError(f"{prefix}: tensor {key!r} has unsupported dtype {entry.dtype}")
            if any(n < 0 for n in entry.shape):
                raise CheckpointError(f"{prefix}: tensor {key!r} has an unknown or negative shape {entry.shape}")
            dtype = np.dtype(DTYPES[entry.dtype]).newbyteorder("<")
            count = 1
            for n in entry.shape:
                count *= n
            if count * dtype.itemsize != entry.size:
                raise CheckpointError(f"{prefix}: tensor {key!r} has {entry.size} bytes for shape {entry.shape}")
            if not 0 <= entry.shard_id < num_shards:
                raise CheckpointError(f"{prefix}: tensor {key!r} is in shard {entry.shard_id} of {num_shards}")
            if entry.shard_id not in shards:
                shard_path = Path(f"{prefix}.data-{entry.shard_id:05d}-of-{num_shards:05d}")
                handle = open_regular(shard_path, "TF checkpoint shard", CheckpointError)
                shards[entry.shard_id] = (handle, os.fstat(handle.fileno()).st_size)
            handle, shard_size = shards[entry.shard_id]
            if entry.offset + entry.size > shard_size:
                raise CheckpointError(f"{prefix}: the data file is truncated (tensor {key!r})")
            handle.seek(entry.offset)
            raw = handle.read(entry.size)
            if len(raw) != entry.size:
                raise CheckpointError(f"{prefix}: the data file is truncated (tensor {key!r})")
            if entry.crc32c is not None and masked_crc32c(raw) != entry.crc32c:
                raise CheckpointError(f"{prefix}: tensor {key!r} fails its checksum (corrupt data file)")
            tensors[key] = np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))
    except OSError as error:
        raise CheckpointError(f"{prefix}: cannot read the data file ({error.strerror or error})") from None
    except (ValueError, TypeError, OverflowError, MemoryError) as error:
        raise CheckpointError(f"{prefix}: cannot read tensor data ({type(error).__name__}: {error})") from None
    finally:
        for handle, _ in shards.values():
            handle.close()
    return tensors
