/* C-level test of the kernel headers (qpack/_kernels/include), without Python.
 *
 * Built by tests/test_c_kernels.py with -Wall -Wextra -Werror under several flag sets
 * (-march=native, the portable flags of setup.py, and cross-compiled for aarch64 when a
 * cross compiler and qemu-user are installed). For every variant this CPU supports it
 * checks, against plain reference code written here (not the generic kernels):
 *   - pack/unpack of every width 1..8 and many lengths: packed bytes equal a bit-by-bit
 *     packer, unpack returns the codes, the returned OR of the codes is right, and no
 *     byte past either buffer is written;
 *   - dense float rows (qk_dense_float_rows on the path qk_float_path picks, activations
 *     permuted when the path wants it) against a double-precision dot product of the
 *     dequantized weights, for linear and codebook codes of every width, several groupings,
 *     shared and per-row parameters, batches 1..9 and a partial last quad of rows;
 *   - dense int8 rows (qk_dense_int8_rows on the path qk_int8_path picks) against the
 *     int8 formula evaluated here with exact integer block sums (NEON: also bit for bit
 *     against the generic kernel);
 *   - the int8 GEMMs (qk_int8_batch_path from a batch of 16: avx512-gemm, avx2-gemm,
 *     neon-gemm with dotprod) against the same formula for every width and kind, batches 16-64, 1-9 rows, x
 *     blocks of 4 to a whole row, weights at the ends of their range (a saturated int16
 *     sum would show), and avx2-gemm bit for bit against avx512-gemm where both run;
 *   - on aarch64, the NEON integer block sums (sdot and the vmull/vpadal fallback)
 *     bit for bit against a plain loop.
 * Prints one line per variant with the paths that ran, then "ALL OK" (exit 0), or the
 * first failures (exit 1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "qk_dense.h"

static int failures = 0;
#define CHECK(cond, ...)                                                           \
    do {                                                                           \
        if (!(cond)) {                                                             \
            if (failures++ < 20) {                                                 \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);               \
                fprintf(stderr, __VA_ARGS__);                                      \
                fputc('\n', stderr);                                               \
            }                                                                      \
        }                                                                          \
    } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float frnd(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() >> 8) / 16777216.0f; }

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

static const char *isa_name(int isa) {
    static const char *names[] = {"ref", "avx2", "avx512", "neon"};
    return isa >= 0 && isa < (int)(sizeof names / sizeof names[0]) ? names[isa] : "?";
}

/* ---- plain references ------------------------------------------------------- */
/* Stream bit k of the packed codes is bit k % 8 of byte k / 8; code i is bits i*b.. */
static void ref_pack(const uint8_t *codes, uint8_t *out, int64_t n, int b) {
    memset(out, 0, (size_t)((n * b + 7) / 8));
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < b; j++)
            if ((codes[i] >> j) & 1) {
                int64_t k = i * b + j;
                out[k >> 3] |= (uint8_t)(1u << (k & 7));
            }
}

#define GUARD 64
#define GUARD_BYTE 0xA5

static int guard_intact(const uint8_t *p) {
    for (int i = 0; i < GUARD; i++)
        if (p[i] != GUARD_BYTE) return 0;
    return 1;
}

/* ---- pack / unpack ---------------------------------------------------------- */
static void test_bitpack(int isa) {
    static const int64_t lengths[] = {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65,
                                      100, 127, 128, 129, 191, 255, 256, 257, 511, 1000, 4099};
    const int nl = (int)(sizeof lengths / sizeof lengths[0]);
    for (int b = 1; b <= 8; b++) {
        for (int li = 0; li < nl; li++) {
            const int64_t n = lengths[li], nbytes = (n * b + 7) / 8;
            uint8_t *codes = xmalloc((size_t)n), *ref = xmalloc((size_t)nbytes);
            uint8_t *packed = xmalloc((size_t)nbytes + GUARD), *back = xmalloc((size_t)n + GUARD);
            uint8_t seen_ref = 0;
            for (int64_t i = 0; i < n; i++) {
                codes[i] = (uint8_t)(rnd() & ((1u << b) - 1));
                seen_ref |= codes[i];
            }
            ref_pack(codes, ref, n, b);
            memset(packed, GUARD_BYTE, (size_t)nbytes + GUARD);
            uint8_t seen = qk_pack_any(codes, packed, n, b, isa);
            CHECK(memcmp(packed, ref, (size_t)nbytes) == 0, "%s pack b=%d n=%lld: wrong bytes",
                  isa_name(isa), b, (long long)n);
            /* 8 bits is a memcpy: no code can be out of range, the kernels return 0 */
            CHECK(b == 8 || seen == seen_ref, "%s pack b=%d n=%lld: seen %#x, want %#x",
                  isa_name(isa), b, (long long)n, seen, seen_ref);
            CHECK(guard_intact(packed + nbytes), "%s pack b=%d n=%lld: wrote past the output",
                  isa_name(isa), b, (long long)n);
            memset(back, GUARD_BYTE, (size_t)n + GUARD);
            qk_unpack_any(ref, back, n, b, isa);
            CHECK(n == 0 || memcmp(back, codes, (size_t)n) == 0, "%s unpack b=%d n=%lld: wrong codes",
                  isa_name(isa), b, (long long)n);
            CHECK(guard_intact(back + n), "%s unpack b=%d n=%lld: wrote past the output",
                  isa_name(isa), b, (long long)n);
            /* a code >= 2**b must show in the returned OR (the callers reject it) */
            if (b < 8 && n > 0) {
                codes[n / 2] = (uint8_t)(1u << b);
                seen = qk_pack_any(codes, packed, n, b, isa);
                CHECK(seen >> b, "%s pack b=%d n=%lld: out-of-range code not reported",
                      isa_name(isa), b, (long long)n);
                CHECK(guard_intact(packed + nbytes), "%s pack b=%d n=%lld: wrote past the output",
                      isa_name(isa), b, (long long)n);
            }
            free(codes); free(ref); free(packed); free(back);
        }
    }
}

/* ---- dense matrices ---------------------------------------------------------- */
typedef struct {
    qk_dense w;
    uint8_t *codes;          /* n_out x n_in, the unpacked truth */
    uint8_t *packed;
    float *scales, *zeros, *cb, *cbs;
    uint8_t *cbu8;
    float *wd;               /* dequantized weights, n_out x n_in */
    float *xsign;            /* mat_make_extreme: the sign of x per column, else NULL */
} mat;

static void mat_make(mat *m, int bits, int kind, int64_t n_out, int64_t n_in, int64_t group,
                     int shared) {
    memset(m, 0, sizeof *m);
    const int64_t rb = (n_in * bits + 7) / 8, ngroups = (n_in + group - 1) / group;
    const int64_t L = bits <= 4 ? 16 : (1 << bits), R = shared ? 1 : n_out;
    m->codes = xmalloc((size_t)(n_out * n_in));
    m->packed = xmalloc((size_t)(n_out * rb));
    m->wd = xmalloc(sizeof(float) * (size_t)(n_out * n_in));
    for (int64_t i = 0; i < n_out * n_in; i++) m->codes[i] = (uint8_t)(rnd() & ((1u << bits) - 1));
    for (int64_t r = 0; r < n_out; r++) ref_pack(m->codes + r * n_in, m->packed + r * rb, n_in, bits);
    m->scales = xmalloc(sizeof(float) * (size_t)(R * ngroups));
    m->zeros = xmalloc(sizeof(float) * (size_t)(R * ngroups));
    m->cb = xmalloc(sizeof(float) * (size_t)(R * L));
    m->cbu8 = xmalloc((size_t)(R * L));
    m->cbs = xmalloc(sizeof(float) * (size_t)R);
    for (int64_t i = 0; i < R * ngroups; i++) {
        m->scales[i] = frnd(0.01f, 0.1f);
        m->zeros[i] = (float)(rnd() % (1u << bits));
    }
    for (int64_t r = 0; r < R; r++) {
        float amax = 0.0f;
        for (int64_t k = 0; k < L; k++) {
            float v = frnd(-1.0f, 1.0f);
            m->cb[r * L + k] = v;
            amax = fabsf(v) > amax ? fabsf(v) : amax;
        }
        m->cbs[r] = amax / 127.0f;
        for (int64_t k = 0; k < L; k++) {   /* as qpack/matmul.py: clipped to +-127 */
            float u = nearbyintf(m->cb[r * L + k] / m->cbs[r]);
            u = u > 127.0f ? 127.0f : (u < -127.0f ? -127.0f : u);
            m->cbu8[r * L + k] = (uint8_t)(int)(u + 128.0f);
        }
    }
    qk_dense *w = &m->w;
    w->packed = m->packed; w->row_bytes = rb; w->n_out = n_out; w->n_in = n_in;
    w->bits = bits; w->kind = kind;
    w->scales = m->scales; w->zeros = m->zeros;
    w->prow = shared ? 0 : ngroups; w->group = group;
    w->codebook = m->cb; w->cbrow = shared ? 0 : L;
    w->cb_u8 = m->cbu8; w->cb_scale = m->cbs;
    w->isa = QK_ISA_REF;
    for (int64_t r = 0; r < n_out; r++)
        for (int64_t c = 0; c < n_in; c++) {
            const uint8_t u = m->codes[r * n_in + c];
            float v;
            if (kind == 0) {
                const int64_t p = r * w->prow + c / group;
                v = ((float)u - m->zeros[p]) * m->scales[p];
            } else v = m->cb[r * w->cbrow + u];
            m->wd[r * n_in + c] = v;
        }
}

static void mat_free(mat *m) {
    free(m->codes); free(m->packed); free(m->scales); free(m->zeros); free(m->cb);
    free(m->cbu8); free(m->cbs); free(m->wd); free(m->xsign);
}

/* Weights at the ends of their int8 range, the same codes in every row, and the sign x
   must have per column so that every product is as large as it gets: linear codes of up
   to 7 bits all 2**b - 1 (against q = 127 the int16 chunk sums of the AVX2 GEMM reach
   their bound), 8-bit codes 0 or 255 (w' = -128 or 127), codebook entries 1 or 255
   (int8 -127 or 127). A saturating or wrapping int16 sum would be far off. The float
   values (wd) are not recomputed: only the int8 checks use these. */
static void mat_make_extreme(mat *m, int bits, int kind, int64_t n_out, int64_t n_in,
                             int64_t group) {
    mat_make(m, bits, kind, n_out, n_in, group, 0);
    const int64_t rb = (n_in * bits + 7) / 8, L = bits <= 4 ? 16 : (1 << bits);
    const int umax = (1 << bits) - 1;
    m->xsign = xmalloc(sizeof(float) * (size_t)n_in);
    for (int64_t r = 0; r < n_out; r++)
        for (int64_t k = 0; k < L; k++) m->cbu8[r * L + k] = (uint8_t)(k & 1 ? 255 : 1);
    for (int64_t c = 0; c < n_in; c++) {
        int hi = (int)(rnd() & 1);
        uint8_t code;
        if (kind == 1) code = (uint8_t)((rnd() & (uint32_t)umax & ~1u) | (uint32_t)(bits > 0 && hi));
        else if (bits < 8) { hi = 1; code = (uint8_t)umax; }
        else code = (uint8_t)(hi ? 255 : 0);
        m->xsign[c] = hi ? 1.0f : -1.0f;
        for (int64_t r = 0; r < n_out; r++) m->codes[r * n_in + c] = code;
    }
    for (int64_t r = 0; r < n_out; r++) ref_pack(m->codes + r * n_in, m->packed + r * rb, n_in, bits);
}

/* Paths seen per variant, for the summary line. */
#define NPATH 10
static long float_paths[NPATH], int8_paths[NPATH];

static void test_float(const mat *m, int isa, int64_t batch) {
    qk_dense w = m->w;
    w.isa = isa;
    const int64_t n = w.n_in, n_out = w.n_out;
    const int path = qk_float_path(&w, isa);
    float_paths[path >= 0 && path < NPATH ? path : NPATH - 1]++;
    const int pb = qk_path_permute_bits(path, w.bits);
    float *x = xmalloc(sizeof(float) * (size_t)(batch * n)), *xp = xmalloc(sizeof(float) * (size_t)(batch * n));
    float *y = xmalloc(sizeof(float) * (size_t)(batch * n_out));
    uint8_t *codes = xmalloc((size_t)qk_float_scratch_codes(path, n));
    float *wrow = xmalloc(sizeof(float) * (size_t)qk_float_scratch_wrow(path, n, batch));
    for (int64_t i = 0; i < batch * n; i++) x[i] = frnd(-1.0f, 1.0f);
    for (int64_t bi = 0; bi < batch; bi++) {
        if (pb) qk_permute_row(x + bi * n, xp + bi * n, n, pb);
        else memcpy(xp + bi * n, x + bi * n, sizeof(float) * (size_t)n);
    }
    for (int64_t i = 0; i < batch * n_out; i++) y[i] = NAN;
    for (int64_t r0 = 0; r0 < n_out; r0 += 4)
        qk_dense_float_rows(&w, path, r0, n_out - r0 < 4 ? n_out - r0 : 4, xp, batch, y, codes, wrow);
    for (int64_t bi = 0; bi < batch; bi++)
        for (int64_t r = 0; r < n_out; r++) {
            double ref = 0.0, mag = 0.0;
            for (int64_t c = 0; c < n; c++) {
                const double t = (double)m->wd[r * n + c] * (double)x[bi * n + c];
                ref += t; mag += fabs(t);
            }
            const double got = y[bi * n_out + r];
            CHECK(fabs(got - ref) <= 1e-5 * mag + 1e-6,
                  "%s float path %d bits=%d kind=%d n_in=%lld group=%lld prow=%lld batch=%lld "
                  "y[%lld,%lld] = %.7g, reference %.7g",
                  isa_name(isa), path, w.bits, w.kind, (long long)n, (long long)w.group,
                  (long long)w.prow, (long long)batch, (long long)bi, (long long)r, got, ref);
        }
    free(x); free(xp); free(y); free(codes); free(wrow);
}

/* y (batch x n_out) against the int8 formula with exact integer block sums of the codes
   (m->codes, natural order) and the activations xqn quantized in natural order. */
static void check_int8(const mat *m, const qk_dense *wp, const int8_t *xqn, const float *xs,
                       const int32_t *xsum, int64_t batch, int64_t block, const float *y,
                       int path, const char *what) {
    const qk_dense w = *wp;
    const int64_t n = w.n_in, n_out = w.n_out, nb = (n + block - 1) / block;
    for (int64_t bi = 0; bi < batch; bi++)
        for (int64_t r = 0; r < n_out; r++) {
            double ref = 0.0, mag = 0.0;
            for (int64_t k = 0; k < nb; k++) {
                const int64_t c0 = k * block, c1 = c0 + block < n ? c0 + block : n;
                int64_t isum = 0, iabs = 0, qsum = 0;
                for (int64_t c = c0; c < c1; c++) {
                    const uint8_t code = m->codes[r * n + c];
                    const int64_t u = w.kind == 0 ? code : m->cbu8[r * w.cbrow + code];
                    isum += u * xqn[bi * n + c];
                    iabs += llabs(u * xqn[bi * n + c]);
                    qsum += xqn[bi * n + c];
                }
                CHECK(qsum == xsum[bi * nb + k], "quantize: block sum %lld, stored %d",
                      (long long)qsum, xsum[bi * nb + k]);
                double s, z;
                if (w.kind == 0) {
                    const int64_t p = r * w.prow + c0 / w.group;
                    s = m->scales[p]; z = m->zeros[p];
                } else { s = m->cbs[w.cbrow ? r : 0]; z = 128.0; }
                const double d = s * (double)xs[bi * nb + k];
                ref += d * ((double)isum - z * (double)qsum);
                mag += fabs(d) * ((double)iabs + fabs(z * (double)qsum));
            }
            const double got = y[bi * n_out + r];
            CHECK(fabs(got - ref) <= 1e-5 * mag + 1e-6,
                  "%s int8 path %d bits=%d kind=%d n_in=%lld group=%lld block=%lld batch=%lld "
                  "y[%lld,%lld] = %.7g, reference %.7g",
                  what, path, w.bits, w.kind, (long long)n, (long long)w.group,
                  (long long)block, (long long)batch, (long long)bi, (long long)r, got, ref);
        }
}

static void test_int8(const mat *m, int isa, int64_t batch, int64_t block) {
    qk_dense w = m->w;
    w.isa = isa;
    const int64_t n = w.n_in, n_out = w.n_out, nb = (n + block - 1) / block;
    const int path = qk_int8_path(&w, isa, block);
    int8_paths[path >= 0 && path < NPATH ? path : NPATH - 1]++;
    const int pb = qk_path_permute_bits(path, w.bits);
    float *x = xmalloc(sizeof(float) * (size_t)(batch * n)), *y = xmalloc(sizeof(float) * (size_t)(batch * n_out));
    int8_t *xq = xmalloc((size_t)(batch * n)), *xqn = xmalloc((size_t)(batch * n));
    int8_t *tmp = xmalloc((size_t)n);
    float *xs = xmalloc(sizeof(float) * (size_t)(batch * nb));
    int32_t *xsum = xmalloc(sizeof(int32_t) * (size_t)(batch * nb));
    uint8_t *codes = xmalloc((size_t)qk_int8_scratch_codes(n));
    for (int64_t i = 0; i < batch * n; i++) x[i] = frnd(-1.0f, 1.0f);
    for (int64_t bi = 0; bi < batch; bi++) {
        /* the kernel's layout, and natural order for the reference */
        qk_quantize_row(x + bi * n, n, block, xq + bi * n, xs + bi * nb, xsum + bi * nb, pb, tmp, 0.0f);
        qk_quantize_row(x + bi * n, n, block, xqn + bi * n, xs + bi * nb, xsum + bi * nb, 0, tmp, 0.0f);
    }
    qk_xq q = {xq, xs, xsum, block, nb};
    for (int64_t i = 0; i < batch * n_out; i++) y[i] = NAN;
    for (int64_t r0 = 0; r0 < n_out; r0 += 4)
        qk_dense_int8_rows(&w, path, r0, n_out - r0 < 4 ? n_out - r0 : 4, &q, batch, y, codes);
#if QK_ARM64
    if (path == QK_PATH_NEON) {   /* same integer sums and formula: the generic result exactly */
        float *yg = xmalloc(sizeof(float) * (size_t)(batch * n_out));
        for (int64_t r0 = 0; r0 < n_out; r0 += 4)
            qk_dense_int8_rows(&w, QK_PATH_GENERIC, r0, n_out - r0 < 4 ? n_out - r0 : 4, &q, batch, yg, codes);
        CHECK(memcmp(y, yg, sizeof(float) * (size_t)(batch * n_out)) == 0,
              "neon int8 bits=%d kind=%d n_in=%lld block=%lld: not bit-identical to generic",
              w.bits, w.kind, (long long)n, (long long)block);
        free(yg);
    }
#endif
    check_int8(m, &w, xqn, xs, xsum, batch, block, y, path, isa_name(isa));
    free(x); free(y); free(xq); free(xqn); free(tmp); free(xs); free(xsum); free(codes);
}

static void test_dense(int isa) {
    /* 100 and 200: rows the 128-column kernels leave to the any-width ones (shorter than
       128 columns, or 64-127 past the last full block); every length has a scalar tail on
       some path (296: 40 columns past 2 blocks, 1040: 16) */
    static const int64_t n_ins[] = {128, 296, 1040, 100, 200};
    static const int64_t batches[] = {1, 2, 3, 4, 5, 9};
    for (int bits = 1; bits <= 8; bits++)
        for (int kind = 0; kind <= 1; kind++)
            for (int ni = 0; ni < 5; ni++) {
                const int64_t n_in = n_ins[ni];
                /* groups: none, 128, 32 and 64 (linear only; 32 and 64 take the per-lane
                   group scales of the 128-column int8 kernels for 2 and 4 bits), one of
                   them with shared parameters */
                const int64_t groups[] = {n_in, 128, 32, 64};
                for (int gi = 0; gi < (kind == 0 ? 4 : 1); gi++) {
                    const int64_t group = groups[gi];
                    for (int shared = 0; shared <= 1; shared++) {
                        if (shared && gi >= 2) continue;
                        mat m;
                        mat_make(&m, bits, kind, 9, n_in, group, shared);
                        for (int bt = 0; bt < 6; bt++) {
                            if (shared && bt % 2) continue;
                            test_float(&m, isa, batches[bt]);
                            /* x blocks: 128 and 32 (the fast paths' sizes), the whole row,
                               and 48 where it divides the group (an odd size) */
                            const int64_t blocks[] = {128, 32, n_in, 48};
                            for (int k = 0; k < 4; k++) {
                                const int64_t blk = blocks[k];
                                if (kind == 0 && group < n_in && group % blk) continue;
                                if (k == 3 && bt != 2) continue;
                                test_int8(&m, isa, batches[bt], blk);
                            }
                        }
                        mat_free(&m);
                    }
                }
            }
}

/* The GEMM path's product (qk_gemm.h's interleave, then the kernel per quad of rows). */
static void run_gemm(const qk_dense *w, int path, const qk_xq *q, int64_t batch, float *y) {
    const int64_t n = w->n_in, n4 = (n + 3) & ~(int64_t)3, nbg = (batch + 15) / 16;
    const int64_t nb = q->nblocks, nt = nbg * nb * QK_GEMM_LANES;
    int8_t *xi = calloc((size_t)(nbg * n4 * QK_GEMM_LANES), 1);
    float *xst = calloc((size_t)nt, sizeof(float)), *xzt = calloc((size_t)nt, sizeof(float));
    uint8_t *scratch = xmalloc((size_t)qk_int8_scratch_codes(n));
    if (!xi || !xst || !xzt) { fprintf(stderr, "out of memory\n"); exit(2); }
    qk_gemm_pack_x(q, batch, n, xi, xst, xzt);
    for (int64_t r0 = 0; r0 < w->n_out; r0 += 4) {
        const int64_t nr = w->n_out - r0 < 4 ? w->n_out - r0 : 4;
        if (path == QK_PATH_AVX512_GEMM)
            qk_gemm_rows_avx512(w, r0, nr, xi, xst, xzt, batch, q->block, nb, y, scratch);
        else if (path == QK_PATH_AVX2_GEMM)
            qk_gemm_rows_avx2(w, r0, nr, xi, xst, xzt, batch, q->block, nb, y, scratch);
        else
            qk_gemm_rows_neon(w, r0, nr, xi, xst, xzt, batch, q->block, nb, y, scratch);
    }
    free(xi); free(xst); free(xzt); free(scratch);
}

/* The int8 GEMM of variant isa on a batch of >= 16 and the first n_out rows of m: against
   the int8 formula with exact sums and, for AVX2 on a CPU that also runs AVX-512, bit for
   bit against the AVX-512 GEMM (the same integer sums and the same float operations). */
static void test_gemm(const mat *m, int isa, int64_t n_out, int64_t batch, int64_t block) {
    qk_dense w = m->w;
    w.isa = isa;
    w.n_out = n_out;
    const int64_t n = w.n_in, nb = (n + block - 1) / block;
    const int path = qk_int8_batch_path(&w, isa, block, batch);
    /* the variants with a GEMM: AVX2, AVX-512, and NEON when the CPU has dotprod */
    int want = 0;
#if QK_X86
    want = isa == QK_ISA_AVX2 ? QK_PATH_AVX2_GEMM : isa == QK_ISA_AVX512 ? QK_PATH_AVX512_GEMM : 0;
#endif
#if QK_ARM64
    want = isa == QK_ISA_NEON && qk_neon_dotprod() ? QK_PATH_NEON_GEMM : 0;
#endif
    if (!want) {
        CHECK(path != QK_PATH_AVX2_GEMM && path != QK_PATH_AVX512_GEMM && path != QK_PATH_NEON_GEMM,
              "%s: a GEMM path", isa_name(isa));
        return;
    }
    CHECK(path == want, "%s bits=%d block=%lld batch=%lld: path %d, not the GEMM", isa_name(isa),
          w.bits, (long long)block, (long long)batch, path);
    int8_paths[path >= 0 && path < NPATH ? path : NPATH - 1]++;
    float *x = xmalloc(sizeof(float) * (size_t)(batch * n)), *y = xmalloc(sizeof(float) * (size_t)(batch * n_out));
    int8_t *xq = xmalloc((size_t)(batch * n)), *tmp = xmalloc((size_t)n);
    float *xs = xmalloc(sizeof(float) * (size_t)(batch * nb));
    int32_t *xsum = xmalloc(sizeof(int32_t) * (size_t)(batch * nb));
    for (int64_t bi = 0; bi < batch; bi++)
        for (int64_t c = 0; c < n; c++)   /* extreme: q = +-127, a third of the rows negated */
            x[bi * n + c] = m->xsign ? m->xsign[c] * (bi % 3 == 2 ? -1.0f : 1.0f) : frnd(-1.0f, 1.0f);
    for (int64_t bi = 0; bi < batch; bi++)
        qk_quantize_row(x + bi * n, n, block, xq + bi * n, xs + bi * nb, xsum + bi * nb, 0, tmp, 0.0f);
    qk_xq q = {xq, xs, xsum, block, nb};
    for (int64_t i = 0; i < batch * n_out; i++) y[i] = NAN;
    run_gemm(&w, path, &q, batch, y);
    check_int8(m, &w, xq, xs, xsum, batch, block, y, path, isa_name(isa));
    if (isa == QK_ISA_AVX2 && qk_isa_supported(QK_ISA_AVX512)) {
        float *y5 = xmalloc(sizeof(float) * (size_t)(batch * n_out));
        qk_dense w5 = w;
        w5.isa = QK_ISA_AVX512;
        run_gemm(&w5, QK_PATH_AVX512_GEMM, &q, batch, y5);
        CHECK(memcmp(y, y5, sizeof(float) * (size_t)(batch * n_out)) == 0,
              "avx2-gemm bits=%d kind=%d n_in=%lld block=%lld batch=%lld n_out=%lld: not "
              "bit-identical to avx512-gemm", w.bits, w.kind, (long long)n, (long long)block,
              (long long)batch, (long long)n_out);
        free(y5);
    }
    free(x); free(y); free(xq); free(tmp); free(xs); free(xsum);
}

/* Every width and kind, n_in ending in a partial step of 4 columns (130) or not, groups
   none / 128 / 32, x blocks 128, 32, 4, 48, 12 (3 steps: the NEON GEMM's step tail) and
   the whole row, batches 16, 17, 31, 33 and 64 (full and partial groups of 16 and of 8
   lanes), 1, 3, 5 and 9 rows; then the extreme-value weights. */
static void test_gemm_grid(int isa) {
    static const int64_t n_ins[] = {130, 296, 1040};
    static const int64_t batches[] = {16, 17, 31, 33, 64};
    static const int64_t n_outs[] = {9, 1, 3, 5};
    for (int bits = 1; bits <= 8; bits++)
        for (int kind = 0; kind <= 1; kind++)
            for (int ni = 0; ni < 3; ni++) {
                const int64_t n_in = n_ins[ni];
                const int64_t groups[] = {n_in, 128, 32};
                for (int gi = 0; gi < (kind == 0 ? 3 : 1); gi++)
                    for (int shared = 0; shared <= (gi == 0); shared++) {
                        const int64_t group = groups[gi];
                        mat m;
                        mat_make(&m, bits, kind, 9, n_in, group, shared);
                        for (int bt = 0; bt < 5; bt++) {
                            const int64_t blocks[] = {128, 32, 4, 48, 12, n_in};
                            for (int k = 0; k < 6; k++) {
                                const int64_t blk = blocks[k];
                                if ((kind == 0 && group < n_in && group % blk) || blk % 4) continue;
                                if (k >= 2 && bt != 1) continue;
                                for (int no = 0; no < (bt == 1 || bt == 3 ? 4 : 1); no++)
                                    test_gemm(&m, isa, n_outs[no], batches[bt], blk);
                            }
                        }
                        mat_free(&m);
                    }
            }
    for (int bits = 1; bits <= 8; bits++)
        for (int kind = 0; kind <= 1; kind++) {
            mat m;
            mat_make_extreme(&m, bits, kind, 5, 1040, 1040);
            for (int bt = 0; bt < 5; bt++) {
                test_gemm(&m, isa, 5, batches[bt], 128);
                test_gemm(&m, isa, 5, batches[bt], 1040);
                if (bt == 1) test_gemm(&m, isa, 3, batches[bt], 4);
            }
            mat_free(&m);
        }
}

#if defined(__aarch64__)
/* NEON integer block sums against a plain loop, bit for bit: both the sdot kernel (when
   the CPU has it) and the fallback, on lengths around the 16-byte steps and the 4096
   flush, weights up to 255 (biased) and activations of +-127. */
static void test_neon_isum(void) {
    static const int64_t lengths[] = {0, 1, 15, 16, 17, 100, 128, 4095, 4096, 4097, 9000};
    const int64_t maxn = 9000;
    uint8_t *u = xmalloc((size_t)maxn);
    int8_t *xq = xmalloc((size_t)maxn);
    for (int mode = 0; mode < 2; mode++)
        for (int li = 0; li < (int)(sizeof lengths / sizeof lengths[0]); li++) {
            const int64_t n = lengths[li];
            for (int64_t i = 0; i < n; i++) {
                u[i] = (uint8_t)(mode ? rnd() & 255 : rnd() & 127);
                xq[i] = (int8_t)((int)(rnd() % 255) - 127);
            }
            if (n > 2) { u[0] = mode ? 255 : 127; xq[0] = -127; u[1] = 0; xq[1] = 127; }
            int64_t ref = 0;
            for (int64_t i = 0; i < n; i++) ref += (int64_t)u[i] * xq[i];
            /* the kernels take the biased weights u - 128 in mode 1 */
            int8_t *wv = xmalloc((size_t)n + 1);
            for (int64_t i = 0; i < n; i++) wv[i] = (int8_t)(mode ? (int)u[i] - 128 : u[i]);
            int64_t got = qk_isum_neon_plain(wv, xq, n, mode);
            CHECK(got == ref, "neon isum fallback mode %d n=%lld: %lld, want %lld", mode,
                  (long long)n, (long long)got, (long long)ref);
            if (qk_neon_dotprod()) {
                got = qk_isum_neon_dot(wv, xq, n, mode);
                CHECK(got == ref, "neon isum sdot mode %d n=%lld: %lld, want %lld", mode,
                      (long long)n, (long long)got, (long long)ref);
            }
            free(wv);
        }
    free(u); free(xq);
}
#endif

static const char *path_name(int p) {
    switch (p) {
        case 0: return "generic";
        case 1: return "avx2";
        case 2: return "avx512";
        case 3: return "avx512-any";
        case 4: return "avx2-any";
        case 5: return "neon";
        case 6: return "avx512-gemm";
        case 7: return "avx2-gemm";
        case 8: return "neon-gemm";
        default: return "other";
    }
}

int main(void) {
    printf("build flags: %s\n", qk_build_flags());
    printf("best variant: %s\n", isa_name(qk_isa_best()));
    for (int isa = 0; isa < QK_ISA_COUNT; isa++) {
        if (!qk_isa_supported(isa)) {
            printf("variant %s: not supported here, skipped\n", isa_name(isa));
            continue;
        }
        const int before = failures;
        memset(float_paths, 0, sizeof float_paths);
        memset(int8_paths, 0, sizeof int8_paths);
        test_bitpack(isa);
        test_dense(isa);
        test_gemm_grid(isa);
        printf("variant %s: tested (%s); float paths:", isa_name(isa),
               failures == before ? "ok" : "FAILED");
        for (int p = 0; p < NPATH; p++)
            if (float_paths[p]) printf(" %s=%ld", path_name(p), float_paths[p]);
        printf("; int8 paths:");
        for (int p = 0; p < NPATH; p++)
            if (int8_paths[p]) printf(" %s=%ld", path_name(p), int8_paths[p]);
        printf("\n");
    }
#if defined(__aarch64__)
    printf("neon dotprod: %s\n", qk_neon_dotprod() ? "yes" : "no");
    test_neon_isum();
#endif
    if (failures) {
        printf("%d FAILURES\n", failures);
        return 1;
    }
    printf("ALL OK\n");
    return 0;
}
