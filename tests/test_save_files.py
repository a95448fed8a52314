"""Saving: output paths checked before any work, file modes, temporary files of killed saves."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import qpack
from qpack import format as qformat


@pytest.fixture()
def model():
    rng = np.random.default_rng(0)
    return qpack.compress({"w": rng.standard_normal((64, 64)).astype(np.float32)}, bits=4)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_file_follows_the_umask(tmp_path, model, umask_022):
    model.save(tmp_path / "a.qpk")
    assert mode_of(tmp_path / "a.qpk") == 0o644
    os.umask(0o027)
    model.save(tmp_path / "b.qpk")
    assert mode_of(tmp_path / "b.qpk") == 0o640


def test_replaced_file_keeps_its_mode(tmp_path, model, umask_022):
    target = tmp_path / "m.qpk"
    target.write_bytes(b"old")
    os.chmod(target, 0o604)
    model.save(target)
    assert mode_of(target) == 0o604
    assert qpack.load(target)["w"].shape == (64, 64)


def test_save_to_a_directory_names_it(tmp_path, model):
    with pytest.raises(ValueError, match=f"{tmp_path}.*is a directory"):
        model.save(tmp_path)


def test_save_into_a_missing_folder_names_it(tmp_path, model):
    target = tmp_path / "nope" / "m.qpk"
    with pytest.raises(ValueError, match="does not exist"):
        model.save(target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_save_into_a_read_only_folder_names_the_target(tmp_path, model):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(ValueError, match=r"ro/m\.qpk.*not writable"):
            model.save(folder / "m.qpk")
        assert os.listdir(folder) == []
    finally:
        os.chmod(folder, 0o755)


def test_check_output_path_rules(tmp_path):
    assert qformat.check_output_path(tmp_path / "x.qpk") == str(tmp_path / "x.qpk")
    with pytest.raises(ValueError, match="is a directory"):
        qformat.check_output_path(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        qformat.check_output_path(tmp_path / "a" / "b.qpk")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _temp_file(folder, pid: int, age_seconds: float):
    host = qformat.socket.gethostname().replace("-", "_") or "host"
    path = folder / f"{qformat.TEMP_PREFIX}{host}-{pid}-abcdef{qformat.TEMP_SUFFIX}"
    path.write_bytes(b"partial")
    old = time.time() - age_seconds
    os.utime(path, (old, old))
    return path


def test_stale_temp_files_are_removed_on_the_next_save(tmp_path, model):
    stale = _temp_file(tmp_path, _dead_pid(), 3600)
    fresh = _temp_file(tmp_path, _dead_pid(), 0)          # may still be in use elsewhere
    alive = _temp_file(tmp_path, os.getpid(), 3600)       # its process still runs
    other = tmp_path / ".qpack-somewhere-else-1-x.tmp"    # not one of ours
    other.write_bytes(b"x")
    model.save(tmp_path / "m.qpk")
    assert not stale.exists()
    assert fresh.exists() and alive.exists() and other.exists()


def test_kill_during_save_leaves_a_recognisable_temp_file_that_is_cleaned(tmp_path, model):
    """kill -9 in the middle of a save: the target is untouched, the temporary file is
    named .qpack-HOST-PID-*.tmp and the next save into the folder removes it."""
    target = tmp_path / "m.qpk"
    model.save(target)
    before = target.read_bytes()
    script = (
        "import sys, time, numpy as np, qpack\n"
        "from qpack import format as f\n"
        "w = np.ones((256, 256), np.float32)\n"
        "cm = qpack.compress({'w': w}, bits=4)\n"
        "orig = f.SectionWriter.add\n"
        "def slow(self, desc, blob):\n"
        "    orig(self, desc, blob)\n"
        "    print('writing', flush=True); time.sleep(60)\n"
        "f.SectionWriter.add = slow\n"
        f"cm.save({str(target)!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    proc.stdout.close()
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(qformat.TEMP_PREFIX)]
    assert len(temps) == 1 and f"-{proc.pid}-" in temps[0].name
    assert target.read_bytes() == before
    old = time.time() - 3600
    os.utime(temps[0], (old, old))
    model.save(tmp_path / "other.qpk")
    assert not temps[0].exists()
