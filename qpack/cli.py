"""The ``qpack`` command line: compress, inspect, verify and decompress ``.qpk`` files.

Exit codes: 0 on success, 1 on a bad input (missing or damaged file, bad setting, ...;
one line on stderr, no traceback unless ``--debug``), 2 on a usage error (a bad option or
value, no command, an unknown benchmark name).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from qpack._version import __version__
from qpack.defaults import DEFAULT_CLIP, DEFAULT_GROUP_SIZE

MODEL_EXTENSIONS = (".safetensors", ".npz")


class CliError(ValueError):
    """A bad input found by the CLI itself: printed as one line, exit code 1."""


class CliUsageError(CliError):
    """A usage error found after argument parsing: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# -- argument types (argparse turns their ValueError/ArgumentTypeError into exit 2) ------

def _bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..8, got {text!r}") from None
    if not 1 <= value <= 8:
        raise argparse.ArgumentTypeError(f"must be an integer in 1..8, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {value:g}")
    return value


def _target_bpw(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 32], got {text!r}") from None
    if not 0.0 < value <= 32.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 32], got {value:g}")
    return value


def _group_size(text: str) -> int | None:
    if text == "tensor":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not (value == -1 or value > 0):
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, -1 for one group per output row, or 'tensor' for "
            f"one scale per tensor; got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _override_value(text: str):
    """An override value: int, float, true/false, none, or a plain word."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text.strip()


def parse_override(text: str) -> tuple[str, dict]:
    """Parse ``'GLOB:key=value,key=value'`` into (glob, {key: value}).

    The glob is everything before the last ``:``; values are converted to int, float,
    bool (true/false) or None (none) when they look like one. Raises
    argparse.ArgumentTypeError for a malformed override.
    """
    pattern, sep, body = text.rpartition(":")
    if not sep or not pattern or not body:
        raise argparse.ArgumentTypeError(
            f"expected 'GLOB:key=value[,key=value...]', got {text!r}")
    settings = {}
    for item in body.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(
                f"override {text!r}: expected key=value, got {item!r}")
        settings[key.strip()] = _override_value(value)
    return pattern, settings


# -- subcommands -----------------------------------------------------------------------

def _check_output(path: str, extensions: tuple[str, ...]) -> str:
    """Fail early (before any work) on an output path that cannot be written.

    The extension is checked here; ``qpack.format.check_output_path`` checks the rest
    (a directory, a missing or unwritable folder). Returns the lower-case extension.
    """
    from qpack.format import check_output_path

    ext = os.path.splitext(path)[1].lower()
    if ext not in extensions:
        raise CliError(f"{path}: output must end in {' or '.join(extensions)}")
    try:
        check_output_path(path)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return ext


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise CliError(f"{path}: not a regular file")


def _check_checkpoint(paths: list[str]) -> None:
    """The compress inputs: one file (a model type or a shard index) or folder, or
    several files; checked before anything is read."""
    from qpack.checkpoint import INDEX_SUFFIX, SINGLE_FILE_EXTENSIONS

    for path in paths:
        if len(paths) == 1 and os.path.isdir(path):
            continue
        _check_exists(path)
        if path.endswith(INDEX_SUFFIX) and len(paths) == 1:
            continue
        ext = os.path.splitext(path)[1].lower()
        if ext not in SINGLE_FILE_EXTENSIONS:
            raise CliError(f"{path}: unknown input type {ext or '(no extension)'!r} "
                           f"(expected {', '.join(SINGLE_FILE_EXTENSIONS)}, a "
                           f"*{INDEX_SUFFIX} shard index or a folder)")


def cmd_compress(args: argparse.Namespace) -> int:
    """Compress a checkpoint (file, shard index, folder or shard files) into a .qpk file
    and print the report."""
    from qpack.model import compress

    _check_checkpoint(args.input)
    if args.max_shard_size is None:
        if args.resume:
            raise CliError("--resume needs --max-shard-size: only a sharded output can be "
                           "resumed (a single file is written all or nothing)")
        _check_output(args.output, (".qpk",))
    overrides: dict[str, dict] = {}
    for pattern, settings in args.override:
        overrides.setdefault(pattern, {}).update(settings)
    progress = not args.quiet and sys.stderr.isatty()
    # given the path, compress also keeps the file's own metadata (safetensors
    # __metadata__) for decompress to write back
    source = args.input[0] if len(args.input) == 1 else list(args.input)
    with _executor(args) as executor:
        # out=: each tensor is written as soon as it is encoded (bounded memory)
        model = compress(source, bits=args.bits, prune=args.prune, method=args.method,
                         group_size=args.group_size, symmetric=args.symmetric,
                         clip=args.clip, entropy=None if args.no_entropy else "huffman",
                         include=args.include or None, exclude=args.exclude or None,
                         overrides=overrides or None, min_numel=args.min_numel,
                         prune_scope=args.prune_scope, per_channel=args.per_channel,
                         scale_dtype=args.scale_dtype, codebook_dtype=args.codebook_dtype,
                         metadata={"source": ", ".join(os.path.basename(os.path.normpath(p))
                                                       for p in args.input)},
                         target_bpw=args.target_bpw, progress=progress, out=args.output,
                         executor=executor, max_shard_size=args.max_shard_size,
                         resume=args.resume)
    size = model.nbytes
    if not args.quiet:
        print(model.report())
    print(f"wrote {args.output}: {size:,} bytes, "
          f"{size_comparison(size, model.original_nbytes)} the "
          f"{model.original_nbytes:,} input bytes")
    return 0


@contextlib.contextmanager
def _executor(args: argparse.Namespace):
    """The executor ``--workers`` / ``--dask-scheduler`` ask for (None: this process's
    threads), shut down when the block ends."""
    if args.workers is not None and args.dask_scheduler is not None:
        raise CliError("give --workers or --dask-scheduler, not both")
    if args.workers is not None:
        from qpack.executors import local_workers

        with local_workers(args.workers) as pool:
            yield pool
        return
    if args.dask_scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise CliError("--dask-scheduler needs dask.distributed: pip install "
                           "'qpack[dask]'") from None
        try:
            client = Client(args.dask_scheduler, timeout=30)
        except (OSError, TimeoutError, ValueError) as exc:
            raise CliError(f"cannot reach the Dask scheduler at {args.dask_scheduler} "
                           f"({type(exc).__name__}: {exc})") from None
        with client:
            yield client
        return
    yield None


def size_comparison(size: int, original: int) -> str:
    """How ``size`` compares to ``original`` bytes, e.g. ``'6.27x smaller than'``.

    ``'1.37x larger than'`` when the file is bigger than its input (tiny models, tensors
    stored raw: the header and the 64-byte alignment cost bytes), ``'the same size as'``
    when the two are equal.
    """
    if size == original:
        return "the same size as"
    if size < original:
        return f"{original / size:.2f}x smaller than"
    if original == 0:
        return "larger than"
    return f"{size / original:.2f}x larger than"


def _preamble(model) -> tuple[int, int]:
    """(format version, header bytes) from the preambles of the files a loaded model came
    from (already validated by load): the oldest version, and the headers' total."""
    from qpack import format as qformat

    versions, total = [], 0
    for path in model.files:
        with open(path, "rb") as fh:
            _magic, version, header_len, _crc, _flags = qformat.PREAMBLE.unpack(
                fh.read(qformat.PREAMBLE.size))
        versions.append(version)
        total += header_len
    return min(versions), total


def _check_model_path(path: str) -> None:
    """A .qpk file, or a sharded model's folder or index, must exist."""
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file or folder")


def _finite(value):
    """``value`` with non-finite floats replaced by None, so the JSON output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _info_dict(path: str, model) -> dict:
    tensors = {}
    for name, t in model.items():
        tensors[name] = {"shape": list(t.shape), "dtype": t.spec["dtype"], "method": t.method,
                         "bits": t.bits, "layout": t.layout if t.method != "raw" else None,
                         "sparsity": t.sparsity, "stored_bytes": t.nbytes,
                         "original_bytes": t.original_nbytes, "stats": t.stats,
                         "spec": t.spec}
    version, header_len = _preamble(model)
    return {"file": path, "format_version": version, "header_bytes": header_len,
            "shards": len(model.files),
            "file_bytes": model.nbytes, "original_bytes": model.original_nbytes,
            "ratio": model.ratio, "metadata": _json_metadata(model.metadata),
            "tensors": tensors}


def _json_metadata(metadata: dict) -> dict:
    """The metadata for ``info --json``: ``compress_args`` (settings that ``compress`` stores
    as a JSON string) decoded to an object; a value that is not a JSON object stays a string.
    """
    out = dict(metadata)
    text = out.get("compress_args")
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict):
            out["compress_args"] = value
    return out


def cmd_info(args: argparse.Namespace) -> int:
    """Print a .qpk file's header, metadata and per-tensor table (nothing is decoded)."""
    from qpack.model import load

    _check_model_path(args.file)
    model = load(args.file)  # validates the header; decodes no section
    if args.json:
        print(json.dumps(_finite(_info_dict(args.file, model)), indent=1, allow_nan=False,
                         default=str))
        return 0
    version, header_len = _preamble(model)
    shards = f", {len(model.files)} shards" if len(model.files) > 1 else ""
    print(f"file: {args.file} (.qpk format version {version}, header {header_len:,} bytes"
          f"{shards})")
    print(f"size: {model.nbytes:,} bytes ({len(model)} tensors, "
          f"{model.original_nbytes:,} bytes uncompressed, ratio {model.ratio:.2f}x)")
    for key, value in model.metadata.items():
        print(f"metadata {key}: {value}")
    print()
    print(model.report())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every CRC32 of a .qpk (header and each section); optionally decode each tensor."""
    from qpack.model import load

    _check_model_path(args.file)
    model = load(args.file, verify=True)
    sections = sum(len(t.spec["sections"]) for t in model.values())
    if args.decode:
        for t in model.values():
            t.dequantize()
    what = " and every tensor decodes" if args.decode else ""
    print(f"{args.file}: OK ({len(model)} tensors, header and {sections} section checksums "
          f"match{what})")
    return 0


def write_arrays(path: str, arrays: dict, metadata: dict[str, str] | None = None) -> None:
    """Write arrays to ``.safetensors`` or ``.npz`` atomically (no partial file on error).

    ``metadata`` goes to a safetensors file's ``__metadata__`` (``.npz`` has none).
    """
    import numpy as np

    from qpack.format import atomic_path
    from qpack.safetensors_file import write_safetensors

    if path.lower().endswith(".safetensors"):
        write_safetensors(path, arrays, metadata)
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{name: np.asarray(arr) for name, arr in arrays.items()})


def _check_npz_dtypes(model, path: str) -> None:
    """``.npz`` cannot hold bfloat16 without pickling: refuse before decoding anything,
    rather than change the dtype."""
    bf16 = [name for name, t in model.items() if t.spec["dtype"] == "bfloat16"]
    if bf16 and path.lower().endswith(".npz"):
        raise CliError(f"{path}: .npz cannot store bfloat16 (tensor {bf16[0]!r}"
                       f"{f' and {len(bf16) - 1} more' if len(bf16) > 1 else ''}); "
                       "write .safetensors instead, which keeps it")


def cmd_decompress(args: argparse.Namespace) -> int:
    """Decode every tensor of a .qpk and write them as .safetensors or .npz; a sharded
    model to a folder of safetensors shards with a Hugging Face index."""
    from qpack.model import load
    from qpack.shards import check_output_folder

    _check_model_path(args.file)
    # a sharded model (its folder or index) decodes to a folder of shards unless the
    # output names one file
    to_folder = (os.path.isdir(args.file) or args.file.endswith(".qpk.index.json")) \
        and not args.output.lower().endswith(MODEL_EXTENSIONS)
    if to_folder:
        try:
            check_output_folder(args.output)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    else:
        _check_output(args.output, MODEL_EXTENSIONS)
    model = load(args.file)
    if to_folder:
        return _decompress_shards(model, args.output)
    _check_npz_dtypes(model, args.output)
    arrays = model.decompress()
    # the input file's own metadata, as compress found it (e.g. {"format": "pt"})
    write_arrays(args.output, arrays, metadata=model.source_metadata)
    print(f"wrote {args.output}: {len(arrays)} tensors, "
          f"{sum(a.nbytes for a in arrays.values()):,} bytes of data")
    return 0


def _decompress_shards(model, folder: str) -> int:
    """A sharded .qpk decoded shard by shard (one shard's arrays in memory at a time) into
    ``model-0000k-of-0000n.safetensors`` files and ``model.safetensors.index.json``
    (written last), each shard with the input's own metadata."""
    from qpack.format import write_bytes_atomic
    from qpack.safetensors_file import write_safetensors

    os.makedirs(folder, exist_ok=True)
    n = len(model.shards)
    weight_map: dict[str, str] = {}
    total = 0
    for k, part in enumerate(model.shards, 1):
        name = f"model-{k:05d}-of-{n:05d}.safetensors"
        arrays = part.decompress()
        write_safetensors(os.path.join(folder, name), arrays, part.source_metadata)
        weight_map.update((t, name) for t in arrays)
        total += sum(a.nbytes for a in arrays.values())
    index = {"metadata": {"total_size": total, **model.source_metadata},
             "weight_map": weight_map}
    write_bytes_atomic(os.path.join(folder, "model.safetensors.index.json"),
                       [json.dumps(index, indent=1).encode("utf-8")])
    print(f"wrote {folder}: {len(weight_map)} tensors in {n} safetensors shards, "
          f"{total:,} bytes of data")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the digits MLP, compress it at several settings, run it from the files."""
    from qpack import demo

    try:
        demo.require_demo_extra()  # scikit-learn is the optional "demo" extra
    except demo.MissingExtraError as exc:
        raise CliError(str(exc)) from None
    return demo.main(quick=args.quick)


def find_benchmarks() -> Path | None:
    """benchmarks/run_all.py of the source checkout qpack was installed from, if present."""
    candidate = Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"
    return candidate if candidate.is_file() else None


def benchmark_names(script: Path) -> list[str]:
    """Names of the benchmarks beside ``script`` (run_all.py): ``bench_*.py`` without the
    ``bench_`` prefix, sorted (e.g. ``['bitpack', 'compress', ...]``)."""
    return sorted(p.stem[len("bench_"):] for p in script.parent.glob("bench_*.py"))


def _select_benchmarks(names: list[str], known: list[str]) -> list[str]:
    """``names`` (with or without the ``bench_`` prefix) as known benchmark names, in order;
    CliUsageError listing the known names if one is not a benchmark."""
    selected = []
    for name in names:
        short = name[len("bench_"):] if name.startswith("bench_") else name
        if short not in known:
            raise CliUsageError(f"unknown benchmark {name!r} for --only (known: "
                                f"{', '.join(known)})")
        if short not in selected:
            selected.append(short)
    return selected


def cmd_bench(args: argparse.Namespace) -> int:
    """Run benchmarks/run_all.py from the source checkout (not part of an installed wheel)."""
    script = find_benchmarks()
    if script is None:
        raise CliError("the benchmark suite is not installed with the package: run "
                       "'qpack bench' from an editable install of a qpack source checkout "
                       "(pip install -e .), or 'python benchmarks/run_all.py' there")
    command = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
    if args.only:
        command += ["--only", *_select_benchmarks(args.only, benchmark_names(script))]
    return subprocess.call(command, cwd=str(script.parent.parent))


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure the dispatch cost model's rates on this machine and cache them."""
    from qpack import dispatch
    from qpack.isa import kernel_info

    costs = dispatch.calibrate(save=not args.dry_run)
    print(f"variant {kernel_info()['isa']}: {costs.source}")
    print(f"  blas: {costs.blas[0]:.3g} ns/weight + {costs.blas[1]:.3g} ns/MAC, tile fill "
          f"{costs.fill_ns_per_weight:.3g} ns/weight")
    for key in sorted(k for k in costs.kernel if k.count("/") == 1):
        k0, k1 = costs.kernel[key]
        print(f"  {key}: {k0:.3g} ns/weight + {k1:.3g} ns/MAC")
    if not args.dry_run:
        print(f"saved to {dispatch.cache_path()}")
    return 0


# -- parser ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``qpack`` command."""
    parser = _Parser(
        prog="qpack",
        description="Compress neural-network weights (pruning, K-means weight sharing, "
                    "1-8-bit quantization, Huffman coding) into .qpk files, and inspect them.",
        epilog="Exit codes: 0 success, 1 bad input (one line on stderr), 2 usage error. "
               "'qpack COMMAND --help' describes each command.")
    parser.add_argument("--version", action="version", version=f"qpack {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback when a command fails")
    # --debug is accepted after the subcommand too; SUPPRESS keeps the top-level value
    # when the subcommand does not repeat it
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback when the command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                parser_class=lambda **kw: _Parser(parents=[common], **kw))

    p = sub.add_parser("compress", help="compress a model (file, shard set or folder) to .qpk",
                       description="Compress every floating tensor of >= 2 dims and at least "
                                   "--min-numel elements; store the others exactly.")
    p.add_argument("input", metavar="IN", nargs="+",
                   help="the model: a .safetensors, .npz, .pt or .bin file, a Hugging Face "
                        "*.index.json shard index or a folder holding one (or one model "
                        "file), or several shard files")
    p.add_argument("-o", "--output", required=True, metavar="OUT.qpk",
                   help="file to write (a folder with --max-shard-size)")
    p.add_argument("--bits", type=_bits, default=4, help="bits per weight code, 1-8 (4)")
    p.add_argument("--prune", type=_fraction, default=0.0,
                   help="fraction of smallest-magnitude weights removed, in [0, 1) (0)")
    p.add_argument("--method", choices=("kmeans", "linear", "log"), default="kmeans",
                   help="kmeans: shared-weight codebook; linear: scale + zero-point; log: "
                        "0 and +-m*2^-k (kmeans)")
    p.add_argument("--group-size", type=_group_size, default=DEFAULT_GROUP_SIZE, metavar="N",
                   help="linear: one scale per N inputs of a row, -1 per row, 'tensor' one "
                        f"for the whole tensor ({DEFAULT_GROUP_SIZE})")
    p.add_argument("--symmetric", action="store_true", help="linear: zero-point at 0")
    p.add_argument("--clip", choices=("minmax", "percentile", "mse"), default=DEFAULT_CLIP,
                   help=f"linear: how the quantization range is chosen ({DEFAULT_CLIP})")
    p.add_argument("--scale-dtype", choices=("float16", "float32"), default="float16",
                   help="linear: dtype of the stored scales (float16)")
    p.add_argument("--per-channel", action="store_true",
                   help="kmeans/log: one codebook per output row")
    p.add_argument("--codebook-dtype", choices=("auto", "float16", "float32"),
                   default="auto",
                   help="kmeans: dtype of the stored codebooks; auto = float16 unless it "
                        "raises the squared error by more than 0.1%% (auto)")
    p.add_argument("--no-entropy", action="store_true",
                   help="skip Huffman coding (larger file, codes usable in place)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="quantize only tensors matching this glob (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="store tensors matching this glob exactly (repeatable)")
    p.add_argument("--override", action="append", default=[], type=parse_override,
                   metavar="'GLOB:key=value,...'",
                   help="per-tensor settings, e.g. 'embed*:bits=8,method=linear' (keys: "
                        "method (kmeans|linear|log|raw), bits, prune, group_size, "
                        "symmetric, clip, entropy, per_channel, init, scale_dtype, "
                        "codebook_dtype; repeatable, later wins)")
    p.add_argument("--target-bpw", type=_target_bpw, default=None, metavar="BPW",
                   help="size budget in bits per quantized weight (codes, index, scales, "
                        "codebooks and header included): each tensor's bits are chosen "
                        "in 1-8 to minimize its relative weight error under it; tensors "
                        "whose bits an --override sets keep them (--bits is then unused)")
    p.add_argument("--min-numel", type=_non_negative_int, default=1024, metavar="N",
                   help="smaller tensors are stored exactly (1024)")
    p.add_argument("--prune-scope", choices=("tensor", "global"), default="tensor",
                   help="prune each tensor by --prune, or one threshold for all (tensor)")
    p.add_argument("--max-shard-size", default=None, metavar="SIZE",
                   help="write a sharded model: OUT is a folder of model-0000k-of-0000n.qpk "
                        "files of at most SIZE (e.g. 5GB, 500MB) plus model.qpk.index.json")
    p.add_argument("--resume", action="store_true",
                   help="with --max-shard-size: keep the shards an interrupted run of the "
                        "same command finished and encode only the rest")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="encode on N local worker processes, which share the cores "
                        "(default: threads of this process)")
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="encode on a Dask cluster (e.g. tcp://10.0.0.5:8786); its workers "
                        "must see the input files at the same paths (needs qpack[dask])")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress counter and no per-tensor report")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("info", help="show a .qpk file's header, metadata and tensors",
                       description="Reads only the header: no tensor is decoded.")
    p.add_argument("file", metavar="FILE.qpk")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("decompress", help="decode a .qpk file to .safetensors or .npz")
    p.add_argument("file", metavar="FILE.qpk",
                   help="a .qpk file, or a sharded model's folder or model.qpk.index.json")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="OUT.safetensors or OUT.npz; for a sharded model also a folder, "
                        "which gets one safetensors shard per .qpk shard and "
                        "model.safetensors.index.json")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("verify", help="check every checksum of a .qpk file",
                       description="Checks the header's and every section's CRC32; exit "
                                   "code 1 naming the damaged section when one fails.")
    p.add_argument("file", metavar="FILE.qpk")
    p.add_argument("--decode", action="store_true",
                   help="also decode every tensor (slower, checks the encoded contents)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="compress a digits MLP at several settings (no download)",
                       description="Trains MLPClassifier(300, 100) on scikit-learn's digits, "
                                   "compresses it at several settings, and runs the test "
                                   "set from each saved .qpk with packed layers. Needs the "
                                   "'demo' extra (scikit-learn): pip install \"qpack[demo]\".")
    p.add_argument("--quick", action="store_true", help="short training, three settings")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("calibrate", help="measure this machine's kernel and BLAS speeds "
                                         "for the kernel-or-tiles choice (a few seconds)",
                       description="Times every packed kernel path and BLAS on one thread "
                                   "and saves the rates for this CPU, kernel variant and "
                                   "build in $QPACK_DISPATCH_CACHE or "
                                   "~/.cache/qpack/dispatch.json, where every later "
                                   "process finds them (qpack.dispatch). Changes speed "
                                   "only, never results beyond float32 rounding.")
    p.add_argument("--dry-run", action="store_true", help="measure and print, save nothing")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("bench", help="run the benchmark suite (source checkout only)")
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute each")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="benchmarks to run, e.g. bitpack or bench_bitpack (the bench_*.py "
                        "files of benchmarks/)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qpack`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a usage error: the help goes to stderr
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `qpack info --json x.qpk | head`: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (CliError, ValueError, OSError) as exc:  # FormatError is a ValueError
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"qpack {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, CliUsageError) else 1
    except KeyboardInterrupt:
        print("qpack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
