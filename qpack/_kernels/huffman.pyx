# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Canonical Huffman kernels: histogram, encoder (symbols -> bits), table-driven decoder.

Bit order (docs/FORMAT.md section 2): the payload is an LSB-first bitstream (stream bit k is
bit k%8 of byte k//8), as in DEFLATE. A code of length l with canonical value c (MSB-first)
is written with its most significant bit first, i.e. the encoder appends bitreverse(c, l)
as an l-bit little-endian field. The decoder therefore peeks the low bits of a 64-bit
bit-buffer and indexes a table with them.

Decoder design:
  * primary table of 2**T entries. For uint8 output T = PRIMARY_BITS and every entry
    holds up to 4 whole symbols whose codes fit in T bits (a multi-symbol table): one
    lookup, one unconditional 4-byte store, one shift. (Measured: T = 11 rather than the
    longest code length tripled the speed on 2-bit codes; 8 symbols per entry, with a
    second table for lengths, was slower on 4- and 8-bit codes.) For uint16 output a
    single-symbol table with T = min(PRIMARY_BITS, longest code).
  * codes longer than T (rare: they have probability < 2**-T) take a slow path that
    decodes canonically from the first 15 bits (a compare per length, no per-bit loop).
  * the stream is cut into up to 4 segments decoded in one interleaved loop, so four
    independent dependency chains keep the CPU busy (the idea of zstd's 4X decoders).
  * no threads: splitting the 4 streams over 2 OpenMP threads (2 interleaved each) was
    measured slower on this 2-core machine (4-bit codes, 16M symbols, best of 9:
    1750 M/s on one thread vs 1529 M/s on two), so the parallelism is instruction-level.
    Callers decode independent tensors in parallel instead (the GIL is released).
  * the fast loop loads 8 bytes at once and runs only while 8 readable bytes remain and
    the output has room for 16 symbols; the tails use a byte-wise, zero-padding refill.

Every ``def`` here trusts its Python caller (qpack/entropy.py): the code lengths form a
complete prefix code (or a single 1-bit code, which the caller decodes itself), every
symbol handed to the encoder has a nonzero length, segment offsets lie inside the payload
and every output buffer is exactly as long as the caller says. That is why bounds
checking and wraparound are off. What the kernel cannot know in advance (whether a segment
consumes exactly its declared number of bits) it checks and reports as an error code.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    /* Unaligned little-endian loads and stores; memcpy compiles to one mov. */
    static inline uint64_t qp_load64(const uint8_t* p) {
        uint64_t v; memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    static inline void qp_store64(uint8_t* p, uint64_t v) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        memcpy(p, &v, 8);
    }
    static inline void qp_store32(uint8_t* p, uint32_t v) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap32(v);
    #endif
        memcpy(p, &v, 4);
    }
    """
    uint64_t qp_load64(const uint8_t* p) noexcept nogil
    void qp_store64(uint8_t* p, uint64_t v) noexcept nogil
    void qp_store32(uint8_t* p, uint32_t v) noexcept nogil

cdef enum:
    MAX_LEN = 15        # longest code the format allows (lengths are stored as nibbles)
    PRIMARY_BITS = 11   # primary table index width (2048 entries: 8 KiB + 16 KiB, in L1)
    MULTI_MAX = 4       # symbols per multi-symbol entry (one 32-bit store)

# Error codes returned by the decoders (the wrapper turns them into FormatError).
cdef enum:
    DECODE_OK = 0
    DECODE_BAD_LENGTH = 1   # a segment did not consume exactly its declared number of bits
    DECODE_BAD_CODE = 2     # a bit pattern matched no code (impossible for a complete code)
    DECODE_NO_MEMORY = 3

ERROR_MESSAGES = {
    DECODE_BAD_LENGTH: "a stream does not end exactly at its declared bit length",
    DECODE_BAD_CODE: "a bit pattern matches no code of the table",
    DECODE_NO_MEMORY: "out of memory for the decoding tables",
}


# ----------------------------------------------------------------------------- histogram

ctypedef fused symbol_t:
    uint8_t
    uint16_t


def histogram(const symbol_t[::1] symbols, int64_t[::1] hist):
    """Add the count of every symbol value to ``hist``.

    Trusts the caller: len(hist) is 256 for uint8 and 65536 for uint16 symbols, so every
    value indexes inside it. uint8 input uses four sub-histograms to break the
    store-to-load dependency when the same value repeats.
    """
    cdef Py_ssize_t i, n = symbols.shape[0], n4 = n & ~(<Py_ssize_t>3)
    cdef int64_t sub[4][256]
    cdef int j
    if symbol_t is uint8_t:
        with nogil:
            memset(sub, 0, sizeof(sub))
            for i in range(0, n4, 4):
                sub[0][symbols[i]] += 1
                sub[1][symbols[i + 1]] += 1
                sub[2][symbols[i + 2]] += 1
                sub[3][symbols[i + 3]] += 1
            for i in range(n4, n):
                sub[0][symbols[i]] += 1
            for j in range(256):
                hist[j] += sub[0][j] + sub[1][j] + sub[2][j] + sub[3][j]
    else:
        with nogil:
            for i in range(n):
                hist[symbols[i]] += 1


# ------------------------------------------------------------------------- code lengths

def huffman_lengths_sorted(int64_t[::1] a):
    """Unlimited Huffman code lengths, in place, for weights sorted in ascending order.

    On return a[i] is the code length of the i-th weight. The in-place O(n) method of
    Moffat & Katajainen (1995): phase 1 merges leaves and internal nodes (two queues in
    one array, parents stored as indices), phase 2 turns parent links into depths of the
    internal nodes, phase 3 hands out leaf depths level by level.

    Trusts the caller: len(a) >= 2, weights positive, ascending, and their sum < 2**62.
    """
    cdef Py_ssize_t n = a.shape[0], root = 0, leaf = 2, nxt, avbl, used, depth
    with nogil:
        a[0] += a[1]
        for nxt in range(1, n - 1):
            # first child: the lighter of the next internal node and the next leaf
            if leaf >= n or a[root] < a[leaf]:
                a[nxt] = a[root]
                a[root] = nxt
                root += 1
            else:
                a[nxt] = a[leaf]
                leaf += 1
            # second child
            if leaf >= n or (root < nxt and a[root] < a[leaf]):
                a[nxt] += a[root]
                a[root] = nxt
                root += 1
            else:
                a[nxt] += a[leaf]
                leaf += 1
        a[n - 2] = 0
        for nxt in range(n - 3, -1, -1):
            a[nxt] = a[a[nxt]] + 1
        avbl = 1
        used = 0
        depth = 0
        root = n - 2
        nxt = n - 1
        while avbl > 0:
            while root >= 0 and a[root] == depth:
                used += 1
                root -= 1
            while avbl > used:
                a[nxt] = depth
                nxt -= 1
                avbl -= 1
            avbl = 2 * used
            depth += 1
            used = 0


def canonical_table(const uint8_t[::1] lens, uint32_t[::1] codes, uint32_t[::1] table):
    """Canonical codes (DEFLATE order) and the encoder's lookup table.

    codes[s] = MSB-first code value; table[s] = bitreverse(code, len) | len << 16.
    Trusts the caller: every length <= 15, Kraft sum <= 1, len(codes) == len(table) ==
    len(lens).
    """
    cdef Py_ssize_t s, n = lens.shape[0]
    cdef int l
    cdef uint32_t count[MAX_LEN + 1]
    cdef uint32_t next_code[MAX_LEN + 1]
    cdef uint32_t code = 0
    with nogil:
        memset(count, 0, sizeof(count))
        for s in range(n):
            count[lens[s]] += 1
        count[0] = 0
        for l in range(1, MAX_LEN + 1):
            code = (code + count[l - 1]) << 1
            next_code[l] = code
        for s in range(n):
            l = lens[s]
            if l:
                codes[s] = next_code[l]
                table[s] = reverse_bits(next_code[l], l) | (<uint32_t>l << 16)
                next_code[l] += 1
            else:
                codes[s] = 0
                table[s] = 0


# ------------------------------------------------------------------------------- encoder

def encode(const symbol_t[::1] symbols, const uint32_t[::1] codes, uint8_t[::1] out,
           Py_ssize_t out_offset, const int64_t[::1] seg_ends, int64_t[::1] seg_bits):
    """Append the code of every symbol to ``out`` starting at byte ``out_offset``.

    ``codes[s]`` is (bit-reversed canonical code) | (length << 16). ``seg_ends`` holds the
    symbol index where each segment ends; the bit length of each segment goes to
    ``seg_bits``. Returns the number of payload bits written.

    Trusts the caller: every symbol has a nonzero length in ``codes``; ``out`` holds at
    least out_offset + ceil(total_bits / 8) + 8 bytes (the 8-byte slack absorbs the
    unconditional 64-bit stores).
    """
    cdef Py_ssize_t i = 0, end, n = symbols.shape[0]
    cdef Py_ssize_t nseg = seg_ends.shape[0], k
    cdef uint8_t* dst = &out[0] + out_offset
    cdef uint64_t acc = 0
    cdef uint32_t e0, e1, e2
    cdef int nacc = 0
    cdef int64_t written = 0, seg_start_bits = 0, pos_bits
    with nogil:
        for k in range(nseg):
            end = seg_ends[k]
            # Three codes of <= 15 bits plus <= 7 pending bits fit in the 64-bit accumulator.
            while i + 3 <= end:
                e0 = codes[symbols[i]]
                e1 = codes[symbols[i + 1]]
                e2 = codes[symbols[i + 2]]
                acc |= (<uint64_t>(e0 & 0xFFFF)) << nacc
                nacc += e0 >> 16
                acc |= (<uint64_t>(e1 & 0xFFFF)) << nacc
                nacc += e1 >> 16
                acc |= (<uint64_t>(e2 & 0xFFFF)) << nacc
                nacc += e2 >> 16
                qp_store64(dst + written, acc)
                written += nacc >> 3
                acc = acc >> (nacc & ~7)
                nacc &= 7
                i += 3
            while i < end:
                e0 = codes[symbols[i]]
                acc |= (<uint64_t>(e0 & 0xFFFF)) << nacc
                nacc += e0 >> 16
                qp_store64(dst + written, acc)
                written += nacc >> 3
                acc = acc >> (nacc & ~7)
                nacc &= 7
                i += 1
            pos_bits = written * 8 + nacc
            seg_bits[k] = pos_bits - seg_start_bits
            seg_start_bits = pos_bits
        if nacc:
            qp_store64(dst + written, acc)
    return written * 8 + nacc


# ------------------------------------------------------------------------------- decoder

cdef struct Reader:
    uint64_t buf      # unread bits, next bit in bit 0
    int cnt           # how many low bits of buf are valid
    Py_ssize_t pos    # next payload byte to load; 8*pos - cnt = bits consumed so far


cdef struct Canon:
    # Canonical decoding of codes longer than the primary table, MSB-first code values.
    int tbits                       # primary table width T
    int maxlen
    int first[MAX_LEN + 2]          # first code value of each length
    int count[MAX_LEN + 2]          # number of codes of each length
    int offset[MAX_LEN + 2]         # index of the first symbol of each length in `sorted`
    uint16_t* sorted                # symbols ordered by (length, value)


cdef inline void refill_fast(Reader* r, const uint8_t* data) noexcept nogil:
    # Branch-free refill: OR in 8 bytes, advance by the whole bytes that fit. After it,
    # cnt is in 56..63. Needs pos + 8 <= payload length (the caller's loop condition).
    r.buf |= qp_load64(data + r.pos) << r.cnt
    r.pos += (63 - r.cnt) >> 3
    r.cnt |= 56


cdef inline void refill_safe(Reader* r, const uint8_t* data, Py_ssize_t n) noexcept nogil:
    # Near the end: load byte by byte, bytes past the payload read as zero.
    if r.pos + 8 <= n:
        refill_fast(r, data)
        return
    while r.cnt <= 56:
        if r.pos < n:
            r.buf |= (<uint64_t>data[r.pos]) << r.cnt
        r.pos += 1
        r.cnt += 8


cdef inline uint32_t reverse_bits(uint32_t x, int nbits) noexcept nogil:
    """Reverse the low ``nbits`` (<= 16) bits of x."""
    x = ((x >> 1) & 0x5555) | ((x & 0x5555) << 1)
    x = ((x >> 2) & 0x3333) | ((x & 0x3333) << 2)
    x = ((x >> 4) & 0x0F0F) | ((x & 0x0F0F) << 4)
    x = ((x >> 8) & 0x00FF) | ((x & 0x00FF) << 8)
    return x >> (16 - nbits)


cdef inline int decode_long(Reader* r, const uint8_t* data, Py_ssize_t n,
                            const Canon* cn) noexcept nogil:
    """Decode one code longer than T bits; return its symbol or -1."""
    cdef uint32_t v
    cdef int l, c, d
    if r.cnt < MAX_LEN:
        refill_safe(r, data, n)
    v = reverse_bits(<uint32_t>(r.buf & 0x7FFF), MAX_LEN)
    for l in range(cn.tbits + 1, cn.maxlen + 1):
        c = <int>(v >> (MAX_LEN - l))
        d = c - cn.first[l]
        if d >= 0 and d < cn.count[l]:
            r.buf >>= l
            r.cnt -= l
            return cn.sorted[cn.offset[l] + d]
    return -1


cdef inline int decode_one(Reader* r, const uint8_t* data, Py_ssize_t n,
                           const uint32_t* single, uint32_t tmask,
                           const Canon* cn) noexcept nogil:
    """Decode one symbol with the single-symbol table (needs cnt >= T); -1 on a bad code."""
    cdef uint32_t e = single[r.buf & tmask]
    cdef int l = e >> 16
    if l:
        r.buf >>= l
        r.cnt -= l
        return e & 0xFFFF
    return decode_long(r, data, n, cn)


cdef int build_tables(const uint8_t* lens, Py_ssize_t nsym, Canon* cn, uint32_t* single,
                      uint64_t* multi) noexcept nogil:
    """Fill the canonical description and the primary tables from code lengths.

    ``single[i]`` = symbol | length << 16 for the code in the low bits of i (length 0 marks
    the prefix of a longer code); ``multi[i]`` (optional) packs up to 4 uint8 symbols in
    bits 0..31, their total length in bits 32..39 and their number in bits 40..47
    (0 symbols: take the slow path). Returns 0, or -1 when memory runs out.
    """
    cdef Py_ssize_t s, i
    cdef int l, code, T, maxlen = 0, k, nb, nm, sl
    cdef int next_code[MAX_LEN + 2]
    cdef uint32_t rev, step, tsize, e
    cdef uint64_t syms
    memset(cn.count, 0, sizeof(cn.count))
    for s in range(nsym):
        l = lens[s]
        if l:
            cn.count[l] += 1
            if l > maxlen:
                maxlen = l
    cn.maxlen = maxlen
    # The multi-symbol table wants the full width even for short codes (more symbols per
    # lookup); the single-symbol table needs no more bits than the longest code.
    T = maxlen if maxlen < PRIMARY_BITS and multi == NULL else PRIMARY_BITS
    cn.tbits = T
    code = 0
    cn.offset[0] = 0
    cn.first[0] = 0
    cn.count[0] = 0
    for l in range(1, MAX_LEN + 1):
        code = (code + cn.count[l - 1]) << 1
        cn.first[l] = code
        next_code[l] = code
        cn.offset[l] = cn.offset[l - 1] + cn.count[l - 1]
    cn.sorted = <uint16_t*>malloc(sizeof(uint16_t) * (cn.offset[MAX_LEN] + cn.count[MAX_LEN] + 1))
    if cn.sorted == NULL:
        return -1
    tsize = (<uint32_t>1) << T
    memset(single, 0, sizeof(uint32_t) * tsize)
    for s in range(nsym):
        l = lens[s]
        if l == 0:
            continue
        cn.sorted[cn.offset[l] + next_code[l] - cn.first[l]] = <uint16_t>s
        if l <= T:
            rev = reverse_bits(<uint32_t>next_code[l], l)
            step = (<uint32_t>1) << l
            e = <uint32_t>s | (<uint32_t>l << 16)
            i = rev
            while i < tsize:
                single[i] = e
                i += step
        next_code[l] += 1
    if multi != NULL:
        for i in range(tsize):
            e = single[i]
            l = e >> 16
            if l == 0:
                multi[i] = 0
                continue
            syms = e & 0xFF
            nb = l
            nm = 1
            while nm < MULTI_MAX:
                e = single[i >> nb]
                sl = e >> 16
                if sl == 0 or nb + sl > T:
                    break
                syms |= (<uint64_t>(e & 0xFF)) << (8 * nm)
                nb += sl
                nm += 1
            multi[i] = syms | (<uint64_t>nb << 32) | (<uint64_t>nm << 40)
    return 0


cdef inline void reader_start(Reader* r, const uint8_t* data, Py_ssize_t n,
                              int64_t bit_start) noexcept nogil:
    r.buf = 0
    r.cnt = 0
    r.pos = bit_start >> 3
    refill_safe(r, data, n)
    r.buf >>= (bit_start & 7)
    r.cnt -= <int>(bit_start & 7)


cdef inline int64_t reader_bitpos(const Reader* r) noexcept nogil:
    return (<int64_t>r.pos) * 8 - r.cnt


cdef inline int step_u8(Reader* r, uint8_t** out, const uint8_t* data, Py_ssize_t n,
                        const uint64_t* multi, const uint32_t* single, uint32_t tmask,
                        const Canon* cn) noexcept nogil:
    """One multi-symbol lookup (needs cnt >= T and 4 writable bytes); 0 or -1."""
    # The multi-symbol table always has T = PRIMARY_BITS: a constant mask frees a register.
    cdef uint64_t e = multi[r.buf & ((1 << PRIMARY_BITS) - 1)]
    cdef int s
    if e >> 40:
        qp_store32(out[0], <uint32_t>e)
        out[0] += e >> 40
        r.buf >>= (e >> 32) & 0xFF
        r.cnt -= <int>((e >> 32) & 0xFF)
        return 0
    s = decode_long(r, data, n, cn)
    if s < 0:
        return -1
    out[0][0] = <uint8_t>s
    out[0] += 1
    return 0


cdef inline int finish_u8(Reader* r, uint8_t* out, uint8_t* oend, const uint8_t* data,
                          Py_ssize_t n, const uint64_t* multi, const uint32_t* single,
                          uint32_t tmask, const Canon* cn) noexcept nogil:
    """Decode the rest of one segment: fast while room allows, then symbol by symbol."""
    cdef int s
    while oend - out >= 16 and r.pos + 8 <= n:
        refill_fast(r, data)
        if step_u8(r, &out, data, n, multi, single, tmask, cn):
            return -1
        if step_u8(r, &out, data, n, multi, single, tmask, cn):
            return -1
        if step_u8(r, &out, data, n, multi, single, tmask, cn):
            return -1
        if step_u8(r, &out, data, n, multi, single, tmask, cn):
            return -1
    while out < oend:
        if r.cnt < MAX_LEN:
            refill_safe(r, data, n)
        s = decode_one(r, data, n, single, tmask, cn)
        if s < 0:
            return -1
        out[0] = <uint8_t>s
        out += 1
    return 0


cdef inline int finish_u16(Reader* r, uint16_t* out, uint16_t* oend, const uint8_t* data,
                           Py_ssize_t n, const uint32_t* single, uint32_t tmask,
                           const Canon* cn) noexcept nogil:
    cdef int s, j
    while oend - out >= 4 and r.pos + 8 <= n:
        refill_fast(r, data)
        for j in range(4):
            s = decode_one(r, data, n, single, tmask, cn)
            if s < 0:
                return -1
            out[0] = <uint16_t>s
            out += 1
    while out < oend:
        if r.cnt < MAX_LEN:
            refill_safe(r, data, n)
        s = decode_one(r, data, n, single, tmask, cn)
        if s < 0:
            return -1
        out[0] = <uint16_t>s
        out += 1
    return 0


cdef int decode4_u8(const uint8_t* data, Py_ssize_t n, uint8_t* out,
                    const int64_t* seg_start, const int64_t* seg_bits,
                    const uint64_t* multi, const uint32_t* single, uint32_t tmask,
                    const Canon* cn) noexcept nogil:
    """Decode 4 segments in one interleaved loop, then finish each one alone."""
    cdef Reader r0, r1, r2, r3
    cdef uint8_t* o0 = out + seg_start[0]
    cdef uint8_t* o1 = out + seg_start[1]
    cdef uint8_t* o2 = out + seg_start[2]
    cdef uint8_t* o3 = out + seg_start[3]
    cdef uint8_t* e0 = out + seg_start[1]
    cdef uint8_t* e1 = out + seg_start[2]
    cdef uint8_t* e2 = out + seg_start[3]
    cdef uint8_t* e3 = out + seg_start[4]
    cdef int64_t b1 = seg_bits[0], b2 = b1 + seg_bits[1], b3 = b2 + seg_bits[2]
    cdef int bad = 0
    reader_start(&r0, data, n, 0)
    reader_start(&r1, data, n, b1)
    reader_start(&r2, data, n, b2)
    reader_start(&r3, data, n, b3)
    # Streams are laid out in order, so r3 reaches the end of the payload first and
    # its guard alone bounds every reader's 8-byte loads.
    while (e0 - o0 >= 16 and e1 - o1 >= 16 and e2 - o2 >= 16 and e3 - o3 >= 16
           and r3.pos + 8 <= n and r2.pos + 8 <= n and r1.pos + 8 <= n and r0.pos + 8 <= n):
        refill_fast(&r0, data)
        refill_fast(&r1, data)
        refill_fast(&r2, data)
        refill_fast(&r3, data)
        bad |= step_u8(&r0, &o0, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r1, &o1, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r2, &o2, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r3, &o3, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r0, &o0, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r1, &o1, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r2, &o2, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r3, &o3, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r0, &o0, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r1, &o1, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r2, &o2, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r3, &o3, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r0, &o0, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r1, &o1, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r2, &o2, data, n, multi, single, tmask, cn)
        bad |= step_u8(&r3, &o3, data, n, multi, single, tmask, cn)
        if bad:
            return DECODE_BAD_CODE
    if finish_u8(&r0, o0, e0, data, n, multi, single, tmask, cn):
        return DECODE_BAD_CODE
    if finish_u8(&r1, o1, e1, data, n, multi, single, tmask, cn):
        return DECODE_BAD_CODE
    if finish_u8(&r2, o2, e2, data, n, multi, single, tmask, cn):
        return DECODE_BAD_CODE
    if finish_u8(&r3, o3, e3, data, n, multi, single, tmask, cn):
        return DECODE_BAD_CODE
    if (reader_bitpos(&r0) != b1 or reader_bitpos(&r1) != b2 or reader_bitpos(&r2) != b3
            or reader_bitpos(&r3) != b3 + seg_bits[3]):
        return DECODE_BAD_LENGTH
    return DECODE_OK


cdef int decode4_u16(const uint8_t* data, Py_ssize_t n, uint16_t* out,
                     const int64_t* seg_start, const int64_t* seg_bits,
                     const uint32_t* single, uint32_t tmask, const Canon* cn) noexcept nogil:
    cdef Reader r0, r1, r2, r3
    cdef uint16_t* o0 = out + seg_start[0]
    cdef uint16_t* o1 = out + seg_start[1]
    cdef uint16_t* o2 = out + seg_start[2]
    cdef uint16_t* o3 = out + seg_start[3]
    cdef uint16_t* e0 = out + seg_start[1]
    cdef uint16_t* e1 = out + seg_start[2]
    cdef uint16_t* e2 = out + seg_start[3]
    cdef uint16_t* e3 = out + seg_start[4]
    cdef int64_t b1 = seg_bits[0], b2 = b1 + seg_bits[1], b3 = b2 + seg_bits[2]
    cdef int s0, s1, s2, s3, j
    reader_start(&r0, data, n, 0)
    reader_start(&r1, data, n, b1)
    reader_start(&r2, data, n, b2)
    reader_start(&r3, data, n, b3)
    while (e0 - o0 >= 4 and e1 - o1 >= 4 and e2 - o2 >= 4 and e3 - o3 >= 4
           and r3.pos + 8 <= n and r2.pos + 8 <= n and r1.pos + 8 <= n and r0.pos + 8 <= n):
        refill_fast(&r0, data)
        refill_fast(&r1, data)
        refill_fast(&r2, data)
        refill_fast(&r3, data)
        for j in range(4):
            s0 = decode_one(&r0, data, n, single, tmask, cn)
            s1 = decode_one(&r1, data, n, single, tmask, cn)
            s2 = decode_one(&r2, data, n, single, tmask, cn)
            s3 = decode_one(&r3, data, n, single, tmask, cn)
            if (s0 | s1 | s2 | s3) < 0:
                return DECODE_BAD_CODE
            o0[0] = <uint16_t>s0
            o1[0] = <uint16_t>s1
            o2[0] = <uint16_t>s2
            o3[0] = <uint16_t>s3
            o0 += 1
            o1 += 1
            o2 += 1
            o3 += 1
    if finish_u16(&r0, o0, e0, data, n, single, tmask, cn):
        return DECODE_BAD_CODE
    if finish_u16(&r1, o1, e1, data, n, single, tmask, cn):
        return DECODE_BAD_CODE
    if finish_u16(&r2, o2, e2, data, n, single, tmask, cn):
        return DECODE_BAD_CODE
    if finish_u16(&r3, o3, e3, data, n, single, tmask, cn):
        return DECODE_BAD_CODE
    if (reader_bitpos(&r0) != b1 or reader_bitpos(&r1) != b2 or reader_bitpos(&r2) != b3
            or reader_bitpos(&r3) != b3 + seg_bits[3]):
        return DECODE_BAD_LENGTH
    return DECODE_OK


def decode(const uint8_t[::1] payload, const uint8_t[::1] lens, const int64_t[::1] seg_start,
           const int64_t[::1] seg_bits, symbol_t[::1] out):
    """Decode the segments of ``payload`` into ``out``; return a DECODE_* code.

    ``seg_start`` (nseg + 1 entries, nseg in {1, 4}) holds the first output index of each
    segment and len(out) at the end; ``seg_bits`` the bit length of each segment, the
    segments lying back to back from payload bit 0.

    Trusts the caller: ``lens`` (all < 16) is a complete prefix code with >= 2 symbols,
    every symbol with a nonzero length indexes inside the output type, the segment bit
    lengths sum to at most 8 * len(payload), and ``out`` has seg_start[nseg] entries.
    Reads never leave ``payload``: the fast refill runs only while 8 bytes remain, and the
    tail refill reads byte by byte with zeros past the end; the output loops are bounded
    by the segment sizes, so damaged input ends in bounded time with an error code.
    """
    cdef Py_ssize_t nseg = seg_bits.shape[0], n = payload.shape[0]
    cdef Canon cn
    cdef uint32_t* single = NULL
    cdef uint64_t* multi = NULL
    cdef uint32_t tmask
    cdef int rc = DECODE_OK
    cdef int64_t starts[5]
    cdef int64_t bits[4]
    cdef Reader r
    cdef const uint8_t* data
    cdef uint8_t dummy = 0
    cdef Py_ssize_t k
    cdef int64_t bit_start
    data = &payload[0] if n > 0 else &dummy
    for k in range(nseg + 1):
        starts[k] = seg_start[k]
    for k in range(nseg):
        bits[k] = seg_bits[k]
    cn.sorted = NULL
    with nogil:
        single = <uint32_t*>malloc(sizeof(uint32_t) << PRIMARY_BITS)
        if symbol_t is uint8_t:
            multi = <uint64_t*>malloc(sizeof(uint64_t) << PRIMARY_BITS)
        if single == NULL or (symbol_t is uint8_t and multi == NULL):
            rc = DECODE_NO_MEMORY
        elif build_tables(&lens[0], lens.shape[0], &cn, single, multi) != 0:
            rc = DECODE_NO_MEMORY
        else:
            tmask = ((<uint32_t>1) << cn.tbits) - 1
            if nseg == 4:
                if symbol_t is uint8_t:
                    rc = decode4_u8(data, n, &out[0], starts, bits, multi, single, tmask, &cn)
                else:
                    rc = decode4_u16(data, n, &out[0], starts, bits, single, tmask, &cn)
            else:
                bit_start = 0
                for k in range(nseg):
                    reader_start(&r, data, n, bit_start)
                    if symbol_t is uint8_t:
                        if finish_u8(&r, &out[0] + starts[k], &out[0] + starts[k + 1], data, n,
                                     multi, single, tmask, &cn):
                            rc = DECODE_BAD_CODE
                            break
                    else:
                        if finish_u16(&r, &out[0] + starts[k], &out[0] + starts[k + 1], data,
                                      n, single, tmask, &cn):
                            rc = DECODE_BAD_CODE
                            break
                    bit_start += bits[k]
                    if reader_bitpos(&r) != bit_start:
                        rc = DECODE_BAD_LENGTH
                        break
        free(single)
        free(multi)
        free(cn.sorted)
    return rc
