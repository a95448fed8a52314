"""Bit packing throughput: qpack.pack / qpack.unpack against the best plain-numpy packer.

For every width 1..8 both sides pack and unpack the same random codes into reused output
buffers; figures are million codes per second (medians after a warm-up) and the speed-up
over numpy measured in the same run, with qpack on one thread and on all threads. numpy is
single-threaded, so its figure is measured once per width and shared by both rows.
"""

from __future__ import annotations

import os

import numpy as np
from harness import median_time

import qpack
from qpack._kernels import bitpack as _kernels


class NumpyPacker:
    """The fastest plain-numpy packer we know for one width, with reused scratch memory.

    * 1 bit: np.packbits / np.unpackbits with bitorder="little" (C loops; these two
      functions have no ``out=``, so this side allocates its result every call).
    * 2 and 4 bits: each byte holds 8/b whole codes: byte j = OR of codes[per*j + t] << t*b,
      so one strided shift and one OR per code position t into a reused output.
    * 3, 5, 6, 7 bits: 8 codes fill b bytes. Viewing codes as (G, 8) and bytes as (G, b),
      every byte column is the OR of the (at most 3) code columns overlapping it, shifted
      into place; unpacking shifts each code column back out of its one or two bytes.
    * 8 bits: a copy.
    """

    def __init__(self, bits: int, n: int):
        self.bits, self.n = bits, n
        self.per = 8 // bits if 8 % bits == 0 else 0
        rows = n // self.per if self.per else n // 8
        self.tmp = np.empty(rows, np.uint8)

    def pack(self, codes: np.ndarray, out: np.ndarray) -> np.ndarray:
        b, per, tmp = self.bits, self.per, self.tmp
        if b == 1:
            return np.packbits(codes, bitorder="little")
        if b == 8:
            np.copyto(out, codes)
            return out
        if per:
            np.copyto(out, codes[0::per])
            for t in range(1, per):
                np.left_shift(codes[t::per], t * b, out=tmp)
                np.bitwise_or(out, tmp, out=out)
            return out
        c8, p8 = codes.reshape(-1, 8), out.reshape(-1, b)
        for j in range(b):
            first = True
            for k in range(8):
                shift = k * b - 8 * j  # where code k's bit 0 lands in byte j
                if shift >= 8 or shift + b <= 0:
                    continue  # code k does not overlap byte j
                dst = p8[:, j] if first else tmp
                if shift >= 0:
                    np.left_shift(c8[:, k], shift, out=dst)
                else:
                    np.right_shift(c8[:, k], -shift, out=dst)
                if not first:
                    np.bitwise_or(p8[:, j], tmp, out=p8[:, j])
                first = False
        return out

    def unpack(self, packed: np.ndarray, out: np.ndarray) -> np.ndarray:
        b, per, tmp = self.bits, self.per, self.tmp
        mask = (1 << b) - 1
        if b == 1:
            return np.unpackbits(packed, bitorder="little")
        if b == 8:
            np.copyto(out, packed)
            return out
        if per:
            for t in range(per):
                col = out[t::per]
                np.right_shift(packed, t * b, out=col)
                if t < per - 1:  # the top code of a byte needs no mask
                    np.bitwise_and(col, mask, out=col)
            return out
        p8, c8 = packed.reshape(-1, b), out.reshape(-1, 8)
        for k in range(8):
            j, off = divmod(k * b, 8)
            col = c8[:, k]
            np.right_shift(p8[:, j], off, out=col)
            if off + b > 8:  # the code continues in the next byte
                np.left_shift(p8[:, j + 1], 8 - off, out=tmp)
                np.bitwise_or(col, tmp, out=col)
            if off + b != 8:
                np.bitwise_and(col, mask, out=col)
        return out


class NumpyTablePacker:
    """Table-lookup packing in plain numpy for 1, 2 and 4 bits (np.take into reused output).

    Unpack: a 256-entry table maps a packed byte to its 8/b codes as one little-endian
    word, and np.take writes those words straight into the output viewed as words.
    Pack (2 and 4 bits): a 65536-entry table maps two code bytes (read as one uint16) to
    the byte c0 | c1 << 4; at 2 bits the same lookup first merges pairs of codes into
    4-bit values, then packs those pairs again with the 4-bit table.
    """

    def __init__(self, bits: int, n: int):
        self.bits = bits
        per = 8 // bits
        self.word = {2: np.uint16, 4: np.uint32, 8: np.uint64}[per]
        values = np.arange(256, dtype=np.uint64)
        fields = (values[:, None] >> (np.arange(per, dtype=np.uint64) * bits)) & ((1 << bits) - 1)
        self.unpack_table = (fields << (8 * np.arange(per, dtype=np.uint64))).sum(axis=1)
        self.unpack_table = self.unpack_table.astype(self.word)
        pairs = np.arange(65536, dtype=np.uint32)
        self.pair_table = {w: (((pairs & 0xFF) & ((1 << w) - 1))
                               | (((pairs >> 8) & ((1 << w) - 1)) << w)).astype(np.uint8)
                           for w in (2, 4)}
        self.tmp = np.empty(n // 2, np.uint8)

    def pack(self, codes: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self.bits == 4:
            np.take(self.pair_table[4], codes.view(np.uint16), out=out)
        else:  # 2 bits: codes -> 4-bit pairs -> bytes
            np.take(self.pair_table[2], codes.view(np.uint16), out=self.tmp)
            np.take(self.pair_table[4], self.tmp.view(np.uint16), out=out)
        return out

    def unpack(self, packed: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.take(self.unpack_table, packed, out=out.view(self.word))
        return out


def _numpy_candidates(bits: int, n: int) -> tuple[dict, dict]:
    """Plain-numpy pack and unpack implementations to try for one width, by name."""
    shift = NumpyPacker(bits, n)
    shift_name = {1: "np.packbits", 8: "copy"}.get(bits, "shift/or")
    packs = {shift_name: shift.pack}
    unpacks = {{1: "np.unpackbits", 8: "copy"}.get(bits, "shift/and"): shift.unpack}
    if bits in (1, 2, 4):
        table = NumpyTablePacker(bits, n)
        unpacks["table lookup"] = table.unpack
        if bits != 1:
            packs["table lookup"] = table.pack
    return packs, unpacks


def _fastest(candidates: dict, arg: np.ndarray, out: np.ndarray, expect: np.ndarray,
             repeat: int) -> tuple[str, float]:
    """Check every candidate's result, then return the name and median time of the fastest."""
    best = None
    for name, fn in candidates.items():
        if not np.array_equal(fn(arg, out), expect):
            raise AssertionError(f"numpy candidate {name!r} gives a wrong result")
        t = median_time(lambda fn=fn: fn(arg, out), repeat)
        if best is None or t < best[1]:
            best = (name, t)
    return best


def _mcodes(n: int, seconds: float) -> float:
    return n / seconds / 1e6


def _measure_width(bits: int, raw: np.ndarray, repeat: int, thread_counts: list[int]):
    """Table rows for one width: qpack at each thread count against the numpy packer."""
    n = raw.size
    codes = raw >> (8 - bits)
    nbytes = qpack.packed_nbytes(n, bits)
    packed = np.empty(nbytes, np.uint8)
    unpacked = np.empty(n, np.uint8)
    np_packed = np.empty(nbytes, np.uint8)
    np_unpacked = np.empty(n, np.uint8)
    packs, unpacks = _numpy_candidates(bits, n)
    qpack.pack(codes, bits, out=packed)
    if not np.array_equal(qpack.unpack(packed, bits, n), codes):
        raise AssertionError(f"qpack round trip fails at {bits} bits")
    # numpy's best: every candidate must reproduce qpack's bytes before it is timed.
    np_pack_name, t_np_pack = _fastest(packs, codes, np_packed, packed, repeat)
    np_unpack_name, t_np_unpack = _fastest(unpacks, packed, np_unpacked, codes, repeat)
    rows = []
    for th in thread_counts:
        qpack.set_num_threads(th)
        t_pack = median_time(lambda: qpack.pack(codes, bits, out=packed), repeat)
        t_unpack = median_time(lambda: qpack.unpack(packed, bits, n, out=unpacked), repeat)
        if not np.array_equal(unpacked, codes):
            raise AssertionError(f"qpack.unpack is wrong at {bits} bits")
        rows.append([
            bits, th,
            _mcodes(n, t_pack), _mcodes(n, t_np_pack), t_np_pack / t_pack,
            _mcodes(n, t_unpack), _mcodes(n, t_np_unpack), t_np_unpack / t_unpack,
            t_unpack / t_pack,
        ])
    return rows, [bits, np_pack_name, np_unpack_name]


def run(quick: bool) -> dict:
    """Measure pack/unpack for widths 1..8; see the module docstring."""
    n = (4 << 20) if quick else (64 << 20)
    repeat = 3 if quick else 7
    thread_counts = sorted({1, qpack.get_num_threads()})
    raw = np.random.default_rng(0).integers(0, 256, size=n, dtype=np.uint8)
    # A second, cache-resident size shows kernel speed rather than memory bandwidth (the
    # case of inference code unpacking a block of rows at a time), on one thread.
    n_cached = 1 << 18
    rows, peers, cached_rows = [], [], []
    try:
        for bits in range(1, 9):
            width_rows, peer = _measure_width(bits, raw, repeat, thread_counts)
            rows += width_rows
            peers.append(peer)
            cached, _ = _measure_width(bits, raw[:n_cached], 5 * repeat, [1])
            cached_rows += cached
    finally:
        qpack.set_num_threads(None)
    columns = ["bits", "threads", "pack Mc/s", "numpy pack Mc/s", "pack ×numpy",
               "unpack Mc/s", "numpy unpack Mc/s", "unpack ×numpy", "pack / unpack"]
    return {
        "title": "Bit packing throughput (million codes/s; ratio = qpack / numpy, same run)",
        "columns": columns,
        "rows": rows,
        "tables": [
            {"title": "Fastest plain-numpy implementation per width (the peer above)",
             "columns": ["bits", "numpy pack", "numpy unpack"], "rows": peers},
            {"title": f"In cache: {n_cached // 1024}K codes per call, one thread, median of "
                      f"{5 * repeat} runs (peer chosen again at this size)",
             "columns": columns, "rows": cached_rows},
        ],
        "notes": [
            f"{n / 2**20:.0f}M random codes per width, 1-D; median of {repeat} runs after a "
            "warm-up; both sides write into reused output buffers, except np.packbits / "
            "np.unpackbits (1 bit), which have no out= and allocate.",
            "qpack.pack includes its range check of the codes (fused into the kernel); the "
            "numpy packer does not check.",
            "numpy peer: the faster, in this run, of shift/or (strided per code position for "
            "2/4 bits, per byte column of 8-code groups for 3/5/6/7 bits, np.packbits/"
            "np.unpackbits for 1 bit, a copy for 8 bits) and np.take table lookups (1/2/4 "
            "bits); numpy is single-threaded, so both rows of a width share its figure.",
            f"qpack kernels: vectorized byte loops for 1/2/4 bits, {_kernels.odd_width_path()} "
            f"for 3/5/6/7 bits; {os.cpu_count()} CPUs; threads = qpack.set_num_threads.",
        ],
        "n_codes": n,
        "repeat": repeat,
    }
