"""Side information (scales, zero-points, codebooks) under .qpk format versions 2 and 3.

Version 2 stored every linear zero-point as a uint8 (symmetric ones included) and every
K-means codebook as float32; version 3 packs asymmetric zero-points at the code width,
stores none for symmetric tensors and keeps float16 codebooks when rounding the centroids
costs at most FP16_CODEBOOK_TOLERANCE of the squared error (codebook_dtype="auto"). For
N(0, 0.05) matrices this measures the bytes of side information each version stores, as
bits per weight, and for K-means the change of the squared error that float16 brings
(linear codes do not change: the same codes and scales, stored more narrowly).
"""

from __future__ import annotations

import numpy as np

import qpack
from qpack.cluster import FP16_CODEBOOK_TOLERANCE

SHAPES = ((384, 384), (1536, 384))


def _sq_error(w: np.ndarray, q) -> float:
    return float(np.sum((q.dequantize().astype(np.float64) - w) ** 2))


def _linear_rows(name: str, w: np.ndarray, bits_list) -> list[list]:
    rows = []
    for group_size in (64, -1):
        for symmetric in (False, True):
            for bits in bits_list:
                q = qpack.quantize_linear(w, bits, group_size=group_size, symmetric=symmetric)
                v2 = q.scales.nbytes + q.zeros.nbytes  # raw uint8 zero-points, always
                v3 = q.nbytes_params
                rows.append([name, f"linear g{group_size}{' sym' if symmetric else ''}",
                             bits, v2, v3, 8 * v2 / w.size, 8 * v3 / w.size, "-", 0.0])
    return rows


def _kmeans_rows(name: str, w: np.ndarray, bits_list) -> list[list]:
    rows = []
    for per_channel in (False, True):
        for bits in bits_list:
            q32 = qpack.quantize_kmeans(w, bits, per_channel=per_channel,
                                        codebook_dtype=np.float32)
            q = qpack.quantize_kmeans(w, bits, per_channel=per_channel)
            e32 = _sq_error(w, q32)
            # the float16 figure even where "auto" keeps float32: that is what it weighed
            q16 = qpack.quantize_kmeans(w, bits, per_channel=per_channel,
                                        codebook_dtype=np.float16)
            rise16 = _sq_error(w, q16) / e32 - 1 if e32 else 0.0
            rows.append([name, "kmeans per-channel" if per_channel else "kmeans", bits,
                         q32.nbytes_params, q.nbytes_params, 8 * q32.nbytes_params / w.size,
                         8 * q.nbytes_params / w.size, q.codebook.dtype.name, rise16])
    return rows


def run(quick: bool) -> dict:
    """Side-information bytes per version, and float16's error change, per matrix."""
    rng = np.random.default_rng(0)
    bits_list = (2, 4, 8) if quick else tuple(range(2, 9))
    rows = []
    for shape in SHAPES[:1] if quick else SHAPES:
        w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        name = f"{shape[0]}x{shape[1]}"
        rows += _linear_rows(name, w, bits_list)
        rows += _kmeans_rows(name, w, bits_list)
    return {
        "title": "Side information per format version (bytes, bits per weight)",
        "columns": ["matrix", "quantizer", "bits", "v2 bytes", "v3 bytes", "v2 bpw",
                    "v3 bpw", "v3 codebook", "fp16 err rise"],
        "rows": rows,
        "notes": [
            "Side information = scales + zero-points (linear) or codebooks (K-means), "
            "the bytes qpack stores beside the codes; bpw = those bytes * 8 / weights. "
            "Weights N(0, 0.05), float16 scales.",
            "v3 packs asymmetric zero-points at the code width when that saves at least a "
            "section's 64-byte alignment (not for one zero-point per row, nor at 8 bits), "
            "and stores none for symmetric tensors.",
            "fp16 err rise = squared error with float16 centroids (codes re-assigned to the "
            "rounded values) / squared error with float32 centroids - 1; "
            f"codebook_dtype='auto' keeps float16 when it is <= {FP16_CODEBOOK_TOLERANCE:g}.",
        ],
    }
