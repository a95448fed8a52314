"""compress(..., out=path) writes tensors as they are encoded; executor= runs the encodings
in worker processes or on a Dask cluster. Output is the same bytes in every case."""

from __future__ import annotations

import json
import os
import tracemalloc
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context

import numpy as np
import pytest
from model_cases import small_model

import qpack
from qpack import format as qformat
from qpack.executors import local_workers
from qpack.safetensors_file import write_safetensors
from qpack.stored_tensor import StoredTensor


def _checkpoint(tmp_path, n_layers=4, rows=96, cols=160, dtype=np.float32, name="m"):
    rng = np.random.default_rng(7)
    arrays = {}
    for i in range(n_layers):
        arrays[f"layers.{i}.weight"] = rng.standard_normal((rows, cols)).astype(dtype)
        arrays[f"layers.{i}.bias"] = rng.standard_normal(rows).astype(dtype)
    path = tmp_path / f"{name}.safetensors"
    write_safetensors(path, arrays, {"format": "pt"})
    return path, arrays


def _leftovers(folder) -> list[str]:
    return [p for p in os.listdir(folder) if p.startswith(qformat.TEMP_PREFIX)]


@pytest.mark.filterwarnings("ignore:tensor .* per-channel codebooks take")
@pytest.mark.parametrize("kw", [dict(bits=4, prune=0.5), dict(bits=3, method="linear",
                                                               group_size=32),
                                dict(bits=2, method="log"), dict(bits=2, per_channel=True)])
def test_streamed_file_is_the_saved_file(tmp_path, kw):
    model = small_model()
    saved = qpack.compress(model, min_numel=0, **kw)
    saved.save(tmp_path / "a.qpk")
    streamed = qpack.compress(model, min_numel=0, out=tmp_path / "b.qpk", **kw)
    assert (tmp_path / "a.qpk").read_bytes() == (tmp_path / "b.qpk").read_bytes()
    assert streamed.nbytes == saved.nbytes == os.path.getsize(tmp_path / "b.qpk")
    for name in model:
        np.testing.assert_array_equal(streamed[name].dequantize(), saved[name].dequantize())


def test_checkpoint_streams_and_keeps_its_metadata(tmp_path):
    path, arrays = _checkpoint(tmp_path, dtype=np.float16)
    m = qpack.compress(path, bits=4, out=tmp_path / "m.qpk")
    assert list(m) == list(arrays)
    assert m.source_metadata == {"format": "pt"}
    assert m["layers.0.bias"].dtype == np.float16
    np.testing.assert_array_equal(m["layers.0.bias"].dequantize(), arrays["layers.0.bias"])
    mem = qpack.compress(str(path), bits=4)
    mem.save(tmp_path / "n.qpk")
    assert (tmp_path / "m.qpk").read_bytes() == (tmp_path / "n.qpk").read_bytes()


def _peak_traced(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_checkpoint_tensors_are_read_lazily(tmp_path):
    """Planning reads no tensor; compress reads each when it is encoded and writes it
    out: peak traced memory does not grow with the number of layers."""
    small, _ = _checkpoint(tmp_path, n_layers=3, rows=256, cols=1024, name="small")
    big, arrays = _checkpoint(tmp_path, n_layers=15, rows=256, cols=1024, name="big")
    qpack.compress(small, bits=4, out=tmp_path / "warm.qpk")  # imports, kernels, caches
    peak_small = _peak_traced(lambda: qpack.compress(small, bits=4, out=tmp_path / "s.qpk"))
    peak_big = _peak_traced(lambda: qpack.compress(big, bits=4, out=tmp_path / "b.qpk"))
    total = sum(a.nbytes for a in arrays.values())
    assert peak_big < 1.25 * peak_small
    assert peak_big < 0.6 * total


def test_nan_in_a_stored_tensor_fails_and_writes_nothing(tmp_path):
    path, arrays = _checkpoint(tmp_path)
    arrays["layers.2.weight"][3, 4] = np.nan
    write_safetensors(path, arrays)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"tensor 'layers.2.weight' contains NaN or Inf"):
        qpack.compress(path, bits=4, out=out / "m.qpk")
    assert os.listdir(out) == []


def test_interrupted_run_leaves_no_partial_target(tmp_path, monkeypatch):
    path, _ = _checkpoint(tmp_path)
    target = tmp_path / "m.qpk"
    target.write_bytes(b"previous")
    calls = []
    original = StoredTensor.read

    def read_then_stop(self):
        calls.append(self.name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(StoredTensor, "read", read_then_stop)
    with pytest.raises(KeyboardInterrupt):
        qpack.compress(path, bits=4, out=target)
    assert target.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == []


def test_a_stored_tensor_whose_file_shrank_is_a_clear_error(tmp_path):
    path, _ = _checkpoint(tmp_path)
    ckpt = qpack.open_checkpoint(path)
    ref = ckpt.stored("layers.3.weight")
    with open(path, "r+b") as fh:
        fh.truncate(ref.offset + 10)
    with pytest.raises(ValueError, match="the file is shorter"):
        ref.read()


def test_out_is_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        qpack.compress(small_model(), out=tmp_path / "missing" / "m.qpk")
    with pytest.raises(ValueError, match="is a directory"):
        qpack.compress(small_model(), out=tmp_path)


@pytest.mark.parametrize("bad", [4, "threads", object()])
def test_executor_must_be_one(bad):
    with pytest.raises(ValueError, match="executor must be"):
        qpack.compress(small_model(), executor=bad)


def test_thread_executor_gives_the_same_bytes(tmp_path):
    path, _ = _checkpoint(tmp_path)
    qpack.compress(path, bits=4, out=tmp_path / "a.qpk")
    with ThreadPoolExecutor(3) as pool:
        qpack.compress(path, bits=4, out=tmp_path / "b.qpk", executor=pool)
    assert (tmp_path / "a.qpk").read_bytes() == (tmp_path / "b.qpk").read_bytes()


def test_worker_processes_give_the_same_bytes(tmp_path):
    """Checkpoint tensors go to the workers by (path, offset); in-memory ones by value;
    a size budget's candidate encodings run there too."""
    path, arrays = _checkpoint(tmp_path)
    with local_workers(2) as pool:
        qpack.compress(path, bits=4, prune=0.3, out=tmp_path / "b.qpk", executor=pool)
        in_memory = qpack.compress(arrays, bits=4, method="linear", executor=pool)
        budget = qpack.compress(arrays, target_bpw=3.0, executor=pool)
    qpack.compress(path, bits=4, prune=0.3, out=tmp_path / "a.qpk")
    assert (tmp_path / "a.qpk").read_bytes() == (tmp_path / "b.qpk").read_bytes()
    in_memory.save(tmp_path / "c.qpk")
    qpack.compress(arrays, bits=4, method="linear").save(tmp_path / "d.qpk")
    assert (tmp_path / "c.qpk").read_bytes() == (tmp_path / "d.qpk").read_bytes()
    serial = qpack.compress(arrays, target_bpw=3.0)
    assert {n: t.bits for n, t in budget.items()} == {n: t.bits for n, t in serial.items()}


def test_worker_processes_report_the_dampings_they_chose(tmp_path):
    """A calibrated tensor's damping is chosen on the worker (its Calibration there is a
    copy): it still reaches the metadata, the same as a serial run's."""
    _, arrays = _checkpoint(tmp_path)
    name = next(n for n, a in arrays.items() if a.ndim == 2)
    x = np.random.default_rng(2).standard_normal((200, arrays[name].shape[1]))
    calib = {name: x.astype(np.float32)}
    serial = qpack.compress(arrays, bits=4, calibration=calib)
    with local_workers(1) as pool:
        remote = qpack.compress(arrays, bits=4, calibration=calib, executor=pool)
    chosen = json.loads(remote.metadata["compress_args"])["calibrated"]
    assert chosen[name] is not None
    assert remote.metadata == serial.metadata


def test_a_worker_that_dies_fails_the_run_cleanly(tmp_path):
    path, _ = _checkpoint(tmp_path)
    # every worker process exits as it starts: the pool breaks on the first task
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=os._exit,
                               initargs=(3,))
    with pool, pytest.raises(RuntimeError, match=r"encoding tensor 'layers.0.weight' "
                                                 r"failed on the executor"):
        qpack.compress(path, bits=4, out=tmp_path / "m.qpk", executor=pool)
    assert not (tmp_path / "m.qpk").exists() and _leftovers(tmp_path) == []


def test_local_workers_checks_its_argument():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers must be a positive integer"):
            local_workers(bad)


def _malloc_limits_seen():
    from qpack import malloc_limits

    return malloc_limits._done


def test_dask_local_cluster_gives_the_same_bytes(tmp_path):
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not "
                                      "installed (pip install 'qpack[dask]')")
    path, _ = _checkpoint(tmp_path, n_layers=6)
    qpack.compress(path, bits=4, out=tmp_path / "a.qpk")
    qpack.compress(path, bits=4, method="linear", group_size=64, out=tmp_path / "c.qpk")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        qpack.compress(path, bits=4, out=tmp_path / "b.qpk", executor=client)
        qpack.compress(path, bits=4, method="linear", group_size=64,
                       out=tmp_path / "d.qpk", executor=client)
        # the workers that ran tasks have undone the nanny's fixed malloc limits (which
        # workers ran some is the scheduler's choice: at least one did)
        seen = client.run(_malloc_limits_seen)
    assert any(seen.values())
    assert (tmp_path / "a.qpk").read_bytes() == (tmp_path / "b.qpk").read_bytes()
    assert (tmp_path / "c.qpk").read_bytes() == (tmp_path / "d.qpk").read_bytes()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_read_float32_matches_read(tmp_path, monkeypatch, dtype):
    import qpack.stored_tensor as st
    from qpack import dtypes

    w = np.random.default_rng(3).standard_normal((70, 33)).astype(np.float32)
    arr = dtypes.cast_to(w, dtype) if dtype != "float64" else w.astype(np.float64)
    write_safetensors(tmp_path / "m.safetensors", {"w": arr})
    ref = qpack.open_checkpoint(tmp_path / "m.safetensors").stored("w")
    monkeypatch.setattr(st, "READ_BLOCK_ELEMENTS", 100)  # many blocks, a ragged last one
    got = ref.read_float32()
    assert got.dtype == np.float32 and got.shape == (70, 33)
    np.testing.assert_array_equal(got, ref.read().astype(np.float32))
    arr = arr.copy()
    arr.reshape(-1)[-1] = np.inf  # in the last block
    write_safetensors(tmp_path / "m.safetensors", {"w": arr})
    with pytest.raises(ValueError, match="'w' contains NaN or Inf"):
        qpack.open_checkpoint(tmp_path / "m.safetensors").stored("w").read_float32()


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_members_are_read_one_at_a_time(tmp_path, save):
    """A .npz opens from its members' .npy headers; each array is read when encoded, in
    whichever process encodes it."""
    rng = np.random.default_rng(4)
    arrays = {"a": rng.standard_normal((64, 300)).astype(np.float32),
              "b": rng.standard_normal((40, 50)).astype(np.float16),
              "step": np.array(3, np.int64)}
    save(tmp_path / "m.npz", **arrays)
    ckpt = qpack.open_checkpoint(tmp_path / "m.npz")
    assert [(ckpt.dtype_of(n), ckpt.shape_of(n)) for n in ckpt] == [
        ("float32", (64, 300)), ("float16", (40, 50)), ("int64", ())]
    assert ckpt.stored("a").array is None and ckpt.stored("a").member == "a"
    np.testing.assert_array_equal(ckpt["b"], arrays["b"])
    qpack.compress(tmp_path / "m.npz", min_numel=0).save(tmp_path / "x.qpk")
    with local_workers(2) as pool:
        qpack.compress(tmp_path / "m.npz", min_numel=0, out=tmp_path / "y.qpk",
                       executor=pool)
    assert (tmp_path / "x.qpk").read_bytes() == (tmp_path / "y.qpk").read_bytes()
    assert qpack.load(tmp_path / "y.qpk")["step"].dequantize() == 3
