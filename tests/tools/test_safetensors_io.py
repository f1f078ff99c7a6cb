"""Tests of tools/safetensors_io.py: round trips of every dtype and rejection of malformed files."""
import json
import struct

import pytest
import torch

import safetensors_io


def test_round_trip_dtypes(tmp_path):
    t = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 2).bfloat16(),
         "i64": torch.arange(7), "u8": torch.tensor([1, 2, 255], dtype=torch.uint8), "empty": torch.zeros(0, 3),
         "scalar": torch.tensor(3.5)}
    p = str(tmp_path / "a.safetensors")
    safetensors_io.save(t, p, {"k": "v"})
    back, meta = safetensors_io.load(p, with_metadata=True)
    assert meta == {"k": "v"}
    assert list(back) == list(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and back[k].shape == t[k].shape
        assert torch.equal(back[k], t[k])


def write_raw(path, header, data=b""):
    hb = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)


@pytest.mark.parametrize("header,data,msg", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "offsets"),
    ({"a": {"dtype": "Q8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "dtype"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "offsets"),
    ({"a": {"dtype": "F32"}}, b"", "malformed"),
    ([1, 2], b"", "object"),
])
def test_malformed_rejected(tmp_path, header, data, msg):
    p = str(tmp_path / "bad.safetensors")
    write_raw(p, header, data)
    with pytest.raises(ValueError, match=msg):
        safetensors_io.load(p)


def test_truncated_and_garbage(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="too short"):
        safetensors_io.load(str(p))
    p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match="header length"):
        safetensors_io.load(str(p))
    p.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(ValueError, match="JSON"):
        safetensors_io.load(str(p))
