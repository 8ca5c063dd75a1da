"""A GGUF file's tensors without parsing its metadata values.

Loading weights needs each tensor's name, type and bytes, and the file's architecture.
``gguf.GGUFReader`` also turns every metadata value into numpy views, one per element of
each array: for a model with a 49k-token vocabulary (its tokens, token types and merges) that
is seconds of a start-up (3.9-5.6 s for SmolLM2 on a 2-core host), spent on values the
weights never need (config and tokenizer come from the sidecar). Here the metadata is only
walked over (string lengths read, fixed-size values skipped); the tensor table after it is
read as the reader reads it, and each tensor's ``data`` is the same array the reader gives
(values for float / integer types, bytes for quantized ones), a view of one read-only map
of the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MAGIC = b"GGUF"
# GGUF value types (gguf.GGUFValueType): fixed sizes; 8 = string, 9 = array
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    data: np.ndarray


@dataclass(frozen=True)
class GGUFTensors:
    architecture: str | None
    tensors: list[GGUFTensor]


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def string(self) -> bytes:
        (length,) = self.unpack("<Q")
        end = self.pos + length
        if end > len(self.buf):
            raise ValueError("a string runs past the end of the file")
        value = bytes(self.buf[self.pos:end])
        self.pos = end
        return value

    def skip_value(self, value_type: int) -> None:
        if value_type == _STRING:
            (length,) = self.unpack("<Q")
            self.pos += length
        elif value_type == _ARRAY:
            item_type, count = self.unpack("<IQ")
            if item_type in _FIXED_SIZES:
                self.pos += count * _FIXED_SIZES[item_type]
            else:
                for _ in range(count):
                    self.skip_value(item_type)
        elif value_type in _FIXED_SIZES:
            self.pos += _FIXED_SIZES[value_type]
        else:
            raise ValueError(f"unknown GGUF value type {value_type}")
        if self.pos > len(self.buf):
            raise ValueError("a metadata value runs past the end of the file")


def read_gguf_tensors(path: str | Path) -> GGUFTensors:
    """The architecture and tensors of a GGUF file (``ValueError`` / ``struct.error`` where it
    is not a readable one). A file of the other byte order goes through ``GGUFReader``."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    data = np.memmap(path, mode="r")
    cur = _Cursor(memoryview(data))
    if bytes(cur.buf[:4]) != _MAGIC:
        raise ValueError("GGUF magic invalid")
    cur.pos = 4
    (version,) = cur.unpack("<I")
    if version & 0xFFFF == 0:  # written big-endian
        return _from_reader(path)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported")
    tensor_count, kv_count = cur.unpack("<QQ")
    architecture, alignment = None, _DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = cur.string()
        (value_type,) = cur.unpack("<I")
        if key == b"general.architecture" and value_type == _STRING:
            architecture = cur.string().decode()
        elif key == b"general.alignment":
            if value_type != _UINT32:
                raise ValueError("Bad type for general.alignment field")
            (alignment,) = cur.unpack("<I")
            if alignment == 0 or alignment & (alignment - 1):
                raise ValueError("Invalid alignment: must be a non-zero power of two")
        else:
            cur.skip_value(value_type)
    infos = []
    for _ in range(tensor_count):
        name = cur.string().decode()
        (n_dims,) = cur.unpack("<I")
        dims = cur.unpack(f"<{n_dims}Q")
        raw_type, offset = cur.unpack("<IQ")
        infos.append((name, dims, GGMLQuantizationType(raw_type), offset))
    start = cur.pos + (-cur.pos % alignment)
    tensors, names = [], set()
    for name, dims, ggml_type, offset in infos:
        if name in names:
            raise ValueError(f"Found duplicated tensor with name {name}")
        names.add(name)
        n_elems = int(np.prod(dims))
        np_dims = tuple(reversed(dims))
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        item_type = _ITEM_TYPES.get(ggml_type.name)
        if item_type is None:  # quantized: the bytes, as the reader gives them
            item_type, count = np.uint8, n_elems * type_size // block_size
            np_dims = quant_shape_to_byte_shape(np_dims, ggml_type)
        else:
            count = n_elems
        begin = start + offset
        end = begin + np.dtype(item_type).itemsize * count
        if end > len(data):
            raise ValueError(f"tensor {name!r} runs past the end of the file")
        tensors.append(GGUFTensor(name, ggml_type, data[begin:end].view(item_type).reshape(np_dims)))
    return GGUFTensors(architecture, tensors)


_ITEM_TYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16,
               "I32": np.int32, "I64": np.int64}


def _from_reader(path: str | Path) -> GGUFTensors:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    architecture = None if field is None else bytes(field.parts[field.data[0]]).decode()
    return GGUFTensors(architecture, [GGUFTensor(t.name, t.tensor_type, t.data) for t in reader.tensors])
