"""The ``qpack`` command line: end-to-end round trip, every bad input, damaged files, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import qpack
from qpack import cli
from qpack import format as qformat
from qpack.safetensors_file import read_safetensors, write_safetensors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python -m qpack.cli ARGS`` in a fresh interpreter; capture text output."""
    return subprocess.run([sys.executable, "-m", "qpack.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def small_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "encoder.weight": rng.standard_normal((96, 64)).astype(np.float32),
        "encoder.bias": rng.standard_normal(96).astype(np.float32),
        "head.weight": rng.standard_normal((10, 96)).astype(np.float32),
        "steps": np.arange(5, dtype=np.int64),
    }


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, small_model(), metadata={"origin": "test"})
    return path


def files_in(folder) -> set[str]:
    return set(os.listdir(folder))


# -- the round trip, in a subprocess ---------------------------------------------------

def test_compress_info_verify_decompress_round_trip(tmp_path, model_file):
    out = tmp_path / "model.qpk"
    r = run_cli("compress", str(model_file), "-o", str(out), "--bits", "4", "--prune", "0.5",
                "--min-numel", "0", "--override", "head.*:bits=8,method=linear,prune=0")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    # the per-tensor report and the total ratio
    assert "encoder.weight" in r.stdout and "head.weight" in r.stdout
    size = os.path.getsize(out)
    assert f"wrote {out}: {size:,} bytes" in r.stdout

    model = qpack.load(out)
    assert model["encoder.weight"].method == "kmeans"
    assert model["encoder.weight"].sparsity == pytest.approx(0.5, abs=0.01)
    assert model["head.weight"].method == "linear" and model["head.weight"].bits == 8
    assert model["steps"].method == "raw"
    assert model.metadata["source"] == "model.safetensors"

    r = run_cli("info", str(out))
    assert r.returncode == 0, r.stderr
    assert f"{size:,} bytes" in r.stdout and "head.weight" in r.stdout

    r = run_cli("info", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["file_bytes"] == size and info["format_version"] == qformat.FORMAT_VERSION
    assert 0 < info["header_bytes"] < size
    assert set(info["tensors"]) == set(small_model())
    assert info["tensors"]["encoder.weight"]["shape"] == [96, 64]
    assert info["tensors"]["head.weight"]["bits"] == 8

    r = run_cli("verify", str(out), "--decode")
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout

    expected = model.decompress()
    for name in ("back.safetensors", "back.npz"):
        back = tmp_path / name
        r = run_cli("decompress", str(out), "-o", str(back))
        assert r.returncode == 0, r.stderr
        if name.endswith(".npz"):
            with np.load(back) as npz:
                arrays = {k: npz[k] for k in npz.files}
        else:
            arrays = read_safetensors(back)[0]
        assert set(arrays) == set(expected)
        for key, arr in expected.items():
            assert arrays[key].dtype == arr.dtype and arrays[key].shape == arr.shape
            np.testing.assert_array_equal(arrays[key], arr)
        if name.endswith(".safetensors"):  # the input's own metadata comes back
            assert read_safetensors(back)[1] == {"origin": "test"}
    original = small_model()
    np.testing.assert_array_equal(expected["encoder.bias"], original["encoder.bias"])
    np.testing.assert_array_equal(expected["steps"], original["steps"])
    err = np.abs(expected["head.weight"] - original["head.weight"]).max()
    assert err < 0.05  # 8-bit linear


def test_compress_scale_and_codebook_dtypes(tmp_path, model_file):
    out = tmp_path / "d.qpk"
    r = run_cli("compress", str(model_file), "-o", str(out), "--min-numel", "0", "-q",
                "--codebook-dtype", "float32",
                "--override", "head.*:method=linear,group_size=16,scale_dtype=float32")
    assert r.returncode == 0, r.stderr
    m = qpack.load(out)
    assert m["encoder.weight"].spec["sections"]["codebook"]["dtype"] == "float32"
    assert m["head.weight"].spec["sections"]["scales"]["dtype"] == "float32"
    r = run_cli("compress", str(model_file), "-o", str(out), "--method", "linear",
                "--scale-dtype", "float64")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_npz_input_and_quiet(tmp_path):
    src = tmp_path / "weights.npz"
    np.savez(src, **small_model())
    out = tmp_path / "w.qpk"
    assert cli.main(["compress", str(src), "-o", str(out), "--quiet", "--no-entropy",
                     "--method", "linear", "--group-size", "32", "--min-numel", "0"]) == 0
    t = qpack.load(out)["encoder.weight"]
    assert t.method == "linear" and t.spec["group_size"] == 32
    assert all(d["codec"] != "huffman" for d in t.spec["sections"].values()
               if "codec" in d)


def test_method_log_and_override(tmp_path, model_file, capsys):
    out = tmp_path / "log.qpk"
    assert cli.main(["compress", str(model_file), "-o", str(out), "--method", "log",
                     "--bits", "3", "--per-channel", "--min-numel", "0",
                     "--override", "head.*:method=kmeans,per_channel=false"]) == 0
    assert "log" in capsys.readouterr().out  # the report's method column
    model = qpack.load(out)
    enc = model["encoder.weight"]
    assert (enc.method, enc.bits, enc.spec["method"]) == ("log", 3, "kmeans")
    assert enc.spec["per_channel"] and model["head.weight"].method == "kmeans"
    np.testing.assert_array_equal(
        enc.dequantize(),
        qpack.quantize_log(small_model()["encoder.weight"], 3, per_channel=True).dequantize())
    assert cli.main(["info", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tensors"]["encoder.weight"]["method"] == "log"
    assert info["tensors"]["encoder.weight"]["spec"]["grid"] == "log"
    assert cli.main(["info", str(out)]) == 0
    assert "log" in capsys.readouterr().out


# -- bad inputs: one line on stderr, exit 1 or 2, nothing written -----------------------

def _bad(tmp_path, model_file):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file")
    text = tmp_path / "model.txt"
    text.write_text("weights")
    out = str(tmp_path / "out.qpk")
    m = str(model_file)
    return {
        "missing input": (["compress", str(tmp_path / "nope.safetensors"), "-o", out], 1,
                          "no such file"),
        "unknown format": (["compress", str(text), "-o", out], 1, "unknown input type"),
        "unreadable file": (["compress", str(garbage), "-o", out], 1, "garbage.safetensors"),
        "missing folder": (["compress", m, "-o", str(tmp_path / "no" / "out.qpk")], 1,
                           "does not exist"),
        "bits 9": (["compress", m, "-o", out, "--bits", "9"], 2, "--bits"),
        "bits 0": (["compress", m, "-o", out, "--bits", "0"], 2, "--bits"),
        "prune 1.5": (["compress", m, "-o", out, "--prune", "1.5"], 2, "--prune"),
        "prune nan": (["compress", m, "-o", out, "--prune", "nan"], 2, "--prune"),
        "bad group size": (["compress", m, "-o", out, "--group-size", "0"], 2,
                           "--group-size"),
        "override matches nothing": (["compress", m, "-o", out, "--override",
                                      "decoder.*:bits=8"], 1, "decoder.*"),
        "override unknown key": (["compress", m, "-o", out, "--override",
                                  "head.*:bitz=8"], 1, "bitz"),
        "override bad bits": (["compress", m, "-o", out, "--override", "head.*:bits=12"], 1,
                              "bits"),
        "override malformed": (["compress", m, "-o", out, "--override", "head.weight"], 2,
                               "--override"),
        "include matches nothing": (["compress", m, "-o", out, "--include", "zzz*"], 1,
                                    "zzz*"),
        "output not .qpk": (["compress", m, "-o", str(tmp_path / "out.bin")], 1, ".qpk"),
        "info on a non-qpk": (["info", m], 1, "not a .qpk file"),
        "verify missing": (["verify", str(tmp_path / "nope.qpk")], 1, "no such file"),
        "decompress bad output": (["decompress", m, "-o", str(tmp_path / "x.txt")], 1,
                                  ".safetensors or .npz"),
        "no subcommand option": (["compress", m], 2, "--output"),
    }


BAD_CASES = ["missing input", "unknown format", "unreadable file", "missing folder", "bits 9",
             "bits 0", "prune 1.5", "prune nan", "bad group size", "override matches nothing",
             "override unknown key", "override bad bits", "override malformed",
             "include matches nothing", "output not .qpk", "info on a non-qpk",
             "verify missing", "decompress bad output", "no subcommand option"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, model_file, case, capsys):
    argv, code, needle = _bad(tmp_path, model_file)[case]
    before = files_in(tmp_path)
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    captured = capsys.readouterr()
    assert rc == code
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert needle in lines[0]
    assert lines[0].startswith("qpack")
    assert files_in(tmp_path) == before  # no output, no temporary file left behind


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path, model_file):
    r = run_cli("compress", str(model_file), "-o", str(tmp_path / "a.qpk"), "--override",
                "nothing*:bits=8")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "a.qpk").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path, where):
    args = ["verify", str(tmp_path / "nope.qpk")]
    with pytest.raises(ValueError, match="no such file"):
        cli.main(["--debug", *args] if where == "before" else [*args, "--debug"])


def test_decompress_into_missing_folder_writes_nothing(tmp_path, model_file):
    qpk = tmp_path / "m.qpk"
    assert cli.main(["compress", str(model_file), "-o", str(qpk), "-q"]) == 0
    before = files_in(tmp_path)
    assert cli.main(["decompress", str(qpk), "-o", str(tmp_path / "no" / "m.npz")]) == 1
    assert files_in(tmp_path) == before


def test_compress_says_larger_when_the_file_is_larger(tmp_path, model_file, capsys):
    """Every tensor stored raw: header and alignment make the file bigger than its input."""
    out = tmp_path / "raw.qpk"
    assert cli.main(["compress", str(model_file), "-o", str(out), "-q",
                     "--min-numel", "1000000"]) == 0
    assert all(t.method == "raw" for t in qpack.load(out).values())
    line = capsys.readouterr().out.strip().splitlines()[-1]
    size = out.stat().st_size
    original = sum(a.nbytes for a in small_model().values())
    assert size > original
    assert line == (f"wrote {out}: {size:,} bytes, {size / original:.2f}x larger than the "
                    f"{original:,} input bytes")
    assert "smaller" not in line


@pytest.mark.parametrize("size, original, expected", [
    (100, 627, "6.27x smaller than"),
    (137, 100, "1.37x larger than"),
    (100, 100, "the same size as"),
    (64, 0, "larger than"),
])
def test_size_comparison(size, original, expected):
    assert cli.size_comparison(size, original) == expected


def _no_compression(monkeypatch):
    """Make reading the input or compressing fail the test: the output check comes first."""
    import qpack.inputs
    import qpack.model

    def refuse(*args, **kwargs):
        raise AssertionError("the input was read before the output path was checked")

    monkeypatch.setattr(qpack.inputs, "read_model", refuse)
    monkeypatch.setattr(qpack.model, "compress", refuse)


def _assert_rejects_unwritable_folder(tmp_path, model_file, folder, capsys):
    out = folder / "out.qpk"
    rc = cli.main(["compress", str(model_file), "-o", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(lines) == 1 and str(out) in lines[0] and "not writable" in lines[0], lines
    assert lines[0].startswith("qpack compress: error:")
    assert os.listdir(folder) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write into a read-only folder")
def test_compress_into_read_only_folder_fails_first(tmp_path, model_file, monkeypatch, capsys):
    folder = tmp_path / "read-only"
    folder.mkdir()
    _no_compression(monkeypatch)
    folder.chmod(0o555)
    try:
        _assert_rejects_unwritable_folder(tmp_path, model_file, folder, capsys)
    finally:
        folder.chmod(0o755)


def test_compress_into_unwritable_folder_fails_first(tmp_path, model_file, monkeypatch,
                                                      capsys):
    """The same check, as any user (root included): os.access reports the folder unwritable."""
    folder = tmp_path / "locked"
    folder.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if os.path.abspath(path) == str(folder) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    _no_compression(monkeypatch)
    _assert_rejects_unwritable_folder(tmp_path, model_file, folder, capsys)


def test_output_path_that_is_a_directory(tmp_path, model_file, monkeypatch, capsys):
    folder = tmp_path / "out.qpk"
    folder.mkdir()
    _no_compression(monkeypatch)
    assert cli.main(["compress", str(model_file), "-o", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "directory" in err and str(folder) in err


# -- damaged files ------------------------------------------------------------------------

def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("role", ["codes", "codebook"])
def test_verify_names_the_damaged_section(tmp_path, model_file, role, capsys):
    qpk = tmp_path / "m.qpk"
    assert cli.main(["compress", str(model_file), "-o", str(qpk), "-q", "--min-numel", "0"]) == 0
    assert cli.main(["verify", str(qpk)]) == 0
    mapped = qformat.MappedFile(qpk)
    desc = mapped.header["tensors"]["encoder.weight"]["sections"][role]
    offset = mapped.data_start + desc["offset"] + desc["length"] // 2
    del mapped
    _flip(qpk, offset)
    capsys.readouterr()
    assert cli.main(["verify", str(qpk)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'encoder.weight'" in err and f"'{role}'" in err and "checksum" in err
    # info reads only the header, so it still works on a file with a damaged section
    assert cli.main(["info", str(qpk)]) == 0
    # decompress refuses it and writes nothing
    before = files_in(tmp_path)
    capsys.readouterr()
    assert cli.main(["decompress", str(qpk), "-o", str(tmp_path / "out.npz")]) == 1
    assert "checksum" in capsys.readouterr().err
    assert files_in(tmp_path) == before


def test_verify_damaged_header(tmp_path, model_file, capsys):
    qpk = tmp_path / "m.qpk"
    assert cli.main(["compress", str(model_file), "-o", str(qpk), "-q"]) == 0
    _flip(qpk, qformat.PREAMBLE.size + 5)
    capsys.readouterr()
    assert cli.main(["verify", str(qpk)]) == 1
    assert "header" in capsys.readouterr().err


def test_verify_truncated_file(tmp_path, model_file, capsys):
    qpk = tmp_path / "m.qpk"
    assert cli.main(["compress", str(model_file), "-o", str(qpk), "-q"]) == 0
    data = qpk.read_bytes()
    qpk.write_bytes(data[: len(data) - 100])
    assert cli.main(["verify", str(qpk)]) == 1
    assert "qpack verify: error:" in capsys.readouterr().err


# -- argument parsing ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("head.*:bits=8,method=linear", ("head.*", {"bits": 8, "method": "linear"})),
    ("a:b:c:prune=0.25,symmetric=true,group_size=none",
     ("a:b:c", {"prune": 0.25, "symmetric": True, "group_size": None})),
    ("*:method=raw", ("*", {"method": "raw"})),
])
def test_parse_override(text, expected):
    assert cli.parse_override(text) == expected


@pytest.mark.parametrize("text", ["head.weight", ":bits=8", "x:", "x:bits", "x:bits=8,,"])
def test_parse_override_rejects(text):
    with pytest.raises(Exception, match="expected"):
        cli.parse_override(text)


def test_bare_qpack_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: qpack") and "compress" in captured.err
    r = run_cli()
    assert r.returncode == 2 and r.stdout == "" and "usage: qpack" in r.stderr


def test_help_and_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"qpack {qpack.__version__}"
    parser = cli.build_parser()
    for command in ("compress", "info", "decompress", "verify", "demo", "bench"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([command, "--help"])
        assert exc.value.code == 0


# -- demo and bench -----------------------------------------------------------------------

def test_demo_quick():
    r = run_cli("demo", "--quick")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    table = [ln for ln in lines if ln.startswith(("float32 (numpy)", "kmeans", "linear"))]
    assert len(table) == 4  # float32 reference + the three quick settings
    ratios = [float(ln.split("x")[0].split()[-1]) for ln in table[1:]]
    assert all(r > 3 for r in ratios)
    accuracies = [float(ln.split("%")[0].split()[-1]) for ln in table]
    assert accuracies[0] > 85 and all(a > 80 for a in accuracies)
    # quick mode has no retrained rows: neither the deep_compression row nor its skip line
    assert "deep_compression" not in r.stdout and "torch" not in r.stdout


def test_demo_deep_compression_row(tmp_path):
    """With torch, qpack.torch.deep_compression's row beats post-training pruning at the
    same sparsity and bits, and was measured from its .qpk in the demo's folder."""
    torch = pytest.importorskip("torch", reason="the demo's deep_compression row needs the "
                                "torch extra (pip install -e \".[torch]\")")
    from qpack import demo

    post = next(s for s in demo.DEMO_SETTINGS if s[0] == "kmeans 4-bit, prune 0.9")
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    result = demo.run_demo(quick=True, settings=[post], trained=True, workdir=tmp_path)
    assert torch.get_num_threads() == threads  # restored, and the caller's RNG untouched
    assert torch.equal(torch.random.get_rng_state(), rng)
    rows = {r["setting"]: r for r in result.rows}
    assert list(rows) == ["float32 (numpy)", post[0], demo.TRAINED_LABEL]
    dc, pt = rows[demo.TRAINED_LABEL], rows[post[0]]
    # post-training pruning of 90% collapses the model (about 60%); the recipe does not
    assert dc["accuracy"] > pt["accuracy"] + 0.2, (dc, pt)
    assert dc["accuracy"] > result.float_accuracy - 0.03, (dc, result.float_accuracy)
    assert dc["ratio"] > 0.95 * pt["ratio"] and dc["ratio"] > 20
    assert dc["train_seconds"] > 0 and result.notes == []
    # run from the file: the demo's folder holds it, with the MLP's names and encoding
    assert os.path.dirname(dc["path"]) == str(tmp_path)
    loaded = qpack.load(dc["path"])
    assert loaded.nbytes == dc["file_bytes"]
    for name in demo.LAYERS:
        w = loaded[f"{name}.weight"]
        assert (w.method, w.bits) == ("kmeans", 4)
        assert w.sparsity == pytest.approx(0.9, abs=0.01)
    assert demo.TRAINED_LABEL in demo.format_table(result)


def _block_imports(*modules: str) -> str:
    """Python source that makes importing any of ``modules`` fail as if not installed."""
    return (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {modules!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n")


def test_demo_without_scikit_learn_names_the_extra(tmp_path):
    code = _block_imports("sklearn") + (
        "from qpack.cli import main\n"
        "sys.exit(main(['demo', '--quick']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("qpack demo: error:") and "scikit-learn" in lines[0]
    assert 'pip install "qpack[demo]"' in lines[0] and 'pip install -e ".[demo]"' in lines[0]
    assert "training" not in r.stdout


def test_demo_without_torch_prints_one_line(tmp_path):
    # a blocking finder, not sys.modules["torch"] = None: scipy (under scikit-learn)
    # looks torch up in sys.modules and fails on a None there
    code = _block_imports("torch") + (
        "from qpack import demo\n"
        "rc = demo.main(quick=True, trained=True)\n"
        "data = demo.load_digits_split()\n"
        "mlp = demo.train_mlp(data, max_iter=2)\n"
        "full = demo.run_demo(settings=[], retrain=False, data=data, mlp=mlp)\n"
        "assert full.notes == [demo.TORCH_SKIPPED] and len(full.rows) == 1, full\n"
        "assert demo.run_demo(quick=True, settings=[], data=data, mlp=mlp).notes == []\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stdout.strip().splitlines()
    torch_lines = [ln for ln in lines if "torch" in ln]
    assert torch_lines == [lines[-1]], r.stdout  # one line, under the table
    assert lines[-1].startswith("deep_compression row skipped: torch is not installed")
    assert 'pip install "qpack[torch]"' in lines[-1] and 'pip install -e ".[torch]"' in lines[-1]
    assert any(ln.startswith("kmeans 4-bit, prune 0.5") for ln in lines)


@pytest.mark.parametrize("module", ["sklearn", "threadpoolctl"])
def test_demo_extra_check(monkeypatch, capsys, module):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    assert cli.main(["demo", "--quick"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'demo' extra" in err and module in err


def test_compress_runs_without_scikit_learn(tmp_path, model_file):
    """scikit-learn (and scipy, threadpoolctl) is the demo's extra, not a qpack dependency."""
    out = tmp_path / "m.qpk"
    code = _block_imports("sklearn", "scipy", "threadpoolctl") + (
        "from qpack.cli import main\n"
        f"rc = main(['compress', {str(model_file)!r}, '-o', {str(out)!r}, '-q'])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')]\n"
        "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert qpack.load(out)["encoder.weight"].method == "kmeans"


def test_scikit_learn_is_an_extra_not_a_dependency():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]

    def names(requirements):
        return {r.split(">")[0].split("=")[0].split("[")[0].strip().lower()
                for r in requirements}

    assert "scikit-learn" not in names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "scikit-learn" in names(extras["demo"])
    assert "scikit-learn" in names(extras["test"])  # the tests run the demo and examples


def test_bench_locates_the_suite_or_explains(monkeypatch, capsys):
    found = cli.find_benchmarks()
    if os.path.isdir(os.path.join(REPO, "benchmarks")):
        assert found is not None and found.name == "run_all.py"
    monkeypatch.setattr(cli, "find_benchmarks", lambda: None)
    assert cli.main(["bench", "--quick"]) == 1
    assert "not installed with the package" in capsys.readouterr().err


def test_info_json_is_strict_json(tmp_path, capsys):
    """Exact (zero-error) tensors have an infinite SQNR: the JSON must still be strict."""
    qpk = tmp_path / "exact.qpk"
    qpack.compress({"zeros": np.zeros((4, 8), np.float32),
                    "ones": np.ones((4, 8), np.float32)}, min_numel=0).save(qpk)
    capsys.readouterr()
    assert cli.main(["info", "--json", str(qpk)]) == 0

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    info = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert set(info["tensors"]) == {"zeros", "ones"}
    assert cli._finite({"a": float("inf"), "b": [1.0, float("nan")], "c": "x"}) == {
        "a": None, "b": [1.0, None], "c": "x"}


def _refuse_to_run(*args, **kwargs):
    raise AssertionError(f"the benchmarks were launched: {args}")


def test_bench_rejects_unknown_names_before_running(monkeypatch, capsys):
    script = cli.find_benchmarks()
    if script is None:
        pytest.skip("no benchmarks/ folder beside the package (not a source checkout)")
    known = cli.benchmark_names(script)
    assert "bitpack" in known and "models" in known
    monkeypatch.setattr(cli.subprocess, "call", _refuse_to_run)
    assert cli.main(["bench", "--quick", "--only", "bitpack", "nosuch"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("qpack bench: error:") and "'nosuch'" in lines[0]
    assert ", ".join(known) in lines[0]


def test_bench_only_accepts_names_with_or_without_prefix(monkeypatch):
    if cli.find_benchmarks() is None:
        pytest.skip("no benchmarks/ folder beside the package (not a source checkout)")
    commands = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command, **kw: commands.append(command)
                        or 0)
    assert cli.main(["bench", "--quick", "--only", "bench_bitpack", "entropy", "bitpack"]) == 0
    (command,) = commands
    assert command[-4:] == ["--quick", "--only", "bitpack", "entropy"]


def test_bench_unknown_name_in_a_subprocess_runs_nothing():
    if cli.find_benchmarks() is None:
        pytest.skip("no benchmarks/ folder beside the package (not a source checkout)")
    r = run_cli("bench", "--only", "nosuch")
    assert r.returncode == 2
    assert r.stdout == ""  # run_all.py prints '== bench_NAME' before each benchmark
    assert len(r.stderr.strip().splitlines()) == 1 and "known: " in r.stderr
    assert "bitpack" in r.stderr


def test_info_json_decodes_compress_args(tmp_path, model_file, capsys):
    qpk = tmp_path / "m.qpk"
    assert cli.main(["compress", str(model_file), "-o", str(qpk), "-q", "--bits", "3",
                     "--override", "encoder.*:bits=8"]) == 0
    capsys.readouterr()
    assert cli.main(["info", "--json", str(qpk)]) == 0
    info = json.loads(capsys.readouterr().out)
    args = info["metadata"]["compress_args"]
    assert isinstance(args, dict)
    assert args["bits"] == 3 and args["method"] == "kmeans"
    assert args["overrides"] == {"encoder.*": {"bits": 8}}
    assert info["metadata"]["source"] == "model.safetensors"  # other values unchanged
    # the text output still shows the stored string
    assert cli.main(["info", str(qpk)]) == 0
    assert 'metadata compress_args: {"' in capsys.readouterr().out


@pytest.mark.parametrize("value", ["not json", "[1, 2]", "7", ""])
def test_info_json_keeps_compress_args_that_are_not_an_object(tmp_path, capsys, value):
    qpk = tmp_path / "m.qpk"
    model = qpack.compress({"w": np.ones((4, 8), np.float32)}, min_numel=0)
    model.save(qpk, metadata={"compress_args": value})
    assert qpack.load(qpk).metadata["compress_args"] == value
    capsys.readouterr()
    assert cli.main(["info", "--json", str(qpk)]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["compress_args"] == value


def test_decompress_keeps_bfloat16_and_refuses_npz(tmp_path):
    """B9/B12: bf16 stays bf16 through compress/decompress with the file size kept, and
    .npz (which cannot hold it) is refused before anything is decoded or written."""
    import ml_dtypes

    rng = np.random.default_rng(3)
    src = tmp_path / "bf.safetensors"
    w = rng.standard_normal((64, 64)).astype(ml_dtypes.bfloat16)
    write_safetensors(src, {"w": w, "b": w[0]}, metadata={"format": "pt"})
    qpk = tmp_path / "bf.qpk"
    assert cli.main(["compress", str(src), "-o", str(qpk), "-q", "--bits", "8"]) == 0
    back = tmp_path / "back.safetensors"
    assert cli.main(["decompress", str(qpk), "-o", str(back)]) == 0
    arrays, meta = read_safetensors(back)
    assert arrays["w"].dtype == ml_dtypes.bfloat16 and meta == {"format": "pt"}
    assert os.path.getsize(back) == os.path.getsize(src)
    r = run_cli("decompress", str(qpk), "-o", str(tmp_path / "back.npz"))
    assert r.returncode == 1 and "cannot store bfloat16" in r.stderr
    assert not (tmp_path / "back.npz").exists()
