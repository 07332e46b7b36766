"""fastattn.hf.read_safetensors: NumPy's reading of the safetensors format, against files written
by hand from the format's definition (and by the safetensors package when it is installed)."""

import json
import struct

import numpy as np
import pytest

from fastattn.hf import read_safetensors
from helpers import BF16


def write_safetensors(path, tensors, codes, metadata=None, pad_header=0):
    """The format: u64 little-endian header length, JSON header, then the tensors' bytes."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        data = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": codes[name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode() + b" " * pad_header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_reads_every_dtype(tmp_path, rng):
    tensors = {
        "a.weight": rng.standard_normal((3, 5)).astype("<f4"),
        "b": rng.standard_normal(7),
        "half": rng.standard_normal((2, 2)).astype("<f2"),
        "ids": rng.integers(-9, 9, (4,)).astype("<i8"),
        "flags": rng.random(5) < 0.5,
        "bytes": rng.integers(0, 255, (2, 3)).astype(np.uint8),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    codes = {"a.weight": "F32", "b": "F64", "half": "F16", "ids": "I64", "flags": "BOOL",
             "bytes": "U8", "scalar": "F32", "empty": "F32"}
    if BF16 is not None:
        tensors["bf"] = rng.standard_normal(6).astype(BF16)
        codes["bf"] = "BF16"
    path = tmp_path / "m.safetensors"
    write_safetensors(path, tensors, codes, metadata={"format": "pt"}, pad_header=5)
    got = read_safetensors(path)
    assert sorted(got) == sorted(tensors)
    for name, a in tensors.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape, name
        assert np.array_equal(got[name], a), name
        assert not got[name].flags.writeable


def test_bad_files(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"abc")
    with pytest.raises(ValueError, match="shorter than 8 bytes"):
        read_safetensors(p)
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(ValueError, match="header length 1000 exceeds the file"):
        read_safetensors(p)
    a = np.arange(6, dtype=np.float32)
    write_safetensors(p, {"x": a}, {"x": "F32"})
    data = bytearray(p.read_bytes())
    p.write_bytes(bytes(data[:-4]))  # the last element cut off
    with pytest.raises(ValueError, match="'x' .*does not fit"):
        read_safetensors(p)
    write_safetensors(p, {"x": a}, {"x": "C64"})
    with pytest.raises(TypeError, match="'x' has dtype C64"):
        read_safetensors(p)


def test_matches_safetensors_package(tmp_path, rng):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed")
    tensors = {"w": rng.standard_normal((4, 9)).astype(np.float32),
               "i": np.arange(5, dtype=np.int32), "h": rng.standard_normal(3).astype(np.float16)}
    path = tmp_path / "p.safetensors"
    st.save_file(tensors, str(path))
    got = read_safetensors(path)
    for name, a in tensors.items():
        assert np.array_equal(got[name], a) and got[name].dtype == a.dtype


def _raw_file(path, header, data=b"\0" * 8):
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


@pytest.mark.parametrize("header,words", [
    (b"", "not UTF-8 JSON"),
    (b"{nope", "not UTF-8 JSON"),
    (b"\xff\xfe{}", "not UTF-8 JSON"),
    (b"[" * 100000 + b"]" * 100000, "not UTF-8 JSON"),
    ([1, 2], "must be a JSON object"),
    ({"a": 5}, "needs dtype, shape and data_offsets"),
    ({"a": {"shape": [2], "data_offsets": [0, 8]}}, "needs dtype, shape and data_offsets"),
    ({"a": _entry(dtype=["F32"])}, "not a dtype name"),
    ({"a": _entry(shape=[2.7])}, "non-negative ints"),
    ({"a": _entry(shape="12")}, "non-negative ints"),
    ({"a": _entry(shape=[True, 2])}, "non-negative ints"),
    ({"a": _entry(shape=[-1, -2])}, "non-negative ints"),
    ({"a": _entry(offsets=[0.5, 8])}, "non-negative ints"),
    ({"a": _entry(offsets=[0, 4, 8])}, "non-negative ints"),
    ({"a": _entry(shape=[2 ** 64, 0], offsets=[0, 0]), "b": _entry()}, "NumPy cannot make"),
    ({"a": _entry(shape=(1,), offsets=(0, 4)), "b": _entry(offsets=(4, 12))}, "does not fit"),
    ({"a": _entry(), "b": _entry(dtype="I32")}, "overlaps another"),
    ({"a": _entry(shape=(1,), offsets=(4, 8))}, "leaves a gap"),
    ({"a": _entry(shape=(1,), offsets=(0, 4))}, "after the last tensor"),
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
     b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "duplicate names"),
])
def test_malformed_headers_raise_value_error(tmp_path, header, words):
    # Each gave an unrelated exception (AttributeError, KeyError, OverflowError...) or silently
    # wrong data (a float shape truncated, a string shape iterated, overlapping tensors aliased).
    path = _raw_file(tmp_path / "bad.safetensors", header)
    with pytest.raises(ValueError, match=words):
        read_safetensors(path)
