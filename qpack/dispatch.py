"""Which code runs a packed matrix product, and on how many threads.

Every dense or sparse product (qpack.matmul's weight objects) asks the current
``DispatchPolicy`` for a ``Plan``: either the packed kernels ("kernel", one pass over
the codes per call) or dequantized row tiles times BLAS ("tiles", W_hat decoded a tile
at a time into a reused float32 buffer that stays in cache, then ``x @ tile.T``).

The choice is a cost model, not a set of thresholds. Each of the two costs has a part
per weight and call and a part per multiply-add (``MACs = batch * weights``)::

    kernel: (weights * k0 + MACs * k1) / threads
    tiles : weights * fill + (weights * b0 + MACs * b1) / threads

``k0, k1`` are the kernel's rates on the path the weight takes with the current ISA
variant (qpack.kernel_info(); columns past the last whole vector block run on the
generic loop and cost its rates): k0 is mostly decoding the codes, which the batched
kernels do once per call. ``b0, b1`` are BLAS's rates on a tile, and ``fill`` the time to
decode one weight into the tile, on one thread: BLAS brings its own thread pool, and an
OpenMP team beside it would fight it for the cores. Tiles win where the kernel's
per-MAC rate exceeds BLAS's by enough to pay the fill, which happens only at large
batches, and never where the kernel is as fast as BLAS. For sparse weights the kernel's
rates apply per kept weight.

The rates come from ``KernelCosts``: built-in defaults (measured on the 2-core AMD EPYC
Zen 4 development machine, one thread, cache-resident weights), or a one-time
calibration of this machine (``calibrate()``, or ``qpack calibrate``) saved in a cache
file and used by every later process on the same CPU, variant and build. The tile size
comes from the cache sizes read from the machine (half the L3, at least the L2; sysfs,
else sysconf, else 32 MiB / 1 MiB).

Tests and benchmarks select a path explicitly: ``DispatchPolicy(path="kernel")`` or
``path="tiles"`` under ``use_policy(...)``, or ``matmul(..., path=...)`` per call.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from qpack.threads import get_num_threads

__all__ = ["DispatchPolicy", "KernelCosts", "Plan", "cache_sizes", "calibrate",
           "get_policy", "set_policy", "use_policy"]

PATHS = ("auto", "kernel", "tiles")
# Below this batch tiles never pay: the kernels read each weight once per call and BLAS
# gains nothing on a few rows (a structural bound, not a tuned one).
TILES_MIN_BATCH = 4
# Columns the vector paths take per block; the rest of a row runs on the generic loop.
_VECTOR_BLOCK = {"avx512": 128, "avx2": 128, "avx512-any": 64, "avx2-any": 64, "neon": 16}
# (the int8 GEMMs, "avx512-gemm" and "avx2-gemm", have no scalar tail: they pad rows to
# 4 columns)
_ENV_CACHE = "QPACK_DISPATCH_CACHE"


Rate = tuple  # (ns per weight and call, ns per multiply-add)


@dataclass(frozen=True)
class KernelCosts:
    """Rates of the cost model, each a pair (ns per weight and call, ns per multiply-add)
    on one thread.

    kernel: the packed kernels, keyed "path/mode" (mode "float" or "int8") or, more
        specific and looked up first, "path/mode/kind-bits" (kind "linear" or
        "codebook"), e.g. "avx512-any/float/codebook-8"; "vector/mode" stands for any
        vector path without a figure of its own.
    blas: numpy's float32 matmul on a tile (the tile path's time less the fill).
    fill_ns_per_weight: decoding one dense weight into a tile.
    sparse: the sparse kernel, per kept weight.
    sparse_fill_ns_per_weight: filling one tile weight (zeros included) from CSR codes.
    source: where the figures come from (printed by ``qpack calibrate``).
    """

    kernel: dict = field(default_factory=dict)
    blas: Rate = (0.0, 0.0108)
    fill_ns_per_weight: float = 0.25
    sparse: Rate = (0.0, 0.106)
    sparse_fill_ns_per_weight: float = 0.15
    source: str = "built-in defaults"

    def kernel_rate(self, path: str, mode: str, kind: str, bits: int) -> Rate:
        """The rates of ``path`` in ``mode`` for ``kind``-``bits`` codes; a vector path
        with no figure of its own gets the median vector path's ("vector/mode")."""
        fallback = "generic" if path == "generic" else "vector"
        for key in (f"{path}/{mode}/{kind}-{bits}", f"{path}/{mode}", f"{fallback}/{mode}",
                    f"generic/{mode}"):
            if key in self.kernel:
                return self.kernel[key]
        return (1.0, 1.0)

    def to_dict(self) -> dict:
        """A JSON-serializable copy."""
        return {"kernel": {k: list(v) for k, v in self.kernel.items()},
                "blas": list(self.blas), "fill_ns_per_weight": self.fill_ns_per_weight,
                "sparse": list(self.sparse),
                "sparse_fill_ns_per_weight": self.sparse_fill_ns_per_weight,
                "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> KernelCosts:
        """Inverse of to_dict; ValueError for a missing, negative or non-finite figure."""
        try:
            table = {str(k): _pair(v, k) for k, v in dict(d["kernel"]).items()}
            return cls(table, _pair(d["blas"], "blas"),
                       _number(d["fill_ns_per_weight"], "fill_ns_per_weight"),
                       _pair(d["sparse"], "sparse"),
                       _number(d["sparse_fill_ns_per_weight"], "sparse_fill_ns_per_weight"),
                       str(d.get("source", "")))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"kernel costs: missing or malformed entry ({exc!r})") from None


def _number(v, name) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e6:
        raise ValueError(f"kernel costs: {name} must be a number in [0, 1e6), got {v!r}")
    return float(v)


def _pair(v, name) -> Rate:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"kernel costs: {name} must be a pair of numbers, got {v!r}")
    return (_number(v[0], name), _number(v[1], name))


# Measured by calibrate() on the development machine (AMD EPYC Zen 4, 2 cores, AVX-512
# VNNI/VBMI, -march=native; the avx2 rows with QPACK_ISA=avx2), one thread, 1024 x 1024
# weights, batches 16 and 128. The avx512/float and avx2/float rows: medians of three
# calibrations on 2026-12-03 (after the batched float tiles; they had been 0.011/0.042
# and 0.033/0.047, which sent 4096x4096 float products at batch 64 to tiles: 25.9 ms
# against 16-21 on the kernel, numpy 20-22).
DEFAULT_COSTS = KernelCosts(
    kernel={
        "generic/float": (0.67, 0.085), "generic/int8": (1.5, 1.5),
        "avx512/float": (0.0, 0.029), "avx512/float/codebook-8": (0.0, 0.11),
        "avx512-any/float": (0.0, 0.056),
        # the row kernels' int8 rates (batches 4-15; the GEMM takes 16 and more)
        "avx512/int8": (0.06, 0.025), "avx512-any/int8": (0.07, 0.045),
        "avx512-gemm/int8": (0.031, 0.010),
        "avx2/float": (0.0, 0.036), "avx2/float/codebook-8": (0.092, 0.11),
        "avx2/int8": (0.0, 0.027), "avx2-any/float": (0.11, 0.045),
        "avx2-any/int8": (0.36, 0.030),
        # the AVX2 GEMM (batches from 16; QPACK_ISA=avx2, median of two calibrations)
        "avx2-gemm/int8": (0.12, 0.017),
        "vector/float": (0.05, 0.05), "vector/int8": (0.1, 0.03),
    },
    blas=(0.66, 0.021), fill_ns_per_weight=0.10, sparse=(3.2, 0.135),
    sparse_fill_ns_per_weight=0.15, source="built-in defaults (AMD EPYC Zen 4)")


@dataclass(frozen=True)
class Plan:
    """What one product runs: ``path`` "kernel" or "tiles", ``threads`` for the kernel
    (or BLAS), and ``tile_rows`` weight rows per tile (0 on the kernel path)."""

    path: str
    threads: int
    tile_rows: int = 0


def _sysfs_caches() -> dict:
    """{level: bytes} of the data/unified caches of cpu0 from sysfs ({} if unreadable)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    out: dict = {}
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return out
    for e in entries:
        if not e.startswith("index"):
            continue
        try:
            with open(os.path.join(base, e, "level")) as f:
                level = int(f.read())
            with open(os.path.join(base, e, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(base, e, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
        out[level] = max(out.get(level, 0), size)
    return out


def cache_sizes() -> dict:
    """{"l1d", "l2", "l3"}: bytes per cache level of this machine, from sysfs, else
    sysconf, else 32 KiB / 1 MiB / 32 MiB (a level the machine lacks reads as 0 only when
    the source says so)."""
    found = _sysfs_caches()
    names = {1: "SC_LEVEL1_DCACHE_SIZE", 2: "SC_LEVEL2_CACHE_SIZE", 3: "SC_LEVEL3_CACHE_SIZE"}
    defaults = {1: 32 << 10, 2: 1 << 20, 3: 32 << 20}
    out = {}
    for level, key in ((1, "l1d"), (2, "l2"), (3, "l3")):
        size = found.get(level)
        if not size:
            try:
                size = int(os.sysconf(names[level]))
            except (ValueError, OSError, AttributeError):
                size = 0
        out[key] = size if size > 0 else defaults[level]
    return out


# A VM reports its host socket's whole L3 (480 MiB on 2026-12-04's 2-core machine), of
# which its cores get a share: half of it made one 240 MiB tile of a 4096x4096 matrix,
# written out to memory and read back (tiles 2x numpy at batch 64).
TILE_BYTES_MAX = 16 << 20


def default_tile_bytes() -> int:
    """Bytes of float32 weights per tile by default: half the L3, at least the L2 and at
    most TILE_BYTES_MAX (a tile is written by the fill and read back by BLAS while still
    in cache)."""
    sizes = cache_sizes()
    return max(sizes["l2"], min(TILE_BYTES_MAX, sizes["l3"] // 2))


class DispatchPolicy:
    """Chooses kernel or tiles, the thread count and the tile size for each product.

    Parameters
    ----------
    path : "auto" (the cost model, module docstring), "kernel" (always the packed
        kernels) or "tiles" (always dequantized tiles + BLAS).
    costs : KernelCosts; default: this machine's calibration if one is cached, else
        DEFAULT_COSTS.
    tile_bytes : bytes of float32 weights per tile; default half the L3 (at least the
        L2; cache_sizes()). Each BLAS call repacks all of x, so small tiles pay that per
        tile: on 4096x4096 at batch 450, 2 threads, 1 MiB tiles (64 rows) took 141-157
        ms against 105-107 for 16 MiB (numpy on the float32 matrix: 83-111).
    min_macs_per_thread : products with fewer multiply-adds per thread run on fewer
        threads (waking a second OpenMP thread costs more than it saves on small layers).
    threads : a fixed thread count, or None for qpack.get_num_threads() at each call.

    Raises ValueError for an unknown path or a non-positive size.
    """

    def __init__(self, path: str = "auto", *, costs: KernelCosts | None = None,
                 tile_bytes: int | None = None, min_macs_per_thread: int = 1 << 21,
                 threads: int | None = None):
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        for name, v in (("tile_bytes", tile_bytes), ("min_macs_per_thread",
                                                     min_macs_per_thread),
                        ("threads", threads)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if costs is not None and not isinstance(costs, KernelCosts):
            raise ValueError(f"costs must be a KernelCosts, got {type(costs).__name__}")
        self.path = path
        self.costs = costs if costs is not None else _machine_costs()
        self.tile_bytes = tile_bytes if tile_bytes is not None else default_tile_bytes()
        self.min_macs_per_thread = min_macs_per_thread
        self.threads = threads

    def __repr__(self) -> str:
        return (f"DispatchPolicy(path={self.path!r}, tile_bytes={self.tile_bytes}, "
                f"min_macs_per_thread={self.min_macs_per_thread}, threads={self.threads}, "
                f"costs={self.costs.source!r})")

    def threads_for(self, macs: int) -> int:
        """Threads for a product of ``macs`` multiply-adds: the allowed count, fewer for
        small products (at least min_macs_per_thread each)."""
        allowed = self.threads if self.threads is not None else get_num_threads()
        return max(1, min(allowed, macs // self.min_macs_per_thread))

    def _tile_rows(self, n_out: int, n_in: int) -> int:
        return max(1, min(n_out, self.tile_bytes // (4 * max(n_in, 1))))

    def _choose(self, forced: str | None, batch: int, n_out: int, n_in: int,
                kernel: Rate, kernel_weights: int, kernel_macs: int, fill: float) -> Plan:
        """kernel: its rates, applied to ``kernel_weights`` (all, or the kept ones) and
        to batch times as many multiply-adds; ``kernel_macs`` sizes its thread count."""
        path = forced or self.path
        if path == "auto":
            weights = n_out * n_in
            nt = self.threads_for(kernel_macs)
            kernel_ns = kernel_weights * (kernel[0] + batch * kernel[1]) / nt
            b0, b1 = self.costs.blas
            nt_blas = self.threads_for(batch * weights)
            tile_ns = weights * (fill + (b0 + batch * b1) / nt_blas)
            path = "tiles" if batch >= TILES_MIN_BATCH and tile_ns < kernel_ns else "kernel"
        if path == "tiles":
            # BLAS threads: numpy's own pool, which follows the same limits
            return Plan("tiles", self.threads_for(batch * n_out * n_in),
                        self._tile_rows(n_out, n_in))
        return Plan("kernel", self.threads_for(kernel_macs))

    def dense_plan(self, weights, batch: int, int8: bool, path: str | None = None) -> Plan:
        """Plan for ``batch`` rows times a LinearWeights/CodebookWeights (int8: the int8
        activation mode). ``path`` overrides the policy's own for this call."""
        n_out, n_in = weights.shape
        mode = "int8" if int8 else "float"
        kpath = weights.kernel_paths(batch)[mode]
        rate = self.costs.kernel_rate(kpath, mode, weights.kind, weights.bits)
        block = _VECTOR_BLOCK.get(kpath)
        if block and n_in % block:  # the row tails run on the generic loop
            tail = n_in % block
            generic = self.costs.kernel_rate("generic", mode, weights.kind, weights.bits)
            rate = tuple((v * (n_in - tail) + g * tail) / n_in
                         for v, g in zip(rate, generic, strict=True))
        return self._choose(check_path(path), batch, n_out, n_in, rate, n_out * n_in,
                            batch * n_out * n_in, self.costs.fill_ns_per_weight)

    def sparse_plan(self, weights, batch: int, path: str | None = None) -> Plan:
        """Plan for ``batch`` rows times a SparseWeights (``path`` as in dense_plan)."""
        n_out, n_in = weights.shape
        # a kept weight costs about as much as 8 dense multiply-adds (a gather and a table
        # look-up; measured 4096x4096: 1.7M kept weights take as long as 16.7M dense MACs)
        return self._choose(check_path(path), batch, n_out, n_in, self.costs.sparse,
                            weights.nnz, batch * max(8 * weights.nnz, n_out),
                            self.costs.sparse_fill_ns_per_weight)


def check_path(path: str | None) -> str | None:
    """A per-call path override: None (or "auto": the policy's) or "kernel"/"tiles";
    ValueError otherwise."""
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be None or one of {PATHS}, got {path!r}")
    return None if path == "auto" else path


# ---- the current policy ----------------------------------------------------------------

_global: DispatchPolicy | None = None
_local = threading.local()
_lock = threading.Lock()


def get_policy() -> DispatchPolicy:
    """The policy products started now on this thread use: the innermost use_policy
    block's, else set_policy's, else a default DispatchPolicy() (built on first use)."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    global _global
    if _global is None:
        with _lock:
            if _global is None:
                _global = DispatchPolicy()
    return _global


def set_policy(policy: DispatchPolicy | None) -> None:
    """Make ``policy`` the process-wide default (None: back to DispatchPolicy(), rebuilt
    on next use, so a calibration saved meanwhile is picked up)."""
    if policy is not None and not isinstance(policy, DispatchPolicy):
        raise ValueError(f"policy must be a DispatchPolicy or None, got "
                         f"{type(policy).__name__}")
    global _global
    _global = policy


@contextmanager
def use_policy(policy: DispatchPolicy) -> Iterator[DispatchPolicy]:
    """Within this block, products on the current thread use ``policy``."""
    if not isinstance(policy, DispatchPolicy):
        raise ValueError(f"policy must be a DispatchPolicy, got {type(policy).__name__}")
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(policy)
    try:
        yield policy
    finally:
        stack.pop()


# ---- calibration -----------------------------------------------------------------------

def machine_key() -> str:
    """What a calibration is valid for: CPU model, kernel variant, build flags, qpack."""
    from qpack import __version__
    from qpack.isa import kernel_info

    info = kernel_info()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} | {info['isa']} | {info['compile_flags']} | qpack {__version__}"


def cache_path() -> str:
    """The calibration file: $QPACK_DISPATCH_CACHE, else qpack/dispatch.json under
    $XDG_CACHE_HOME (default ~/.cache)."""
    env = os.environ.get(_ENV_CACHE)
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "qpack", "dispatch.json")


def _machine_costs() -> KernelCosts:
    """This machine's cached calibration when one matches machine_key(), else defaults.
    A missing, unreadable or malformed file means defaults (speed only, never results)."""
    try:
        with open(cache_path()) as f:
            entry = json.load(f).get(machine_key())
        if isinstance(entry, dict):
            return KernelCosts.from_dict(entry)
    except (OSError, ValueError, AttributeError):
        pass
    return DEFAULT_COSTS


def _save(costs: KernelCosts, path: str) -> None:
    """Store costs under machine_key() in the JSON file at path (atomic replace, other
    machines' entries kept)."""
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[machine_key()] = costs.to_dict()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".dispatch-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _best_ns(call, repeat: int) -> float:
    """Fastest of ``repeat`` timed calls after a warm-up: the cost itself, without what
    other processes on a shared machine add to some of the calls."""
    call()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        call()
        best = min(best, time.perf_counter_ns() - t0)
    return float(best)


def _two_point(time_at, weights: int, lo: int, hi: int) -> Rate:
    """Rates (per weight, per MAC) fitted through time_at(lo) and time_at(hi) ns."""
    t_lo, t_hi = time_at(lo), time_at(hi)
    per_mac = max(0.0, (t_hi - t_lo) / (weights * (hi - lo)))
    return (max(0.0, t_lo / weights - lo * per_mac), per_mac)


# both from 16, so that int8 products run on the GEMM at both (QK_GEMM_MIN_BATCH)
CALIBRATION_BATCHES = (16, 128)


def calibrate(save: bool = True, *, n: int = 1024, repeat: int = 7) -> KernelCosts:
    """Measure the cost model's rates on this machine (one thread, n x n weights, batches
    16 and 128; a few seconds) and, with ``save``, store them in cache_path() for this CPU,
    variant and build, where every later DispatchPolicy() finds them.

    Every encoding (linear g128 and codebook, 2..8 bits) is timed on the path it takes
    with the current variant, and three on the generic loop. Returns the KernelCosts.
    Raises ValueError for n < 128 or not a multiple of 128, or repeat < 1.
    """
    import numpy as np

    from qpack import isa
    from qpack.bitpack import pack
    from qpack.matmul import CodebookWeights, LinearWeights, SparseWeights
    from qpack.threads import set_num_threads, threads_requested

    if isinstance(n, bool) or not isinstance(n, int) or n < 128 or n % 128:
        raise ValueError(f"n must be a positive multiple of 128, got {n!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive integer, got {repeat!r}")
    lo, hi = CALIBRATION_BATCHES
    rng = np.random.default_rng(0)
    xs = {b: rng.standard_normal((b, n)).astype(np.float32) for b in (lo, hi)}
    ys = {b: np.empty((b, n), dtype=np.float32) for b in (lo, hi)}
    previous_threads = threads_requested()
    allowed = get_num_threads()
    previous_isa = isa.get_isa()
    kernel = DispatchPolicy("kernel", costs=DEFAULT_COSTS, threads=1, min_macs_per_thread=1)

    def encodings(rows: int) -> dict:
        ng = n // 128
        scales = (rng.random((rows, ng)) * 0.01 + 1e-3).astype(np.float32)
        out = {}
        for bits in range(2, 9):
            packed = pack(rng.integers(0, 1 << bits, (rows, n), dtype=np.uint8), bits)
            zeros = np.full((rows, ng), (1 << bits) // 2, dtype=np.uint8)
            out[("linear", bits)] = LinearWeights.from_packed(packed, bits, scales, zeros,
                                                              128, (rows, n))
            cb = np.sort(rng.standard_normal(1 << bits)).astype(np.float32)
            out[("codebook", bits)] = CodebookWeights.from_packed(packed, bits, cb, (rows, n))
        return out

    def product_ns(w, act, batch):
        x = xs[batch]
        y = ys[batch] if w.shape[0] == n else None
        with use_policy(kernel):
            return _best_ns(lambda: w.matmul(x, act, out=y), repeat)

    table: dict = {}
    try:
        set_num_threads(1)
        # the generic loop is ~50x slower: three encodings on n / 8 rows give its rates
        plan = (("ref", encodings(n // 8), {("linear", 4), ("linear", 5), ("codebook", 4)}),
                (previous_isa, encodings(n), None))
        for variant, weights, only in plan:
            isa.set_isa(variant)
            for (kind, bits), w in weights.items():
                if only is not None and (kind, bits) not in only:
                    continue
                for mode in ("float", "int8"):
                    key = f"{w.kernel_paths(lo)[mode]}/{mode}/{kind}-{bits}"
                    if key not in table:
                        act = "int8" if mode == "int8" else None
                        table[key] = _two_point(lambda b, w=w, act=act: product_ns(w, act, b),
                                                w.shape[0] * n, lo, hi)
        isa.set_isa(previous_isa)
        # per path and mode: the median over encodings, for encodings not measured
        by_path: dict = {}
        for key, v in table.items():
            path, mode, _ = key.split("/")
            by_path.setdefault(f"{path}/{mode}", []).append(v)
            if not path.startswith("generic"):
                by_path.setdefault(f"vector/{mode}", []).append(v)
        for key, vs in by_path.items():
            table[key] = sorted(vs, key=lambda r: r[0] + hi * r[1])[len(vs) // 2]
        w4 = plan[1][1][("linear", 4)]
        tile = np.empty((n, n), dtype=np.float32)
        fill = _best_ns(lambda: w4._kernel.dequantize_rows(0, tile, 1), repeat) / (n * n)
        tiles = DispatchPolicy("tiles", costs=DEFAULT_COSTS, threads=1)

        def tiles_ns(b):
            with use_policy(tiles):
                return _blas_one_thread_ns(lambda: w4.matmul(xs[b], out=ys[b]), repeat,
                                           allowed)
        t0, t1 = _two_point(tiles_ns, n * n, lo, hi)
        blas = (max(0.0, t0 - fill), t1)
        mask = rng.random((n, n)) < 0.1
        row_ptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
        sparse = SparseWeights.from_csr(
            (n, n), row_ptr, np.nonzero(mask)[1],
            rng.integers(0, 16, int(mask.sum()), dtype=np.uint8),
            codebook=np.linspace(-1, 1, 16, dtype=np.float32))
        sparse_rate = _two_point(lambda b: product_ns(sparse, None, b), sparse.nnz, lo, hi)
        sparse_fill = _best_ns(lambda: sparse._kernel.dequantize_rows(0, tile, 1),
                                 repeat) / (n * n)
    finally:
        isa.set_isa(previous_isa)
        set_num_threads(previous_threads)
    costs = KernelCosts(table, blas, fill, sparse_rate, sparse_fill,
                        f"calibrated {time.strftime('%Y-%m-%d %H:%M')} on {machine_key()}")
    if save:
        _save(costs, cache_path())
        set_policy(None)  # the next default policy reads the new figures
    return costs


def _blas_one_thread_ns(call, repeat: int, allowed: int) -> float:
    """Median ns of a numpy matmul on one BLAS thread (threadpoolctl limits the pool when
    installed; without it the pool runs as configured and the time is scaled by the
    ``allowed`` thread count, assuming BLAS scales perfectly)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return _best_ns(call, repeat) * allowed
    with threadpool_limits(limits=1, user_api="blas"):
        return _best_ns(call, repeat)
