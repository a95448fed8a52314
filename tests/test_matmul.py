"""Tests of qpack.matmul against plain-numpy references of the encodings.

Weights are built here directly from random codes, scales, zero-points and codebooks
(the project's encoding contract), never through the quantizers.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qpack
import qpack.isa
from qpack.dispatch import DispatchPolicy, use_policy
from qpack.matmul import (
    CodebookWeights,
    LinearWeights,
    SparseWeights,
    dequantized_activations,
    int8_block_size,
)

RTOL = 1e-5


# ---- references ----------------------------------------------------------------------

def ref_linear(codes, scales, zeros, group_size):
    """W_hat[r, c] = (f32(code) - f32(zero[r', g])) * f32(scale[r', g]) in float32."""
    n_out, n_in = codes.shape
    s = scales.astype(np.float32)
    z = zeros.astype(np.float32)
    if group_size is None or group_size == -1:
        g = np.zeros(n_in, dtype=np.int64)
    else:
        g = np.arange(n_in) // group_size
    s = np.broadcast_to(s, (n_out, s.shape[1]))[:, g]
    z = np.broadcast_to(z, (n_out, z.shape[1]))[:, g]
    return (codes.astype(np.float32) - z) * s


def ref_codebook(codes, codebook):
    if codebook.ndim == 1:
        return codebook[codes]
    return np.take_along_axis(codebook, codes.astype(np.int64), axis=1)


def ref_matmul(x, w_hat):
    return np.asarray(x, dtype=np.float64) @ w_hat.astype(np.float64).T


def assert_close(y, x, w_hat):
    """Relative error <= 1e-5 against the float64 product, measured per output against
    sum_c |x_c| |w_c| (the natural scale of a dot product's rounding error)."""
    ref = ref_matmul(x, w_hat)
    scale = np.abs(np.asarray(x, dtype=np.float64)) @ np.abs(w_hat.astype(np.float64)).T
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert (np.abs(y - ref) <= RTOL * scale + 1e-30).all(), np.abs(y - ref).max()


def make_linear(rng, n_out, n_in, bits, group_size, scale_dtype=np.float16):
    codes = rng.integers(0, 1 << bits, size=(n_out, n_in), dtype=np.uint8)
    if group_size is None:
        shape = (1, 1)
    elif group_size == -1:
        shape = (n_out, 1)
    else:
        shape = (n_out, -(-n_in // group_size))
    scales = (rng.random(shape) * 0.05 + 0.001).astype(scale_dtype)
    zeros = rng.integers(0, 1 << bits, size=shape, dtype=np.uint8)
    w = LinearWeights.from_packed(qpack.pack(codes, bits), bits, scales, zeros, group_size,
                                  (n_out, n_in))
    return w, ref_linear(codes, scales, zeros, group_size)


def make_codebook(rng, n_out, n_in, bits, per_row=False):
    codes = rng.integers(0, 1 << bits, size=(n_out, n_in), dtype=np.uint8)
    shape = (n_out, 1 << bits) if per_row else (1 << bits,)
    cb = rng.standard_normal(shape).astype(np.float32)
    w = CodebookWeights.from_packed(qpack.pack(codes, bits), bits, cb, (n_out, n_in))
    return w, ref_codebook(codes, cb)


def make_sparse(rng, n_out, n_in, bits, density=0.1, linear=False, group_size=None):
    mask = rng.random((n_out, n_in)) < density
    codes = rng.integers(0, 1 << bits, size=(n_out, n_in), dtype=np.uint8)
    row_ptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
    cols = np.nonzero(mask)[1]
    if linear:
        shape = (1, 1) if group_size is None else (
            (n_out, 1) if group_size == -1 else (n_out, -(-n_in // group_size)))
        scales = (rng.random(shape) * 0.05 + 0.001).astype(np.float16)
        zeros = rng.integers(0, 1 << bits, size=shape, dtype=np.uint8)
        w = SparseWeights.from_csr((n_out, n_in), row_ptr, cols, codes[mask], scales=scales,
                                   zeros=zeros, group_size=group_size)
        dense = ref_linear(codes, scales, zeros, group_size)
    else:
        cb = rng.standard_normal(1 << bits).astype(np.float32)
        w = SparseWeights.from_csr((n_out, n_in), row_ptr, cols, codes[mask], codebook=cb)
        dense = ref_codebook(codes, cb)
    return w, np.where(mask, dense, np.float32(0))


ENCODINGS = ["linear_tensor", "linear_channel", "linear_g128", "linear_g32", "codebook",
             "codebook_rows", "sparse_codebook", "sparse_linear"]


def build(rng, enc, n_out, n_in, bits):
    if enc == "linear_tensor":
        return make_linear(rng, n_out, n_in, bits, None)
    if enc == "linear_channel":
        return make_linear(rng, n_out, n_in, bits, -1)
    if enc == "linear_g128":
        return make_linear(rng, n_out, n_in, bits, 128)
    if enc == "linear_g32":
        return make_linear(rng, n_out, n_in, bits, 32, np.float32)
    if enc == "codebook":
        return make_codebook(rng, n_out, n_in, bits)
    if enc == "codebook_rows":
        return make_codebook(rng, n_out, n_in, bits, per_row=True)
    if enc == "sparse_codebook":
        return make_sparse(rng, n_out, n_in, bits)
    return make_sparse(rng, n_out, n_in, bits, linear=True, group_size=64)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    # small test matrices would otherwise run on one thread (min_macs_per_thread)
    qpack.set_num_threads(request.param)
    with use_policy(DispatchPolicy(min_macs_per_thread=1)):
        yield request.param
    qpack.set_num_threads(None)


@pytest.fixture(params=qpack.isa.available_isas())
def kernel_isa(request):
    """Run a test on every kernel variant this CPU supports (ref, avx2, avx512)."""
    before = qpack.isa.get_isa()
    qpack.isa.set_isa(request.param)
    yield request.param
    qpack.isa.set_isa(before)


# ---- the main grid ---------------------------------------------------------------------

@pytest.fixture(params=["kernel", "tiles"])
def dense_path(request, threads):
    """Run products on the packed kernels only, or on dequantized tiles + BLAS only (tiles
    of 7 rows of 300 columns, so a product spans several)."""
    policy = DispatchPolicy(request.param, min_macs_per_thread=1, tile_bytes=4 * 300 * 7)
    with use_policy(policy):
        yield request.param


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_float_and_int8_against_reference(enc, bits, threads, dense_path, kernel_isa):
    rng = np.random.default_rng(bits * 100 + ENCODINGS.index(enc))
    # 300 columns: two full 128-column blocks plus a tail, several groups of 32/128
    w, w_hat = build(rng, enc, 45, 300, bits)
    np.testing.assert_array_equal(w.dequantize(), w_hat)
    for batch in (1, 3, 64):
        x = rng.standard_normal((batch, 300)).astype(np.float32)
        assert_close(w.matmul(x), x, w_hat)
        y8 = w.matmul(x, act_quant="int8")
        err = np.abs(y8 - ref_matmul(x, w_hat))
        assert (err <= w.int8_error_bound(x)).all()


@pytest.mark.parametrize("bits", [1, 5, 6, 7])
@pytest.mark.parametrize("enc", ["linear_g128", "linear_channel", "codebook", "sparse_codebook"])
def test_other_widths(bits, enc, kernel_isa):
    rng = np.random.default_rng(bits)
    w, w_hat = build(rng, enc, 17, 259, bits)
    np.testing.assert_array_equal(w.dequantize(), w_hat)
    for batch in (1, 5):
        x = rng.standard_normal((batch, 259)).astype(np.float32)
        assert_close(w.matmul(x), x, w_hat)
        err = np.abs(w.matmul(x, act_quant="int8") - ref_matmul(x, w_hat))
        assert (err <= w.int8_error_bound(x)).all()


def test_large_fast_path(threads, kernel_isa):
    """A 4096-wide row exercises the vector kernels over many blocks and groups; a batch
    of 300 runs on both the kernels and the tiled BLAS path on the same weights."""
    rng = np.random.default_rng(7)
    for bits, batch in ((2, 2), (4, 2), (8, 2), (4, 300)):
        w, w_hat = make_linear(rng, 64, 4096, bits, 128)
        x = rng.standard_normal((batch, 4096)).astype(np.float32)
        bound = w.int8_error_bound(x)
        for path in ("kernel", "tiles") if batch > 4 else ("kernel",):
            assert_close(w.matmul(x, path=path), x, w_hat)
            assert (np.abs(w.matmul(x, "int8", path=path) - ref_matmul(x, w_hat)) <= bound).all()


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("group", [32, 64, 96, 128, 4032, -1])
def test_every_width_and_group(bits, group, kernel_isa):
    """Each width with groups of one, two, three and four 32-column halves (96: x blocks
    that split a 64-column chunk), a large odd group and per channel; 1000 columns end in
    a partial chunk. Batches 1, 5 and 9 cover every batch tile size of the row kernels,
    16, 17 and 35 the int8 GEMM's (one, two and three groups of 16 lanes, partial)."""
    rng = np.random.default_rng(bits * 1000 + group)
    w, w_hat = make_linear(rng, 9, 1000 if group != 4032 else 4100, bits, group, np.float32)
    for batch in (1, 5, 9, 16, 17, 35):
        x = rng.standard_normal((batch, w.shape[1])).astype(np.float32)
        assert_close(w.matmul(x, path="kernel"), x, w_hat)
        err = np.abs(w.matmul(x, "int8", path="kernel") - ref_matmul(x, w_hat))
        assert (err <= w.int8_error_bound(x)).all()


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("per_row", [False, True])
def test_every_codebook_width(bits, per_row, kernel_isa):
    """Codebooks of 2..256 entries (the int8 tables by vpshufb, vpermb, vpermi2b and two
    vpermi2b with a blend), entries at +-max so the int8 table reaches 1 and 255."""
    rng = np.random.default_rng(bits + 50 * per_row)
    w, w_hat = make_codebook(rng, 7, 777, bits, per_row=per_row)
    for batch in (1, 4, 11, 21):
        x = rng.standard_normal((batch, 777)).astype(np.float32)
        x[:, ::97] *= 50  # outliers: some int8 activations at +-127
        assert_close(w.matmul(x, path="kernel"), x, w_hat)
        err = np.abs(w.matmul(x, "int8", path="kernel") - ref_matmul(x, w_hat))
        assert (err <= w.int8_error_bound(x)).all()


def test_kernel_paths_follow_the_variant():
    """The any-width kernels take 3-bit codes and groups of 32 on AVX-512 and AVX2; the
    reference variant runs the generic loops; the choice is visible in kernel_paths()."""
    rng = np.random.default_rng(3)
    w, _ = make_linear(rng, 4, 256, 3, 32)
    before = qpack.isa.get_isa()
    try:
        qpack.isa.set_isa("ref")
        assert w.kernel_paths() == {"float": "generic", "int8": "generic"}
        if "avx512" in qpack.isa.available_isas():
            qpack.isa.set_isa("avx512")
            assert w.kernel_paths() == {"float": "avx512-any", "int8": "avx512-any"}
            # from a batch of 16 the int8 mode runs the GEMM (qk_gemm_avx512.h)
            assert w.kernel_paths(15)["int8"] == "avx512-any"
            assert w.kernel_paths(16) == {"float": "avx512-any", "int8": "avx512-gemm"}
            # 2/4-bit codes in groups of 32 or 64: the int8 mode takes the 128-column
            # kernels (per-lane group scales), float mode stays on the any-width path;
            # 8-bit codes and groups of 96 do not
            for bits, group, int8_path in ((4, 32, "avx512"), (2, 64, "avx512"),
                                           (8, 32, "avx512-any"), (4, 96, "avx512-any")):
                wg, _ = make_linear(rng, 4, 384, bits, group)
                assert wg.kernel_paths() == {"float": "avx512-any", "int8": int8_path}
            # rows whose 128-column kernels would leave a scalar tail longer than the
            # any-width kernels' (under 128 columns, or 64-127 extra) run the latter
            for n_in, path in ((64, "avx512-any"), (100, "avx512-any"), (200, "avx512-any"),
                               (300, "avx512"), (784, "avx512")):
                ws, _ = make_linear(rng, 4, n_in, 4, 128)
                assert ws.kernel_paths() == {"float": path, "int8": path}, n_in
        if "avx2" in qpack.isa.available_isas():
            qpack.isa.set_isa("avx2")
            assert w.kernel_paths() == {"float": "avx2-any", "int8": "avx2-any"}
            # the 128-column block kernels keep what they handle: 4-bit g128, and 8-bit
            # codebooks in float mode; 8-bit codebooks in int8 mode go to the any-width path
            w4, _ = make_linear(rng, 4, 256, 4, 128)
            assert w4.kernel_paths() == {"float": "avx2", "int8": "avx2"}
            w8, _ = make_codebook(rng, 4, 256, 8)
            assert w8.kernel_paths() == {"float": "avx2", "int8": "avx2-any"}
            # groups of 32/64 for 2/4-bit codes: per-lane group scales, as on AVX-512
            for bits, group, int8_path in ((4, 32, "avx2"), (4, 64, "avx2"), (2, 32, "avx2"),
                                           (8, 32, "avx2-any"), (4, 96, "avx2-any")):
                wg, _ = make_linear(rng, 4, 384, bits, group)
                assert wg.kernel_paths() == {"float": "avx2-any", "int8": int8_path}
            for n_in, path in ((64, "avx2-any"), (200, "avx2-any"), (300, "avx2")):
                ws, _ = make_linear(rng, 4, n_in, 4, 128)
                assert ws.kernel_paths() == {"float": path, "int8": path}, n_in
            # from a batch of 16 the AVX2 int8 GEMM (qk_gemm_avx2.h), as on AVX-512
            assert w.kernel_paths(15)["int8"] == "avx2-any"
            for ww in (w, w4, w8):
                assert ww.kernel_paths(16)["int8"] == "avx2-gemm"
    finally:
        qpack.isa.set_isa(before)
    with pytest.raises(ValueError, match="unknown kernel variant"):
        qpack.isa.set_isa("sse9")
    info = qpack.kernel_info()
    assert info["isa"] == before and "ref" in info["available"] and info["threads"] >= 1


@pytest.fixture
def kernels_only():
    """Products on the packed kernels at every batch (the dispatch policy may otherwise
    send a batch to dequantized tiles + BLAS), with threads even for small products."""
    with use_policy(DispatchPolicy("kernel", min_macs_per_thread=1)):
        yield


def _int8_on(name, w, x):
    before = qpack.isa.get_isa()
    try:
        qpack.isa.set_isa(name)
        return w.matmul(x, "int8")
    finally:
        qpack.isa.set_isa(before)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("enc", ["tensor", "channel", 32, 64, 96, "codebook", "codebook_rows"])
def test_any_width_kernels_on_odd_rows(bits, enc, kernel_isa, kernels_only):
    """The any-width kernels (avx512-any, avx2-any) on rows that end in a partial 32- and
    64-column chunk (n_in 33, 95, 1000) and batches 1, 3, 4, 5, 17 and 33 (every tile
    shape, rows decoded once per call from a batch of 4; the int8 GEMMs from 16, with a
    last group of 16 lanes holding 1 row), 7 rows (a partial quad): float against
    the reference, int8 against the reference variant's kernel to float rounding (the
    integer sums are exact on every variant, so only the float scaling may differ)."""
    rng = np.random.default_rng(bits * 10 + (enc if isinstance(enc, int) else len(enc)))
    for n_in in (33, 95, 1000):
        if enc in ("codebook", "codebook_rows"):
            w, w_hat = make_codebook(rng, 7, n_in, bits, per_row=enc == "codebook_rows")
        else:
            g = {"tensor": None, "channel": -1}.get(enc, enc)
            w, w_hat = make_linear(rng, 7, n_in, bits, g, np.float32)
        for batch in (1, 3, 4, 5, 17, 33):
            x = rng.standard_normal((batch, n_in)).astype(np.float32)
            x[:, ::11] *= 30  # int8 activations at +-127
            assert_close(w.matmul(x), x, w_hat)
            y8 = w.matmul(x, "int8")
            assert (np.abs(y8 - ref_matmul(x, w_hat)) <= w.int8_error_bound(x)).all()
            y8_ref = _int8_on("ref", w, x)
            scale = np.abs(x.astype(np.float64)) @ np.abs(w_hat.astype(np.float64)).T
            assert (np.abs(y8 - y8_ref) <= 1e-5 * scale + 1e-30).all(), (n_in, batch)


@pytest.mark.parametrize("n_in", [320, 1000])
def test_any_width_int8_extreme_values_exact(n_in, kernel_isa, kernels_only):
    """As test_int8_extreme_values_exact, on the weights the any-width kernels and the
    int8 GEMMs (batches 16 and 33) take: codebooks of 8..256 entries at +-1 (int8 table
    entries 1 and 255), 8-bit linear codes 0 and 255 in groups of 32 and 64 (zero-points
    0, 128, 255), 7-bit codes 127 (the largest pair of products AVX2's vpmaddubsw takes
    unsigned: 2 * 127 * 127) and 4-6-bit codes at their maximum (the AVX2 GEMM adds 8, 4
    and 2 steps of such pairs in int16); 2- and 4-bit codes in groups of 32 and 64 run
    the 128-column kernels (AVX-512 and AVX2) with per-lane group scales. Every product
    of a row has the same sign, so a saturated or wrapped 16-bit sum would be far off."""
    rng = np.random.default_rng(n_in)
    for batch in (1, 3, 4, 5, 16, 33):
        sgn = np.where(rng.random((batch, n_in)) < 0.5, -1.0, 1.0).astype(np.float32)
        x = sgn.copy()
        x[:, ::7] *= 0.5
        cases = []
        for bits in (3, 5, 6, 7, 8):
            cb = np.where(np.arange(1 << bits) % 2 == 0, -1.0, 1.0).astype(np.float32)
            pos = 1 + 2 * rng.integers(0, 1 << (bits - 1), size=(5, n_in))
            codes = np.where(sgn[0] > 0, pos, pos - 1).astype(np.uint8)
            cases.append((CodebookWeights.from_packed(qpack.pack(codes, bits), bits, cb,
                                                      (5, n_in)), ref_codebook(codes, cb)))
        for bits, hi in ((8, 255), (7, 127), (6, 63), (5, 31), (4, 15), (2, 3)):
            codes = np.where(sgn[0] > 0, hi, 0).astype(np.uint8)[None, :].repeat(5, 0)
            for g in (32, 64):
                ng = -(-n_in // g)
                for z in (0, 128, 255) if bits == 8 else (0, hi):
                    s = np.full((5, ng), 0.01, np.float32)
                    zz = np.full((5, ng), z, np.uint8)
                    cases.append((LinearWeights.from_packed(qpack.pack(codes, bits), bits, s, zz,
                                                            g, (5, n_in)),
                                  ref_linear(codes, s, zz, g)))
        for w, w_hat in cases:
            y8 = w.matmul(x, act_quant="int8")
            assert (np.abs(y8 - ref_matmul(x, w_hat)) <= w.int8_error_bound(x)).all()
            xq = np.round(x * 127) / 127
            assert_close(y8, xq, w_hat)


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(qpack.isa.available_isas()),
                    reason="needs a CPU with both AVX2 and AVX-512 GEMMs")
@pytest.mark.parametrize("bits", range(1, 9))
def test_avx2_gemm_equals_avx512_gemm(bits, kernels_only):
    """The AVX2 int8 GEMM sums the same integers as the AVX-512 one and folds them with the
    same float operations, so the two agree bit for bit (linear per channel and g32,
    codebooks; batches with full and partial lane groups; n_in not a multiple of 4)."""
    rng = np.random.default_rng(bits + 700)
    weights = [make_linear(rng, 11, 230, bits, -1, np.float32)[0],
               make_linear(rng, 11, 256, bits, 32, np.float32)[0],
               make_codebook(rng, 11, 230, bits, per_row=True)[0]]
    for w in weights:
        for batch in (16, 24, 33, 64):
            x = rng.standard_normal((batch, w.shape[1])).astype(np.float32)
            y = {}
            for name in ("avx2", "avx512"):
                before = qpack.isa.get_isa()
                try:
                    qpack.isa.set_isa(name)
                    assert w.kernel_paths(batch)["int8"] == f"{name}-gemm"
                    y[name] = w.matmul(x, "int8")
                finally:
                    qpack.isa.set_isa(before)
            np.testing.assert_array_equal(y["avx2"], y["avx512"])


# ---- odd shapes and inputs --------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (7, 1), (3, 129), (2, 127), (5, 1000)])
@pytest.mark.parametrize("enc", ["linear_g32", "linear_g128", "linear_channel", "codebook",
                                 "sparse_linear"])
def test_odd_shapes(shape, enc):
    rng = np.random.default_rng(sum(shape))
    for bits in (2, 4, 8):
        w, w_hat = build(rng, enc, *shape, bits)
        x = rng.standard_normal(shape[1]).astype(np.float32)
        y = w.matmul(x)
        assert y.shape == (shape[0],)
        assert_close(y[None], x[None], w_hat)


def test_group_not_dividing_row():
    rng = np.random.default_rng(3)
    for g in (1, 5, 100, 200, 256, 1000):
        w, w_hat = make_linear(rng, 9, 300, 4, g)
        x = rng.standard_normal((3, 300)).astype(np.float32)
        assert_close(w.matmul(x), x, w_hat)
        assert (np.abs(w.matmul(x, "int8") - ref_matmul(x, w_hat)) <= w.int8_error_bound(x)).all()


def test_empty_shapes():
    rng = np.random.default_rng(0)
    for n_out, n_in in [(0, 16), (4, 0), (0, 0)]:
        w, w_hat = make_linear(rng, n_out, n_in, 4, -1)
        y = w.matmul(np.ones((2, n_in), np.float32))
        assert y.shape == (2, n_out) and not y.any()
        assert w.dequantize().shape == (n_out, n_in)
        c, _ = make_codebook(rng, n_out, n_in, 3)
        assert c.matmul(np.ones(n_in)).shape == (n_out,)
        s, _ = make_sparse(rng, n_out, n_in, 4)
        assert not s.matmul(np.ones((1, n_in))).any()
    w, _ = make_linear(rng, 5, 8, 4, None)
    assert w.matmul(np.ones((0, 8))).shape == (0, 5)
    empty = SparseWeights.from_csr((3, 10), [0, 0, 0, 0], [], np.zeros(0, np.uint8),
                                   codebook=np.ones(4, np.float32))
    assert not empty.matmul(np.ones(10)).any()
    assert not empty.matmul(np.ones(10), "int8").any()


def test_non_contiguous_and_dtypes():
    rng = np.random.default_rng(1)
    w, w_hat = make_linear(rng, 20, 256, 4, 128)
    big = rng.standard_normal((6, 512))
    x = big[::2, ::2]  # float64, strided both ways
    assert_close(w.matmul(x), x.astype(np.float32), w_hat)
    xf = np.asfortranarray(big[:, :256].astype(np.float16))
    assert_close(w.matmul(xf), xf.astype(np.float32), w_hat)


def test_out_argument():
    rng = np.random.default_rng(2)
    w, w_hat = make_codebook(rng, 10, 64, 4)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    out = np.full((3, 10), np.nan, np.float32)
    assert w.matmul(x, out=out) is out
    assert_close(out, x, w_hat)
    with pytest.raises(ValueError, match="out"):
        w.matmul(x, out=np.empty((3, 10), np.float64))
    with pytest.raises(ValueError, match="out"):
        w.matmul(x, out=np.empty((10, 3), np.float32))
    with pytest.raises(ValueError, match="out"):
        w.matmul(x, out=np.empty((3, 20), np.float32)[:, ::2])


def test_nan_propagates():
    rng = np.random.default_rng(4)
    for enc in ("linear_g128", "codebook", "sparse_codebook"):
        w, _ = build(rng, enc, 8, 256, 4)
        x = rng.standard_normal((2, 256)).astype(np.float32)
        x[1, 5] = np.nan
        for mode in (None, "int8"):
            y = w.matmul(x, act_quant=mode)
            assert np.isfinite(y[0]).all()
            if enc != "sparse_codebook":  # a pruned column 5 may drop the NaN in sparse rows
                assert np.isnan(y[1]).all()


def test_read_only_memmap_input(tmp_path):
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 16, size=(12, 200), dtype=np.uint8)
    packed = qpack.pack(codes, 4)
    path = tmp_path / "w.bin"
    packed.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=packed.shape)
    cb = rng.standard_normal(16).astype(np.float32)
    w = CodebookWeights.from_packed(mapped, 4, cb, (12, 200))
    x = rng.standard_normal(200).astype(np.float32)
    assert_close(w.matmul(x)[None], x[None], ref_codebook(codes, cb))
    assert np.array_equal(np.asarray(mapped), packed)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("block", [32, 64, 128])
def test_quantize_in_the_permuted_layout(bits, block):
    """Activations for the 128-column kernels: quantized per block in natural order, each
    full 128-column span then permuted to the bits' stream layout (qk_permute_row), the
    tail left in natural order."""
    from qpack._kernels import matmul as kmat

    x = np.random.default_rng(block + bits).standard_normal((3, 300)).astype(np.float32)
    xq0, xs0, xsum0 = kmat.quantize(x, block, 0, 1)
    xq, xs, xsum = kmat.quantize(x, block, bits, 2)
    np.testing.assert_array_equal(xs, xs0)
    np.testing.assert_array_equal(xsum, xsum0)
    streams = 8 // bits
    want = xq0.copy()
    for c0 in (0, 128):
        span = xq0[:, c0:c0 + 128]
        want[:, c0:c0 + 128] = np.concatenate([span[:, k::streams] for k in range(streams)], 1)
    np.testing.assert_array_equal(xq, want)
    with pytest.raises(ValueError, match="block 32, 64 or 128"):
        kmat.quantize(x, 96, bits, 1)


def test_int8_block_rule():
    assert int8_block_size(None, 4096) == 128
    assert int8_block_size(256, 4096) == 128
    assert int8_block_size(32, 4096) == 32
    assert int8_block_size(100, 4096) == 100
    assert int8_block_size(5000, 4096) == 128
    x = np.linspace(-1, 1, 300, dtype=np.float32)
    xh = dequantized_activations(x, 128)
    scale = np.abs(x[:128]).max() / 127
    assert np.abs(xh[:128] - x[:128]).max() <= scale / 2 * (1 + 1e-6)


def test_int8_actually_quantizes():
    """The int8 result differs from the float one (it is not the float path renamed) yet
    stays within the bound, and the bound is not vacuous (well below sum |w||x|)."""
    rng = np.random.default_rng(6)
    w, w_hat = make_linear(rng, 64, 1024, 4, 128)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    y, y8 = w.matmul(x), w.matmul(x, "int8")
    assert not np.array_equal(y, y8)
    bound = w.int8_error_bound(x)
    assert (np.abs(y8 - ref_matmul(x, w_hat)) <= bound).all()
    assert (bound < 0.05 * (np.abs(x) @ np.abs(w_hat).T)).all()


def test_nbytes():
    rng = np.random.default_rng(8)
    w, _ = make_linear(rng, 64, 256, 4, 128)
    assert w.nbytes == 64 * 128 + 2 * 64 * 2 * 4
    s, _ = make_sparse(rng, 64, 256, 4)
    assert s.nbytes >= s.nnz * 5 + 65 * 8


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(1, 400), st.integers(1, 8), st.integers(1, 4),
       st.sampled_from([None, -1, 7, 32, 128, 384]), st.integers(0, 2**31 - 1))
def test_hypothesis_linear(n_out, n_in, bits, batch, group, seed):
    rng = np.random.default_rng(seed)
    w, w_hat = make_linear(rng, n_out, n_in, bits, group)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    assert_close(w.matmul(x), x, w_hat)
    assert (np.abs(w.matmul(x, "int8") - ref_matmul(x, w_hat)) <= w.int8_error_bound(x)).all()


# ---- bad inputs ----------------------------------------------------------------------

def test_bad_linear_arguments():
    codes = np.zeros((4, 10), np.uint8)
    packed = qpack.pack(codes, 4)
    s, z = np.ones((4, 1), np.float16), np.zeros((4, 1), np.uint8)
    ok = dict(packed=packed, bits=4, scales=s, zeros=z, group_size=-1, shape=(4, 10))
    LinearWeights.from_packed(**ok)
    bad = [
        ("bits", dict(bits=9)), ("bits", dict(bits=0)), ("packed", dict(bits=3)),
        ("packed", dict(packed=packed.astype(np.int16))), ("packed", dict(shape=(4, 11))),
        ("scales", dict(scales=np.ones((1, 1), np.float16))),
        ("scales", dict(scales=np.ones((4, 1), np.int32))),
        ("scales", dict(scales=np.full((4, 1), np.inf, np.float32))),
        ("zeros", dict(zeros=np.zeros((4, 2), np.uint8))),
        ("zeros", dict(zeros=np.full((4, 1), 300, np.int32))),
        ("group_size", dict(group_size=0)), ("group_size", dict(group_size=2.5)),
        ("shape", dict(shape=(4,))), ("n_in", dict(shape=(4, -1))),
    ]
    for name, change in bad:
        with pytest.raises(ValueError, match=name):
            LinearWeights.from_packed(**{**ok, **change})
    w = LinearWeights.from_packed(**ok)
    with pytest.raises(ValueError, match="columns"):
        w.matmul(np.ones(11))
    with pytest.raises(ValueError, match="floating"):
        w.matmul(np.ones(10, dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        w.matmul(np.ones((2, 2, 10)))
    with pytest.raises(ValueError, match="act_quant"):
        w.matmul(np.ones(10), act_quant="int4")


def test_bad_codebook_arguments():
    codes = np.full((3, 8), 7, np.uint8)
    packed = qpack.pack(codes, 3)
    with pytest.raises(ValueError, match="codebook"):
        CodebookWeights.from_packed(packed, 3, np.ones(16, np.float32), (3, 8))
    with pytest.raises(ValueError, match="code 7"):
        CodebookWeights.from_packed(packed, 3, np.ones(4, np.float32), (3, 8))
    with pytest.raises(ValueError, match="codebook"):
        CodebookWeights.from_packed(packed, 3, np.ones((2, 8), np.float32), (3, 8))
    with pytest.raises(ValueError, match="codebook"):
        CodebookWeights.from_packed(packed, 3, np.array([np.nan] * 8, np.float32), (3, 8))
    with pytest.raises(ValueError, match="codebook"):
        CodebookWeights.from_packed(packed, 3, np.arange(8), (3, 8))
    # a short codebook is fine when every code fits
    CodebookWeights.from_packed(packed, 3, np.ones(8, np.float32), (3, 8))


def test_bad_sparse_arguments():
    cb = np.ones(16, np.float32)
    ok = dict(shape=(3, 10), row_ptr=np.array([0, 2, 2, 4]), cols=np.array([1, 5, 0, 9]),
              codes=np.array([1, 2, 3, 4], np.uint8))
    SparseWeights.from_csr(**ok, codebook=cb)
    bad = [
        ("row_ptr", dict(row_ptr=np.array([0, 2, 4]))),
        ("row_ptr", dict(row_ptr=np.array([0, 3, 2, 4]))),
        ("row_ptr", dict(row_ptr=np.array([1, 2, 2, 4]))),
        ("row_ptr", dict(row_ptr=np.array([0, 2, 2, 5]))),
        ("cols", dict(cols=np.array([1, 5, 0, 10]))),
        ("cols", dict(cols=np.array([1, 5, -1, 9]))),
        ("cols", dict(cols=np.array([5, 1, 0, 9]))),
        ("cols", dict(cols=np.array([1, 1, 0, 9]))),
        ("codes", dict(codes=np.array([1, 2, 3], np.uint8))),
        ("codes", dict(codes=np.array([1, 2, 3, 4], np.int64))),
    ]
    for name, change in bad:
        with pytest.raises(ValueError, match=name):
            SparseWeights.from_csr(**{**ok, **change}, codebook=cb)
    with pytest.raises(ValueError, match="codes must be < 4"):
        SparseWeights.from_csr(**ok, codebook=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="either"):
        SparseWeights.from_csr(**ok)
    with pytest.raises(ValueError, match="either"):
        SparseWeights.from_csr(**ok, codebook=cb, scales=np.ones((1, 1), np.float16))
    with pytest.raises(ValueError, match="zeros"):
        SparseWeights.from_csr(**ok, scales=np.ones((1, 1), np.float16))


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_take_rows(enc, bits, threads):
    """Row gathers (embedding lookups) equal the reference rows, in any index shape."""
    rng = np.random.default_rng(bits + 31 * ENCODINGS.index(enc))
    w, w_hat = build(rng, enc, 45, 300, bits)
    idx = rng.integers(-45, 45, size=(4, 7))
    np.testing.assert_array_equal(w.take_rows(idx), w_hat[idx])
    assert w.take_rows([]).shape == (0, 300)
    for bad in ([45], [-46]):
        with pytest.raises(ValueError, match="row indices"):
            w.take_rows(bad)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n_in", [0, 1, 7, 16, 33, 300])
def test_codebook_rows_on_every_variant(bits, n_in, kernel_isa):
    """Codebook rows dequantized by each variant's lookup (register tables up to 32
    entries, gathers beyond, a scalar tail) equal the reference exactly, through the row
    gathers and through the tiles + BLAS product, for shared and per-row codebooks with
    fewer entries than 2**bits."""
    rng = np.random.default_rng(bits * 100 + n_in)
    for per_row in (False, True):
        w, w_hat = make_codebook(rng, 5, n_in, bits, per_row=per_row)
        np.testing.assert_array_equal(w.take_rows(np.arange(5)), w_hat)
        k = max(1, (1 << bits) - 3)   # a short codebook: the table beyond it is padding
        codes = rng.integers(0, k, size=(5, n_in), dtype=np.uint8)
        cb = rng.standard_normal(k).astype(np.float32)
        short = CodebookWeights.from_packed(qpack.pack(codes, bits), bits, cb, (5, n_in))
        np.testing.assert_array_equal(short.take_rows(np.arange(5)), cb[codes])
        x = rng.standard_normal((3, n_in)).astype(np.float32)
        assert_close(w.matmul(x, path="tiles"), x, w_hat)


@pytest.mark.parametrize("n_out", [9, 16])
def test_int8_extreme_values_exact(n_out, kernel_isa):
    """Weights at the ends of their int8 range (codebook u8 1 and 255, 8-bit codes 0 and
    255) against activations at +-127 after quantization, with the signs lined up so that
    every product has the same sign: a kernel that saturates 16-bit pair sums (AVX2
    vpmaddubsw) would be far off. Batches and row counts cover every register tile, of
    the row kernels and of the GEMMs (16, 19, 48), on every variant."""
    rng = np.random.default_rng(11)
    n_in = 384
    for batch in (1, 2, 3, 4, 5, 8, 9, 13, 16, 19, 48):
        sgn = np.where(rng.random((batch, n_in)) < 0.5, -1.0, 1.0).astype(np.float32)
        x = sgn.copy()
        x[:, ::7] *= 0.5   # a few activations off the extremes
        cases = []
        for bits in (2, 4):
            # entries -1 and +1 only: u8 = 1 or 255; code c has sign (-1)**(c+1)
            cb = np.where(np.arange(1 << bits) % 2 == 0, -1.0, 1.0).astype(np.float32)
            pos = 1 + 2 * rng.integers(0, 1 << (bits - 1), size=(n_out, n_in))
            codes = np.where(sgn[0] > 0, pos, pos - 1).astype(np.uint8)
            cases.append((CodebookWeights.from_packed(qpack.pack(codes, bits), bits, cb,
                                                      (n_out, n_in)), ref_codebook(codes, cb)))
            cbr = cb[None, :] * (1 + rng.random((n_out, 1))).astype(np.float32)
            cases.append((CodebookWeights.from_packed(qpack.pack(codes, bits), bits, cbr,
                                                      (n_out, n_in)), ref_codebook(codes, cbr)))
        codes = np.where(sgn[0] > 0, 255, 0).astype(np.uint8)[None, :].repeat(n_out, 0)
        for z in (0, 128, 255):
            s = np.full((n_out, 1), 0.01, np.float32)
            zz = np.full((n_out, 1), z, np.uint8)
            cases.append((LinearWeights.from_packed(qpack.pack(codes, 8), 8, s, zz, -1,
                                                    (n_out, n_in)),
                          ref_linear(codes, s, zz, -1)))
        for w, w_hat in cases:
            y8 = w.matmul(x, act_quant="int8", path="kernel")
            assert (np.abs(y8 - ref_matmul(x, w_hat)) <= w.int8_error_bound(x)).all()
            # x = +-1 and +-0.5 quantize to q = +-127 and +-64 (not exactly 0.5): the
            # int8 product of the quantized activations, to float rounding
            xq = np.round(x * 127) / 127
            assert_close(y8, xq, w_hat)
