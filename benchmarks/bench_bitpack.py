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
    peer = NumpyPacker(bits, n)
    # Both sides must agree before either is timed.
    qpack.pack(codes, bits, out=packed)
    if not np.array_equal(peer.pack(codes, np_packed), packed):
        raise AssertionError(f"numpy and qpack packers disagree at {bits} bits")
    if not np.array_equal(peer.unpack(packed, np_unpacked), codes):
        raise AssertionError(f"numpy unpacker is wrong at {bits} bits")
    t_np_pack = median_time(lambda: peer.pack(codes, np_packed), repeat)
    t_np_unpack = median_time(lambda: peer.unpack(packed, np_unpacked), repeat)
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
    return rows


def run(quick: bool) -> dict:
    """Measure pack/unpack for widths 1..8; see the module docstring."""
    n = (4 << 20) if quick else (64 << 20)
    repeat = 3 if quick else 7
    thread_counts = sorted({1, qpack.get_num_threads()})
    raw = np.random.default_rng(0).integers(0, 256, size=n, dtype=np.uint8)
    rows = []
    try:
        for bits in range(1, 9):
            rows += _measure_width(bits, raw, repeat, thread_counts)
    finally:
        qpack.set_num_threads(None)
    return {
        "title": "Bit packing throughput (million codes/s; ratio = qpack / numpy, same run)",
        "columns": ["bits", "threads", "pack Mc/s", "numpy pack Mc/s", "pack ×numpy",
                    "unpack Mc/s", "numpy unpack Mc/s", "unpack ×numpy", "pack / unpack"],
        "rows": rows,
        "notes": [
            f"{n / 2**20:.0f}M random codes per width, 1-D; median of {repeat} runs after a "
            "warm-up; both sides write into reused output buffers, except np.packbits / "
            "np.unpackbits (1 bit), which have no out= and allocate.",
            "qpack.pack includes its range check of the codes (fused into the kernel); the "
            "numpy packer does not check.",
            "numpy peer: strided shift/or per code position for 2/4 bits, per byte column of "
            "8-code groups for 3/5/6/7 bits, np.packbits/np.unpackbits for 1 bit, a copy "
            "for 8 bits; it is single-threaded, so both rows of a width share its figure.",
            f"qpack kernels: vectorized byte loops for 1/2/4 bits, {_kernels.ODD_WIDTH_PATH} "
            f"for 3/5/6/7 bits; {os.cpu_count()} CPUs; threads = qpack.set_num_threads.",
        ],
        "n_codes": n,
        "repeat": repeat,
    }
