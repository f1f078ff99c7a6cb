"""Reader and writer of the .safetensors format (8-byte header length, JSON header, raw little-endian data), torch only."""
import json
import os
import struct

import numpy as np
import torch

# dtype name -> (torch dtype, numpy dtype used to read the raw bytes, bytes per element)
DTYPES = {
    "F64": (torch.float64, np.float64, 8), "F32": (torch.float32, np.float32, 4),
    "F16": (torch.float16, np.float16, 2), "BF16": (torch.bfloat16, np.int16, 2),
    "I64": (torch.int64, np.int64, 8), "I32": (torch.int32, np.int32, 4),
    "I16": (torch.int16, np.int16, 2), "I8": (torch.int8, np.int8, 1),
    "U8": (torch.uint8, np.uint8, 1), "BOOL": (torch.bool, np.bool_, 1),
}
NAMES = {v[0]: k for k, v in DTYPES.items()}
MAX_HEADER = 100 << 20


def read_header(path: str):
    """Returns (header dict without __metadata__, metadata dict, offset of the data section)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("%s: too short for a safetensors file" % path)
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise ValueError("%s: header length %d does not fit the file (%d bytes)" % (path, n, size))
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError("%s: header is not valid JSON: %s" % (path, e))
    if not isinstance(header, dict):
        raise ValueError("%s: header is not a JSON object" % path)
    meta = header.pop("__metadata__", {}) or {}
    data_len = size - 8 - n
    for name, info in header.items():
        try:
            dt, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError("%s: tensor %r has a malformed entry" % (path, name))
        if dt not in DTYPES:
            raise ValueError("%s: tensor %r has unsupported dtype %r" % (path, name, dt))
        count = int(np.prod(shape)) if shape else 1
        if not (0 <= b <= e <= data_len) or e - b != count * DTYPES[dt][2]:
            raise ValueError("%s: tensor %r has offsets [%d, %d) that do not match its shape %s or the file"
                             % (path, name, b, e, shape))
    return header, meta, 8 + n


def load(path: str, with_metadata: bool = False):
    """Loads every tensor (memory-mapped, copy on write). Returns {name: tensor} or (tensors, metadata)."""
    header, meta, base = read_header(path)
    mm = np.memmap(path, dtype=np.uint8, mode="c") if os.path.getsize(path) > base else None
    out = {}
    for name, info in header.items():
        tdt, ndt, _ = DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        arr = mm[base + b: base + e].view(ndt) if e > b else np.zeros(0, ndt)
        t = torch.from_numpy(arr)
        if tdt == torch.bfloat16:
            t = t.view(torch.bfloat16)
        out[name] = t.reshape(info["shape"])
    return (out, meta) if with_metadata else out


def save(tensors: dict, path: str, metadata: dict = None) -> None:
    """Writes tensors (contiguous copies, in key order) and string metadata to path."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        if t.dtype not in NAMES:
            raise ValueError("tensor %r has unsupported dtype %s" % (name, t.dtype))
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for raw in blobs:
            f.write(raw)
