/* Batched int8 products ("GEMM"), AVX2 variant: the counterpart of qk_gemm_avx512.h for
 * a batch of 16 rows or more, with the same inputs (qk_gemm.h's interleave), coverage
 * (every width, linear and codebook, x blocks a multiple of 4 up to 4096) and results.
 *
 * Lanes are batch rows: a ymm holds 8 int32 lanes, so each 16-lane group of the
 * interleave is read as two halves (lanes 0-7 at +0, 8-15 at +32 of the group's 64 bytes
 * per step of 4 columns). Each weight row is decoded once per call into the thread's
 * scratch; per step its 4 codes are broadcast against the same 4 columns of 8 batch rows.
 * The integer sums are exact, sum u q as in the AVX-512 GEMM, in one of three forms:
 * - U16, linear codes of up to 6 bits: vpmaddubsw (u8 x s8, adjacent pairs to s16) then
 *   vpaddw for D steps (QK_GEMM2_DEPTH: 8 for <= 4 bits, 4 for 5, 2 for 6, so that
 *   2 * D * (2**b - 1) * 127 <= 32767 and no int16 sum saturates or wraps), widened by
 *   one vpmaddwd with ones per chunk;
 * - U32, linear 7-bit codes: vpmaddubsw (a pair at most 2 * 127 * 127 = 32258, exact)
 *   and vpmaddwd with ones every step;
 * - W16, 8-bit linear codes and codebooks (u up to 255, where a vpmaddubsw pair could
 *   reach 64770): the row is decoded to 16-bit u, the activations are sign-extended to
 *   16 bits in the loop (vpmovsxbw) and vpmaddwd multiplies them, exact. The sign trick
 *   of qk_dense_avx2.h (vpmaddubsw(|w'|, sign(q, w')) with w' = u - 128) was measured
 *   first: 13.6 cycles per step of 4 rows x 16 batch rows against 12.5 here (L1-resident
 *   loop), 19.1 against 17.2 ms for 8-bit codes end to end, because on Zen 4 vpsignb
 *   issues on the same two pipes as the multiplies (2 per cycle in all, measured), and
 *   it needed 128 * sum q added back per block. U32 runs at 7.8 cycles, U16 at 5.5.
 * The block fold is the AVX-512 GEMM's, operation for operation on 8 lanes, so the
 * outputs are bit-identical to it (tests/c/test_kernels.c checks this).
 *
 * Register tiles: 4 weight rows x 2 halves (U16, U32: 8 accumulators, plus 8 int16 ones
 * for U16's chunks, whose int32 sums then wait in memory), 4 x 1 for a last group of at
 * most 8 batch rows, and 4 x 1 half for W16 (two accumulators per row and half: int32
 * lane k holds batch row k / 2, columns 2 (k % 2) and 2 (k % 2) + 1; vphaddd + vpermq
 * put them back in lane order at the block end). Scratch (qk_int8_scratch_codes, 9 *
 * (n_in + 64) bytes): region 0 for decoding, then 4 rows of 2 * (n_in + 64) bytes.
 * Trusts its caller (matmul.pyx) for every length, as qk_gemm_avx512.h does.
 */
#ifndef QK_GEMM_AVX2_H
#define QK_GEMM_AVX2_H

#include "qk_gemm.h"
#include "qk_dense_avx2.h"

#if QK_X86

enum { QK_G2_U16 = 0, QK_G2_U32 = 1, QK_G2_W16 = 2 };
/* Steps whose vpmaddubsw pair sums add up in int16 exactly (see above). */
#define QK_GEMM2_DEPTH(b) ((b) <= 4 ? 8 : (b) == 5 ? 4 : (b) == 6 ? 2 : 1)

/* Row r as bytes in dst[0 .. n4), zero past n_in: linear codes of up to 7 bits as they
   are (the U modes), 8-bit codes and codebook entries as w' = u - 128 (the any-width
   kernels' form, which qk_gemm_decode_row16_avx2 turns into 16-bit u). The full 32-column
   halves come from that decoder (qk_int8_any_bytes_avx2, which leaves every code of a
   narrower row unpacked in dst), the rest from here. */
QK_AVX2_INL void qk_gemm_decode_row_avx2(const qk_dense *w, int64_t r, uint8_t *dst, const int b,
                                         const int kind) {
    const int64_t n = w->n_in, n4 = (n + 3) & ~(int64_t)3;
    qk_int8_any_bytes_avx2(w, r, dst, b, kind);
    const uint8_t *row = w->packed + r * w->row_bytes, *lut = w->cb_u8 + r * w->cbrow;
    for (int64_t c = (n / 32) * 32; c < n; c++) {
        const uint8_t u = b == 8 ? row[c] : dst[c];
        if (kind == 1) dst[c] = (uint8_t)(lut[u] ^ 0x80);
        else if (b == 8) dst[c] = (uint8_t)(u ^ 0x80);
    }
    for (int64_t c = n; c < n4; c++) dst[c] = 0;
}

/* W16: row r as 16-bit u (u = w' + 128) in dst16[0 .. n4), zero past n_in; tmp holds
   n_in + 64 bytes. */
QK_AVX2_INL void qk_gemm_decode_row16_avx2(const qk_dense *w, int64_t r, uint16_t *dst16,
                                           uint8_t *tmp, const int b, const int kind) {
    const int64_t n = w->n_in, n4 = (n + 3) & ~(int64_t)3;
    qk_gemm_decode_row_avx2(w, r, tmp, b, kind);
    const __m128i bias = _mm_set1_epi8((char)0x80);
    int64_t c = 0;
    for (; c + 16 <= n; c += 16)
        _mm256_storeu_si256((__m256i *)(dst16 + c), _mm256_cvtepu8_epi16(
            _mm_xor_si128(_mm_loadu_si128((const __m128i *)(tmp + c)), bias)));
    for (; c < n; c++) dst16[c] = (uint16_t)(tmp[c] ^ 0x80);
    for (; c < n4; c++) dst16[c] = 0;
}

/* The int32 sums of one block: nsteps >= 1 steps of 4 columns, row i's codes at
   w + i * ws (bytes, or 16-bit for W16), the halves' activations at x and x + 32 (64
   bytes per step). In assembly because GCC 12 compiled the intrinsics badly (gcc -S;
   timed in a C harness, 4096 x 4096, batch 64, one thread): the loop-carried
   accumulators got a register copy each way per step and three of eight lived on the
   stack (7-bit codes 16.4 ms, in assembly 12.8), and the unrolled int16 chunks were
   reassociated into trees of all 64 products of a chunk, each stored to the stack first
   (4-bit 13.9 ms, in assembly 10.3). Fixed registers: ymm12/13 the activation vectors, ymm14
   the broadcast weights, ymm15 the product, ymm11 int16 ones; the accumulators are
   operands. */
#define QK_A2_BC(W) "vpbroadcastd " W ", %%ymm14\n\t"
#define QK_A2_U16(X, A) "vpmaddubsw %%ymm" X ", %%ymm14, %%ymm15\n\t" \
    "vpaddw %%ymm15, %[" A "], %[" A "]\n\t"
#define QK_A2_U32(X, A) "vpmaddubsw %%ymm" X ", %%ymm14, %%ymm15\n\t" \
    "vpmaddwd %%ymm11, %%ymm15, %%ymm15\n\t" "vpaddd %%ymm15, %[" A "], %[" A "]\n\t"
#define QK_A2_ROW2(W, OP, A0, A1) QK_A2_BC(W) OP("12", A0) OP("13", A1)
#define QK_A2_ROW1(W, OP, A0) QK_A2_BC(W) OP("12", A0)
#define QK_A2_W0 "(%[w])"
#define QK_A2_W1 "(%[w],%[ws],1)"
#define QK_A2_W2 "(%[w],%[ws],2)"
#define QK_A2_W3 "(%[w3])"
#define QK_A2_STEP2(OP) "vmovdqu (%[x]), %%ymm12\n\t" "vmovdqu 32(%[x]), %%ymm13\n\t" \
    QK_A2_ROW2(QK_A2_W0, OP, "a0", "a1") QK_A2_ROW2(QK_A2_W1, OP, "a2", "a3") \
    QK_A2_ROW2(QK_A2_W2, OP, "a4", "a5") QK_A2_ROW2(QK_A2_W3, OP, "a6", "a7")
#define QK_A2_STEP1(OP) "vmovdqu (%[x]), %%ymm12\n\t" \
    QK_A2_ROW1(QK_A2_W0, OP, "a0") QK_A2_ROW1(QK_A2_W1, OP, "a1") \
    QK_A2_ROW1(QK_A2_W2, OP, "a2") QK_A2_ROW1(QK_A2_W3, OP, "a3")
/* W16: batch rows 0-3 and 4-7 of the half sign-extended, 4 16-bit codes per row */
#define QK_A2_RW(W, A0, A1) "vpbroadcastq " W ", %%ymm14\n\t" \
    "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t" "vpaddd %%ymm15, %[" A0 "], %[" A0 "]\n\t" \
    "vpmaddwd %%ymm13, %%ymm14, %%ymm15\n\t" "vpaddd %%ymm15, %[" A1 "], %[" A1 "]\n\t"
#define QK_A2_STEPW "vpmovsxbw (%[x]), %%ymm12\n\t" "vpmovsxbw 16(%[x]), %%ymm13\n\t" \
    QK_A2_RW(QK_A2_W0, "a0", "a1") QK_A2_RW(QK_A2_W1, "a2", "a3") \
    QK_A2_RW(QK_A2_W2, "a4", "a5") QK_A2_RW(QK_A2_W3, "a6", "a7")
#define QK_A2_NEXT(WB) "add $64, %[x]\n\t" "add $" WB ", %[w]\n\t" "add $" WB ", %[w3]\n\t"
#define QK_A2_LOOP "dec %[k]\n\t" "jnz 1b\n\t"
#define QK_A2_ONES "vpcmpeqw %%ymm11, %%ymm11, %%ymm11\n\t" "vpsrlw $15, %%ymm11, %%ymm11\n\t"
#define QK_A2_Z(A) "vpxor %[" A "], %[" A "], %[" A "]\n\t"
#define QK_A2_Z4 QK_A2_Z("a0") QK_A2_Z("a1") QK_A2_Z("a2") QK_A2_Z("a3")
#define QK_A2_Z8 QK_A2_Z4 QK_A2_Z("a4") QK_A2_Z("a5") QK_A2_Z("a6") QK_A2_Z("a7")
/* U16: widen int16 chunk sum A and add it to the int32 sums at byte offset O of dm */
#define QK_A2_FOLD(A, O) "vpmaddwd %%ymm11, %[" A "], %[" A "]\n\t" \
    "vpaddd " O "(%[dm]), %[" A "], %[" A "]\n\t" "vmovdqu %[" A "], " O "(%[dm])\n\t"
#define QK_A2_FOLD4 QK_A2_FOLD("a0", "0") QK_A2_FOLD("a1", "32") QK_A2_FOLD("a2", "64") \
    QK_A2_FOLD("a3", "96")
#define QK_A2_FOLD8 QK_A2_FOLD4 QK_A2_FOLD("a4", "128") QK_A2_FOLD("a5", "160") \
    QK_A2_FOLD("a6", "192") QK_A2_FOLD("a7", "224")
/* U16: chunks of at most D steps, c = min(D, k), k -= c */
#define QK_A2_CHUNK "mov %[D], %[c]\n\t" "cmp %[D], %[k]\n\t" "cmovl %[k], %[c]\n\t" \
    "sub %[c], %[k]\n\t"
#define QK_A2_OUT8 [a0] "=&x"(a0), [a1] "=&x"(a1), [a2] "=&x"(a2), [a3] "=&x"(a3), \
    [a4] "=&x"(a4), [a5] "=&x"(a5), [a6] "=&x"(a6), [a7] "=&x"(a7)
#define QK_A2_OUT4 [a0] "=&x"(a0), [a1] "=&x"(a1), [a2] "=&x"(a2), [a3] "=&x"(a3)
#define QK_A2_PTRS [x] "+r"(x), [w] "+r"(w), [w3] "+r"(w3), [k] "+r"(nsteps)
#define QK_A2_CLOBBERS "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory"

/* d[i * 2 + j]: row i, half j (NB 2: both halves; NB 1 and W16: one half). */
QK_AVX2_INL void qk_gemm2_dots(const uint8_t *w, int64_t ws, const int8_t *x, int64_t nsteps,
                               __m256i d[8], const int NB, const int M, const int D) {
    __m256i a0, a1, a2, a3, a4, a5, a6, a7;
    const uint8_t *w3 = w + 3 * ws;
    if (M == QK_G2_W16) {
        __asm__(QK_A2_Z8 "1:\n\t" QK_A2_STEPW QK_A2_NEXT("8") QK_A2_LOOP
                : QK_A2_OUT8, QK_A2_PTRS : [ws] "r"(ws) : QK_A2_CLOBBERS);
        /* lane pairs to batch rows: [0 1 4 5 | 2 3 6 7] after vphaddd, then qwords 0 2 1 3 */
        d[0] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(a0, a1), 0xD8);
        d[2] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(a2, a3), 0xD8);
        d[4] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(a4, a5), 0xD8);
        d[6] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(a6, a7), 0xD8);
    } else if (M == QK_G2_U16) {
        /* the int32 sums are in memory after the asm: volatile, or GCC drops it as unused */
        __m256i dm[8];
        int64_t c;
        const int64_t dd = D;
        for (int k = 0; k < 8; k++) dm[k] = _mm256_setzero_si256();
        if (NB == 2)
            __asm__ volatile(QK_A2_ONES "2:\n\t" QK_A2_Z8 QK_A2_CHUNK
                             "1:\n\t" QK_A2_STEP2(QK_A2_U16) QK_A2_NEXT("4") "dec %[c]\n\t" "jnz 1b\n\t"
                             QK_A2_FOLD8 "test %[k], %[k]\n\t" "jnz 2b\n\t"
                             : QK_A2_OUT8, QK_A2_PTRS, [c] "=&r"(c)
                             : [ws] "r"(ws), [D] "r"(dd), [dm] "r"(dm) : QK_A2_CLOBBERS);
        else
            __asm__ volatile(QK_A2_ONES "2:\n\t" QK_A2_Z4 QK_A2_CHUNK
                             "1:\n\t" QK_A2_STEP1(QK_A2_U16) QK_A2_NEXT("4") "dec %[c]\n\t" "jnz 1b\n\t"
                             QK_A2_FOLD4 "test %[k], %[k]\n\t" "jnz 2b\n\t"
                             : QK_A2_OUT4, QK_A2_PTRS, [c] "=&r"(c)
                             : [ws] "r"(ws), [D] "r"(dd), [dm] "r"(dm) : QK_A2_CLOBBERS);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < NB; j++) d[i * 2 + j] = dm[i * NB + j];
    } else if (NB == 2) {
        __asm__(QK_A2_ONES QK_A2_Z8 "1:\n\t" QK_A2_STEP2(QK_A2_U32) QK_A2_NEXT("4") QK_A2_LOOP
                : QK_A2_OUT8, QK_A2_PTRS : [ws] "r"(ws) : QK_A2_CLOBBERS);
        d[0] = a0; d[1] = a1; d[2] = a2; d[3] = a3; d[4] = a4; d[5] = a5; d[6] = a6; d[7] = a7;
    } else {
        __asm__(QK_A2_ONES QK_A2_Z4 "1:\n\t" QK_A2_STEP1(QK_A2_U32) QK_A2_NEXT("4") QK_A2_LOOP
                : QK_A2_OUT4, QK_A2_PTRS : [ws] "r"(ws) : QK_A2_CLOBBERS);
        d[0] = a0; d[2] = a1; d[4] = a2; d[6] = a3;
    }
}

/* 4 weight rows x NB halves of group bg from half h0 (NB 2: all 16 lanes; NB 1: half
   h0 alone, for W16 and for a last group of at most 8 batch rows); row i's decoded codes
   at wrows + i * wstride. Rows past nrows repeat row 0 and are not stored. accf: 64
   floats of the caller's. */
QK_AVX2_INL void
qk_gemm_tile_avx2(const qk_dense *w, int64_t r0, int64_t nrows, const uint8_t *wrows,
                  int64_t wstride, const int8_t *xi, const float *xst, const float *xzt,
                  int64_t bg, int64_t h0, int64_t batch, int64_t block, int64_t nb, float *y,
                  float *accf, const int NB, const int M, const int D) {
    const int64_t n = w->n_in, n4 = (n + 3) & ~(int64_t)3, xgs = n4 * QK_GEMM_LANES;
    const int64_t cw = M == QK_G2_W16 ? 2 : 1;   /* bytes per decoded code */
    /* the float sums stay in memory: they change once per block, the int32 sums and the
       operands of the step loop need the registers */
    for (int k = 0; k < 64; k++) accf[k] = 0.0f;
    int64_t g = 0, gend = w->kind == 1 ? n : w->group;
    for (int64_t blk = 0; blk < nb; blk++) {
        const int64_t c0 = blk * block, c1 = c0 + block < n ? c0 + block : n;
        const int64_t s0 = c0 / 4, s1 = (c1 + 3) / 4;
        __m256i d[8];
        qk_gemm2_dots(wrows + 4 * cw * s0, wstride, xi + bg * xgs + 32 * h0 + s0 * 64, s1 - s0,
                      d, NB, M, D);
        if (c0 >= gend) { g++; gend += w->group; }   /* blocks never straddle groups */
        for (int i = 0; i < 4; i++) {
            const int64_t r = r0 + (i < nrows ? i : 0);
            float s, z;
            if (w->kind == 1) { s = w->cb_scale[w->cbrow ? r : 0]; z = 128.0f; }
            else { s = w->scales[r * w->prow + g]; z = w->zeros[r * w->prow + g]; }
            const __m256 vs = _mm256_set1_ps(s), vsz = _mm256_set1_ps(s * z);
            for (int j = 0; j < NB; j++) {
                const int64_t o = (bg * nb + blk) * QK_GEMM_LANES + 8 * (h0 + j);
                float *a = accf + (i * 2 + j) * 8;
                const __m256 xs = _mm256_mul_ps(vs, _mm256_loadu_ps(xst + o));
                const __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[i * 2 + j]), xs, _mm256_loadu_ps(a));
                _mm256_storeu_ps(a, _mm256_fnmadd_ps(vsz, _mm256_loadu_ps(xzt + o), f));
            }
        }
    }
    for (int i = 0; i < nrows; i++)
        for (int j = 0; j < NB; j++) {
            const float *out = accf + (i * 2 + j) * 8;
            const int64_t b0 = bg * QK_GEMM_LANES + 8 * (h0 + j);
            const int64_t m = batch - b0 < 8 ? batch - b0 : 8;
            for (int64_t l = 0; l < m; l++) y[(b0 + l) * w->n_out + r0 + i] = out[l];
        }
}

/* The whole batch for the decoded rows, group by group: 4 x 2 tiles (U modes), or one
   4 x 1 tile per half holding batch rows (W16, and the U modes' last group when it holds
   at most 8). */
QK_AVX2_INL void
qk_gemm_run_avx2(const qk_dense *w, int64_t r0, int64_t nrows, const uint8_t *rows,
                 int64_t stride, const int8_t *xi, const float *xst, const float *xzt,
                 int64_t batch, int64_t block, int64_t nb, float *y, const int M, const int D) {
    float accf[64] __attribute__((aligned(32)));
    const int64_t nbg = (batch + QK_GEMM_LANES - 1) / QK_GEMM_LANES;
    for (int64_t bg = 0; bg < nbg; bg++) {
        const int two = batch - bg * QK_GEMM_LANES > 8;
        if (M != QK_G2_W16 && two)
            qk_gemm_tile_avx2(w, r0, nrows, rows, stride, xi, xst, xzt, bg, 0, batch, block, nb, y, accf, 2, M, D);
        else
            for (int64_t h = 0; h <= two; h++)
                qk_gemm_tile_avx2(w, r0, nrows, rows, stride, xi, xst, xzt, bg, h, batch, block, nb, y, accf, 1, M, D);
    }
}

/* Rows r0 .. r0+nrows (nrows <= 4) of y for the whole batch. scratch: 9 * (n_in + 64)
   bytes (qk_int8_scratch_codes); xi, xst, xzt from qk_gemm_pack_x. */
QK_AVX2_FN void qk_gemm_rows_avx2(const qk_dense *w, int64_t r0, int64_t nrows,
                                  const int8_t *xi, const float *xst, const float *xzt,
                                  int64_t batch, int64_t block, int64_t nb, float *y,
                                  uint8_t *scratch) {
    const int64_t stride = 2 * (w->n_in + 64);
    /* 16-bit rows at an even address (a numpy scratch row may start anywhere): a row
       needs 2 * n4 of its 2 * (n_in + 64) bytes, so the shift stays inside the scratch */
    uint8_t *rows = scratch + w->n_in + 64 + ((uintptr_t)(scratch + w->n_in + 64) & 1);
    const int wide = w->kind == 1 || w->bits == 8;
    /* a quad's missing rows repeat row r0 (the assembly reads 4 rows) and are not stored */
#define QK_CALL(B, K) for (int64_t i = 0; i < 4; i++) { \
        const int64_t r = r0 + (i < nrows ? i : 0); \
        if (wide) qk_gemm_decode_row16_avx2(w, r, (uint16_t *)(rows + i * stride), scratch, B, K); \
        else qk_gemm_decode_row_avx2(w, r, rows + i * stride, B, K); }
    if (w->kind == 0) QK_AVX2_ANY_WIDTHS(QK_CALL, 0) else QK_AVX2_ANY_WIDTHS(QK_CALL, 1)
#undef QK_CALL
#define QK_RUN(M, D) qk_gemm_run_avx2(w, r0, nrows, rows, stride, xi, xst, xzt, batch, block, nb, y, M, D)
    if (wide) QK_RUN(QK_G2_W16, 1);
    else if (w->bits <= 4) QK_RUN(QK_G2_U16, QK_GEMM2_DEPTH(4));
    else if (w->bits == 5) QK_RUN(QK_G2_U16, QK_GEMM2_DEPTH(5));
    else if (w->bits == 6) QK_RUN(QK_G2_U16, QK_GEMM2_DEPTH(6));
    else QK_RUN(QK_G2_U32, 1);
#undef QK_RUN
}

#else
static inline void qk_gemm_rows_avx2(const qk_dense *w, int64_t r0, int64_t nrows,
                                     const int8_t *xi, const float *xst, const float *xzt,
                                     int64_t batch, int64_t block, int64_t nb, float *y,
                                     uint8_t *scratch) {
    (void)w; (void)r0; (void)nrows; (void)xi; (void)xst; (void)xzt; (void)batch;
    (void)block; (void)nb; (void)y; (void)scratch;
}
#endif /* QK_X86 */

#endif
