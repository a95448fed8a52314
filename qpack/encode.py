"""Encode one float tensor: prune → quantize → choose layout and codecs → sections.

``encode_tensor`` returns the tensor's header entry (spec) and its section blobs; the
container (qpack/format.py) later gives the blobs their offsets and checksums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from qpack import dtypes
from qpack._kernels import errstats as _errstats
from qpack._validate import matrix_shape
from qpack.calibration import Calibration
from qpack.cluster import quantize_kmeans
from qpack.gptq import quantize_calibrated
from qpack.logquant import GRID, quantize_log
from qpack.prune import prune_magnitude
from qpack.quantize import quantize_linear, zeros_storage
from qpack.sections import coded_nbytes, encode_codes, encode_raw, encode_varint
from qpack.sparse import encode_sparse_index
from qpack.tensor_spec import element_limit
from qpack.threads import get_num_threads

# the error stats decode blocks of rows of about this many weights
STATS_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class TensorSettings:
    """The compression settings of one tensor (after per-layer overrides)."""

    method: str = "kmeans"
    bits: int = 4
    prune: float = 0.0
    group_size: int | None = None
    symmetric: bool = False
    clip: str = "minmax"
    entropy: bool = True
    per_channel: bool = False
    init: str = "linear"
    scale_dtype: str = "float16"
    codebook_dtype: str = "auto"

    def as_json(self) -> dict:
        """The settings as a JSON-ready dict (stored in the file's metadata)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def encode_raw_tensor(arr: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """Header entry and blobs of a tensor stored exactly as given."""
    desc, blob = encode_raw(arr)
    spec = {"method": "raw", "shape": list(arr.shape), "dtype": desc["dtype"],
            "sections": {"data": desc}}
    return spec, {"data": blob}


def _stats(w: np.ndarray, q, mask: np.ndarray | None) -> dict:
    """Sparsity and reconstruction errors of float32 ``w`` (rows, cols) against the
    transform ``q`` (its ``dequantize_rows``), decoded a block of rows at a time: no
    tensor-sized temporaries."""
    rows, cols = w.shape
    step = max(1, STATS_BLOCK_ELEMENTS // max(cols, 1))
    err = sig = max_abs = 0.0
    for r0 in range(0, rows, step):
        ref = np.ascontiguousarray(w[r0:r0 + step], dtype=np.float32).reshape(-1)
        approx = np.ascontiguousarray(q.dequantize_rows(r0, r0 + step, np.float32),
                                      dtype=np.float32).reshape(-1)
        if ref.size != approx.size:  # the kernel indexes both by one length
            raise ValueError(f"reconstruction has {approx.size} elements, expected "
                             f"{ref.size}")
        e, s, m = _errstats.error_sums(ref, approx, get_num_threads())
        err, sig, max_abs = err + e, sig + s, max(max_abs, m)
    if err == 0.0:
        rel, sqnr = 0.0, math.inf
    else:
        rel = math.sqrt(err / sig) if sig > 0 else math.inf
        sqnr = 10.0 * math.log10(sig / err) if sig > 0 else -math.inf
    return {"sparsity": _informative(0.0 if mask is None
                                     else 1.0 - np.count_nonzero(mask) / mask.size),
            # JSON has no infinities: an exact or all-zero tensor stores null
            "rel_error": _informative(rel), "sqnr_db": _informative(sqnr),
            "max_abs_error": _informative(max_abs)}


def _informative(x: float) -> float | None:
    """A stats figure as stored: 6 significant digits (they are informative, and every
    digit costs header bytes), None when not finite."""
    return float(f"{float(x):.6g}") if math.isfinite(x) else None


def _quantize(w2: np.ndarray, settings: TensorSettings, mask: np.ndarray | None,
              calibration: Calibration | None):
    """The transform object of float32 ``w2`` (rows, cols): error-compensated when the
    tensor has calibration (recording the damping used in ``calibration.chosen``)."""
    if calibration is not None:
        q, calibration.chosen = quantize_calibrated(w2, settings, mask, calibration)
        return q
    if settings.method == "linear":
        src = w2 if mask is None else np.where(mask, w2, 0).astype(w2.dtype, copy=False)
        return quantize_linear(src, settings.bits, group_size=settings.group_size,
                               symmetric=settings.symmetric, clip=settings.clip,
                               scale_dtype=settings.scale_dtype)
    if settings.method == "log":
        return quantize_log(w2, settings.bits, mask=mask, per_channel=settings.per_channel)
    return quantize_kmeans(w2, settings.bits, mask=mask, init=settings.init,
                           per_channel=settings.per_channel,
                           codebook_dtype=settings.codebook_dtype)


def encode_tensor(arr: np.ndarray, settings: TensorSettings,
                  mask: np.ndarray | None = None,
                  calibration: Calibration | None = None,
                  dtype_name: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Compress one floating tensor; return (header entry, {role: uint8 blob}).

    ``mask`` (bool, arr's shape) is a keep-mask computed elsewhere (global pruning);
    otherwise ``settings.prune`` prunes this tensor by magnitude. ``calibration`` (checked
    by the plan) quantizes with error compensation (qpack/gptq.py), records the damping
    used in ``calibration.chosen`` and stores the static int8 activation scale
    (``act_scale``) its act_range rule picks. ``dtype_name``: the dtype the tensor has
    when ``arr`` holds its float32 values instead (a checkpoint's bfloat16 tensor read
    straight into float32, StoredTensor.read_float32); None: arr's own.
    """
    shape = arr.shape
    rows, cols = matrix_shape(shape)
    # every floating dtype is quantized from its float32 values (float64 weights lose
    # nothing that 8-bit codes could keep)
    w2 = np.asarray(arr).astype(np.float32, copy=False).reshape(rows, cols)
    if mask is None and settings.prune > 0:
        mask = prune_magnitude(w2, settings.prune)
    elif mask is not None:
        mask = np.asarray(mask, dtype=bool).reshape(rows, cols)
    if mask is not None and mask.all():
        mask = None
    bits = settings.bits
    # a log grid is a codebook: stored as a kmeans tensor, marked by the informative "grid"
    spec: dict = {"shape": list(shape), "dtype": dtype_name or dtypes.dtype_name(arr.dtype),
                  "method": "kmeans" if settings.method == "log" else settings.method,
                  "bits": bits}
    blobs: dict[str, np.ndarray] = {}
    sections: dict[str, dict] = {}
    q = _quantize(w2, settings, mask, calibration)
    if calibration is not None and calibration.act_range is not None:
        act_scale = calibration.act_scale()
        if act_scale > 0:  # all-zero inputs have no range to store
            spec["act_scale"] = act_scale
    if settings.method == "linear":
        spec.update(group_size=settings.group_size, symmetric=settings.symmetric)
    else:
        spec.update(per_channel=settings.per_channel,
                    zero_code=None if q.zero_code is None else int(q.zero_code))
        if settings.method == "log":
            spec["grid"] = GRID
    _param_sections(q, sections, blobs)
    codes = np.asarray(q.codes).reshape(rows, cols)
    spec["stats"] = _stats(w2, q, mask)
    _choose_layout(codes, bits, mask, settings.entropy, spec, sections, blobs)
    spec["sections"] = sections
    return spec, blobs


def encode_prequantized(q, entropy: bool, mask: np.ndarray | None = None,
                        reference: np.ndarray | None = None
                        ) -> tuple[dict, dict[str, np.ndarray]]:
    """Store a KMeansQuantized / LinearQuantized exactly (already checked by handover).

    ``mask`` is the keep-mask (else the object's own, see handover.implied_mask);
    ``reference`` the float weights it approximates, for the error stats (without it
    only the sparsity is known). The tensor's dtype is float32, what ``dequantize`` gives.
    """
    from qpack.cluster import KMeansQuantized
    from qpack.handover import implied_mask

    shape = tuple(int(d) for d in q.shape)
    rows, cols = matrix_shape(shape)
    if mask is None:
        mask = implied_mask(q)
    mask = None if mask is None or mask.all() else np.asarray(mask).reshape(rows, cols)
    codes = np.ascontiguousarray(q.codes, dtype=np.uint8).reshape(rows, cols)
    spec: dict = {"shape": list(shape), "dtype": "float32", "bits": int(q.bits)}
    sections: dict[str, dict] = {}
    blobs: dict[str, np.ndarray] = {}
    if isinstance(q, KMeansQuantized):
        spec.update(method="kmeans", per_channel=bool(q.per_channel),
                    zero_code=None if q.zero_code is None else int(q.zero_code))
    else:
        spec.update(method="linear", group_size=q.group_size, symmetric=bool(q.symmetric))
    _param_sections(q, sections, blobs)
    if reference is not None:
        w = np.asarray(reference).astype(np.float32, copy=False).reshape(rows, cols)
        spec["stats"] = _stats(w, q, mask)
    else:
        spec["stats"] = {"sparsity": 0.0 if mask is None
                         else float(1.0 - np.count_nonzero(mask) / mask.size),
                         "rel_error": None, "sqnr_db": None, "max_abs_error": None}
    _choose_layout(codes, int(q.bits), mask, entropy, spec, sections, blobs)
    spec["sections"] = sections
    return spec, blobs


def _param_sections(q, sections: dict, blobs: dict) -> None:
    """The parameter sections of a LinearQuantized / KMeansQuantized (format version 3).

    Linear: ``scales`` raw in their dtype; ``zeros`` as ``quantize.zeros_storage`` says
    (packed at the code width, raw uint8, or absent when symmetric: the zero-points are
    then 2**(bits-1) by definition, which the quantizers and handover guarantee).
    K-means: ``codebook`` raw float16 when it is float16, else float32.
    """
    if hasattr(q, "codebook"):
        book = np.asarray(q.codebook)
        stored = np.float16 if book.dtype == np.float16 else np.float32
        sections["codebook"], blobs["codebook"] = encode_raw(book.astype(stored, copy=False))
        return
    sections["scales"], blobs["scales"] = encode_raw(np.asarray(q.scales))
    zeros = np.ascontiguousarray(q.zeros, dtype=np.uint8)
    codec, _ = zeros_storage(zeros, q.bits, q.symmetric)
    if codec == "packed":
        sections["zeros"], blobs["zeros"] = encode_codes(zeros, q.bits, False, "packed")
    elif codec == "raw":
        sections["zeros"], blobs["zeros"] = encode_raw(zeros)


def _choose_layout(codes, bits, mask, entropy, spec, sections, blobs) -> None:
    """Store codes densely, or as a sparse index plus kept codes when that is smaller."""
    dense_codec, dense_size = coded_nbytes(codes, bits, entropy)
    if mask is not None:
        index = encode_sparse_index(mask)
        kept = codes[mask].reshape(1, -1)
        gaps = index.gaps.reshape(1, -1)
        gaps_codec, gaps_size = coded_nbytes(gaps, index.p, entropy)
        kept_codec, kept_size = coded_nbytes(kept, bits, entropy)
        row_nsym_desc, row_nsym_blob = encode_varint(index.row_nsym)
        sparse_size = gaps_size + kept_size + row_nsym_blob.nbytes
        fits = codes.size <= element_limit(sparse_size)  # what a reader accepts
        if sparse_size < dense_size and fits:
            spec.update(layout="sparse", gap_bits=int(index.p), nnz=int(kept.size))
            sections["gaps"], blobs["gaps"] = encode_codes(gaps, index.p, entropy, gaps_codec)
            sections["row_nsym"], blobs["row_nsym"] = row_nsym_desc, row_nsym_blob
            sections["codes"], blobs["codes"] = encode_codes(kept, bits, entropy, kept_codec)
            return
    spec["layout"] = "dense"
    sections["codes"], blobs["codes"] = encode_codes(codes, bits, entropy, dense_codec)
