# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Bit-packing kernels: b-bit codes (1 <= b <= 8) <-> LSB-first packed bytes.

Layout (docs/FORMAT.md): code i occupies stream bits i*b .. i*b+b-1 and stream bit k is
bit (k mod 8) of byte k div 8. Eight codes of b bits fill exactly b bytes, so a row is a
run of b-byte groups of 8 codes plus a partial group of r codes in ceil(r*b/8) bytes.

The loops are C in qpack/_kernels/include/qk_unpack.h, shared with the matmul kernels;
it lists the paths per width. Each vector path is compiled for its instruction set with a
function attribute, and the variant runs that this CPU supports (qpack.kernel_info()).

Every function here trusts its caller (qpack/bitpack.py) to have checked dtypes, shapes,
and that every buffer is long enough for the row lengths it passes. That is why bounds
checking and wraparound are off: the wrapper already proved each index is in range. Code
values are NOT trusted: ``pack_rows`` returns the OR of every code it read so the wrapper
can reject a code >= 2**bits without a separate pass over the input.
"""

from cython.parallel cimport prange
from libc.stdint cimport uint8_t

from qpack._kernels import initial_isa
from qpack._kernels.qk cimport qk_isa_best, qk_isa_supported, qk_pack_any, qk_unpack_any

# Rows shorter than this many codes are packed one row per thread; a long row (such as
# a 1-D array) is instead split into chunks of this many codes (a multiple of 8, so each
# chunk starts on a byte boundary) that threads take independently.
cdef enum:
    CHUNK_CODES = 65536

# Below this many codes in total the kernels run on the calling thread: the work takes
# microseconds, less than waking a second thread (and far less than waiting for a CPU
# when the machine is busy, which costs a scheduler time slice).
cdef enum:
    PARALLEL_MIN = 262144

PARALLEL_MIN_CODES = PARALLEL_MIN
CHUNK_SIZE_CODES = CHUNK_CODES

# The instruction-set variant the kernels run (qk_isa.h levels), chosen at import.


cdef int _isa = initial_isa(qk_isa_best(), lambda level: qk_isa_supported(level))


def set_isa(int isa):
    """Run the ``isa`` variant (0 ref, 1 avx2, 2 avx512, 3 neon); ValueError if this CPU
    lacks it."""
    global _isa
    if not qk_isa_supported(isa):
        raise ValueError(f"this CPU cannot run kernel variant {isa}")
    _isa = isa


def get_isa():
    """The variant the kernels run (0 ref, 1 avx2, 2 avx512)."""
    return _isa


_ODD_WIDTH_PATHS = ("portable simple loop", "bmi2 pext/pdep", "avx512-vbmi + bmi2 tail",
                    "portable simple loop")  # neon: 2 and 4 bits only


def odd_width_path():
    """Which path the current variant uses for 3/5/6/7 bits (reported by the benchmark)."""
    return _ODD_WIDTH_PATHS[_isa]


# boundscheck/wraparound are off in both kernels below: qpack.bitpack.pack/unpack checked
# every shape and length they pass (see the module docstring).
def pack_rows(const uint8_t[:, ::1] codes, uint8_t[:, ::1] out, int bits, int num_threads=1):
    """Pack each row of ``codes`` (rows, ncols) into ``out`` (rows, ceil(ncols*bits/8)).

    Returns the bitwise OR of every code read (0 for bits == 8, where every byte is a valid
    code); the caller rejects the input if it has bits at or above ``bits``. Trusts the
    caller: 1 <= bits <= 8 and out has exactly that shape.
    """
    cdef Py_ssize_t rows = codes.shape[0], ncols = codes.shape[1]
    cdef Py_ssize_t i, c, task, nchunks, start, length
    cdef Py_ssize_t chunk_bytes = (CHUNK_CODES // 8) * bits
    cdef uint8_t seen = 0
    cdef int isa = _isa
    if rows == 0 or ncols == 0:
        return 0
    if rows * ncols < PARALLEL_MIN:
        num_threads = 1
    if num_threads == 1:  # skip the OpenMP region: it costs more than small inputs
        with nogil:
            for i in range(rows):
                seen |= qk_pack_any(&codes[i, 0], &out[i, 0], ncols, bits, isa)
        return seen
    if ncols <= CHUNK_CODES:
        for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
            seen |= qk_pack_any(&codes[i, 0], &out[i, 0], ncols, bits, isa)
        return seen
    # Long rows: every (row, chunk) pair is an independent task.
    nchunks = (ncols + CHUNK_CODES - 1) // CHUNK_CODES
    for task in prange(rows * nchunks, nogil=True, num_threads=num_threads,
                       schedule="static"):
        i = task // nchunks
        c = task % nchunks
        start = c * CHUNK_CODES
        length = min(CHUNK_CODES, ncols - start)
        seen |= qk_pack_any(&codes[i, start], &out[i, c * chunk_bytes], length, bits, isa)
    return seen


def unpack_rows(const uint8_t[:, ::1] packed, uint8_t[:, ::1] out, int bits,
                int num_threads=1):
    """Unpack each row of ``packed`` into ``out`` (rows, ncols).

    Trusts the caller: 1 <= bits <= 8 and each packed row holds >= ceil(ncols*bits/8) bytes.
    Padding bits after the last code of a row are never read into a code.
    """
    cdef Py_ssize_t rows = out.shape[0], ncols = out.shape[1]
    cdef Py_ssize_t i, c, task, nchunks, start, length
    cdef Py_ssize_t chunk_bytes = (CHUNK_CODES // 8) * bits
    cdef int isa = _isa
    if rows == 0 or ncols == 0:
        return
    if rows * ncols < PARALLEL_MIN:
        num_threads = 1
    if num_threads == 1:
        with nogil:
            for i in range(rows):
                qk_unpack_any(&packed[i, 0], &out[i, 0], ncols, bits, isa)
        return
    if ncols <= CHUNK_CODES:
        for i in prange(rows, nogil=True, num_threads=num_threads, schedule="static"):
            qk_unpack_any(&packed[i, 0], &out[i, 0], ncols, bits, isa)
        return
    nchunks = (ncols + CHUNK_CODES - 1) // CHUNK_CODES
    for task in prange(rows * nchunks, nogil=True, num_threads=num_threads,
                       schedule="static"):
        i = task // nchunks
        c = task % nchunks
        start = c * CHUNK_CODES
        length = min(CHUNK_CODES, ncols - start)
        qk_unpack_any(&packed[i, c * chunk_bytes], &out[i, start], length, bits, isa)
