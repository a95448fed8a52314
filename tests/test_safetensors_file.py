"""qpack's own safetensors reader/writer, checked against the safetensors package."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from qpack.safetensors_file import read_safetensors, write_safetensors

st = pytest.importorskip("safetensors.numpy")


def _arrays():
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=(3, 5)).astype(np.float32),
            "b": rng.integers(-5, 5, size=7).astype(np.int64),
            "c": np.zeros((0, 4), np.float16), "d": np.array(True),
            "e": np.arange(6, dtype=np.uint8)}


def test_reads_what_safetensors_writes(tmp_path):
    arrays = _arrays()
    path = tmp_path / "x.safetensors"
    st.save_file(arrays, str(path), metadata={"k": "v"})
    got, meta = read_safetensors(path)
    assert meta == {"k": "v"}
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)


def test_safetensors_reads_what_qpack_writes(tmp_path):
    arrays = _arrays()
    path = tmp_path / "y.safetensors"
    write_safetensors(path, arrays, {"m": "1"})
    got = st.load_file(str(path))
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)


def test_bfloat16(tmp_path):
    ml = pytest.importorskip("ml_dtypes")
    arr = np.array([[1.5, -2.25], [3.0, 0.0]], dtype=ml.bfloat16)
    path = tmp_path / "bf.safetensors"
    write_safetensors(path, {"w": arr})
    got, _ = read_safetensors(path)
    assert got["w"].dtype == arr.dtype
    np.testing.assert_array_equal(got["w"].astype(np.float32), arr.astype(np.float32))


@pytest.mark.parametrize("payload", [
    b"", b"\x01\x00", struct.pack("<Q", 10**12) + b"{}",
    struct.pack("<Q", 2) + b"[]",
    struct.pack("<Q", 4) + b"{zz}",
    struct.pack("<Q", 51) + b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,99]}}',
    struct.pack("<Q", 51) + b'{"a":{"dtype":"X32","shape":[2],"data_offsets":[0,8]}}' + b"\0" * 8,
    struct.pack("<Q", 52) + b'{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}' + b"\0" * 8,
])
def test_damaged_files(tmp_path, payload):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(ValueError):
        read_safetensors(path)
