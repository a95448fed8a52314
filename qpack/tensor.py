"""CompressedTensor: one tensor's encoding description plus access to its sections.

The encoding description (``spec``) is exactly the tensor's entry in the ``.qpk`` header
(docs/FORMAT.md, section 4), so saving is serializing it and loading is validating it. A
tensor decodes its sections only when asked (dequantize, matmul), and checks them then.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qpack import dtypes
from qpack.errors import FormatError
from qpack.sections import (
    _int_field,
    check_codes_desc,
    check_shape,
    decode_codes,
    decode_raw,
    packed_codes,
)

METHODS = ("raw", "linear", "kmeans")
# A tensor may declare at most this many elements per stored byte (plus a small allowance).
# Dense codes cost >= 1 bit per element, so only extreme sparsity approaches it; the bound
# stops a hostile header from making a reader allocate far more than the file could encode.
MAX_ELEMENTS_PER_BYTE = 1024
ELEMENT_ALLOWANCE = 4096


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (rows, cols) view qpack quantizes: (shape[0], prod(rest)); 1-D as (1, n)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], int(np.prod(shape[1:], dtype=np.int64))


def param_rows_groups(group_size, rows: int, cols: int) -> tuple[int, int]:
    """Shape of the scale/zero arrays of a linear encoding."""
    if group_size is None:
        return 1, 1
    if group_size == -1:
        return rows, 1
    return rows, max(1, -(-cols // group_size))


def _section_desc(spec: dict, role: str, where: str) -> dict:
    sections = spec.get("sections")
    if not isinstance(sections, dict) or not isinstance(sections.get(role), dict):
        raise FormatError(f"{where}: missing section '{role}'")
    return sections[role]


def validate_spec(name: str, spec: dict, section_nbytes: Callable[[dict], int]) -> None:
    """Check a tensor's header entry for consistency, without reading any section data.

    ``section_nbytes(desc)`` returns a section's stored length. Raises FormatError.
    """
    where = f"tensor {name!r}"
    if not isinstance(spec, dict):
        raise FormatError(f"{where}: entry must be a JSON object")
    method = spec.get("method")
    if method not in METHODS:
        raise FormatError(f"{where}: unknown method {method!r} (known: {', '.join(METHODS)})")
    shape = check_shape(spec.get("shape"), where)
    if spec.get("dtype") not in dtypes.DTYPE_NAMES:
        raise FormatError(f"{where}: unsupported dtype {spec.get('dtype')!r}")
    total = 0
    for role, desc in (spec.get("sections") or {}).items():
        if not isinstance(desc, dict):
            raise FormatError(f"{where}: section {role!r} must be a JSON object")
        total += section_nbytes(desc)
    if method == "raw":
        desc = _section_desc(spec, "data", where)
        if desc.get("shape") != list(shape) or desc.get("dtype") != spec["dtype"]:
            raise FormatError(f"{where}: data section disagrees with the tensor's shape/dtype")
        return
    numel = int(np.prod(shape, dtype=object))
    if numel > MAX_ELEMENTS_PER_BYTE * total + ELEMENT_ALLOWANCE:
        raise FormatError(f"{where}: declares {numel} elements but stores only {total} bytes")
    if not dtypes.is_floating_name(spec["dtype"]):
        raise FormatError(f"{where}: a {method} tensor must have a floating dtype")
    bits = _int_field(spec, "bits", where, 1, 8)
    rows, cols = matrix_shape(shape)
    layout = spec.get("layout")
    if layout == "dense":
        codec, cbits, crows, count = check_codes_desc(
            _section_desc(spec, "codes", where), section_nbytes(spec["sections"]["codes"]),
            f"{where} codes")
        if (cbits, crows, count) != (bits, rows, cols):
            raise FormatError(f"{where}: codes section does not match shape/bits")
    elif layout == "sparse":
        p = _int_field(spec, "gap_bits", where, 1, 8)
        nnz = _int_field(spec, "nnz", where)
        if nnz > numel:
            raise FormatError(f"{where}: nnz {nnz} exceeds the element count {numel}")
        _, gbits, grows, _ = check_codes_desc(_section_desc(spec, "gaps", where),
                                              section_nbytes(spec["sections"]["gaps"]),
                                              f"{where} gaps")
        _, cbits, crows, count = check_codes_desc(_section_desc(spec, "codes", where),
                                                  section_nbytes(spec["sections"]["codes"]),
                                                  f"{where} codes")
        if (gbits, grows, cbits, crows, count) != (p, 1, bits, 1, nnz):
            raise FormatError(f"{where}: gaps/codes sections do not match gap_bits/bits/nnz")
        rdesc = _section_desc(spec, "row_nsym", where)
        if rdesc.get("dtype") != "uint32" or rdesc.get("shape") != [rows]:
            raise FormatError(f"{where}: row_nsym must be uint32 of shape [{rows}]")
    else:
        raise FormatError(f"{where}: layout must be 'dense' or 'sparse', got {layout!r}")
    if method == "linear":
        group_size = spec.get("group_size")
        if group_size is not None and (isinstance(group_size, bool)
                                       or not isinstance(group_size, int)
                                       or not (group_size == -1 or group_size > 0)):
            raise FormatError(f"{where}: bad group_size {group_size!r}")
        pshape = list(param_rows_groups(group_size, rows, cols))
        sdesc = _section_desc(spec, "scales", where)
        zdesc = _section_desc(spec, "zeros", where)
        if sdesc.get("shape") != pshape or sdesc.get("dtype") not in ("float16", "float32"):
            raise FormatError(f"{where}: scales must be float16/float32 of shape {pshape}")
        if zdesc.get("shape") != pshape or zdesc.get("dtype") != "uint8":
            raise FormatError(f"{where}: zeros must be uint8 of shape {pshape}")
    else:
        k = 1 << bits
        cb = _section_desc(spec, "codebook", where)
        want = [rows, k] if spec.get("per_channel") else [k]
        if cb.get("shape") != want or cb.get("dtype") != "float32":
            raise FormatError(f"{where}: codebook must be float32 of shape {want}")
        zc = spec.get("zero_code")
        if zc is not None:
            _int_field(spec, "zero_code", where, 0, k - 1)
        if layout == "sparse" and zc is None:
            raise FormatError(f"{where}: a sparse kmeans tensor needs a zero_code")


class CompressedTensor:
    """One stored tensor: its encoding description and lazily decoded contents.

    Attributes: ``name``, ``shape``, ``dtype`` (of the decompressed array), ``method``
    ("raw", "linear" or "kmeans"), ``bits`` (None for raw), ``sparsity`` (fraction of
    weights pruned), ``nbytes`` (bytes of its sections), ``stats`` (errors measured when it
    was compressed), ``spec`` (the header entry).
    """

    def __init__(self, name: str, spec: dict, read_section: Callable[[str], np.ndarray],
                 section_nbytes: Callable[[str], int]):
        self.name = name
        self.spec = spec
        self._read_section = read_section
        self._section_nbytes = section_nbytes
        self._kernel = None

    # -- description -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.spec["shape"])

    @property
    def dtype(self) -> np.dtype:
        name = self.spec["dtype"]
        if name == "bfloat16" and not dtypes.has_bfloat16():
            return np.dtype(np.float32)
        return dtypes.from_storage(np.zeros(0, dtypes.storage_dtype(name)), name).dtype

    @property
    def method(self) -> str:
        return self.spec["method"]

    @property
    def bits(self) -> int | None:
        return self.spec.get("bits")

    @property
    def layout(self) -> str:
        return self.spec.get("layout", "dense")

    @property
    def sparsity(self) -> float:
        return float(self.spec.get("stats", {}).get("sparsity", 0.0))

    @property
    def stats(self) -> dict:
        return dict(self.spec.get("stats", {}))

    @property
    def nbytes(self) -> int:
        """Bytes of this tensor's sections (what it costs in the file, before padding)."""
        return sum(self._section_nbytes(role) for role in self.spec["sections"])

    @property
    def original_nbytes(self) -> int:
        """Bytes of the tensor as given to compress (its dtype and shape)."""
        return int(np.prod(self.shape, dtype=np.int64)) * dtypes.itemsize(self.spec["dtype"])

    def __repr__(self) -> str:
        bits = f", bits={self.bits}" if self.bits else ""
        return (f"CompressedTensor({self.name!r}, shape={self.shape}, "
                f"method={self.method!r}{bits}, nbytes={self.nbytes})")

    # -- decoding ----------------------------------------------------------------
    def _where(self, role: str) -> str:
        return f"tensor {self.name!r} section {role!r}"

    def _raw(self, role: str) -> np.ndarray:
        return decode_raw(self.spec["sections"][role], self._read_section(role),
                          self._where(role))

    def _sparse_index(self):
        from qpack.sparse import SparseIndex

        rows, cols = matrix_shape(self.shape)
        gaps = decode_codes(self.spec["sections"]["gaps"], self._read_section("gaps"),
                            self._where("gaps")).reshape(-1)
        return SparseIndex.from_arrays((rows, cols), self.spec["gap_bits"], gaps,
                                       self._raw("row_nsym"))

    def _kept_codes(self) -> np.ndarray:
        return decode_codes(self.spec["sections"]["codes"], self._read_section("codes"),
                            self._where("codes")).reshape(-1)

    def _dense_codes(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(codes (rows, cols) uint8, keep-mask or None). Pruned codes are arbitrary."""
        if self.layout == "dense":
            return decode_codes(self.spec["sections"]["codes"], self._read_section("codes"),
                                self._where("codes")), None
        mask = self._sparse_index().to_mask()
        kept = self._kept_codes()
        if int(mask.sum()) != kept.size:
            raise FormatError(f"tensor {self.name!r}: sparse index keeps {int(mask.sum())} "
                              f"weights but {kept.size} codes are stored")
        codes = np.zeros(mask.shape, dtype=np.uint8)
        codes[mask] = kept
        return codes, mask

    def quantized(self):
        """The transform object (LinearQuantized or KMeansQuantized) with dense codes.

        Pruned positions of a sparse tensor hold the code that decodes to exactly 0.
        Raises ValueError for a raw tensor.
        """
        from qpack.cluster import KMeansQuantized
        from qpack.quantize import LinearQuantized

        if self.method == "raw":
            raise ValueError(f"tensor {self.name!r} is stored raw, not quantized")
        codes, mask = self._dense_codes()
        rows, cols = matrix_shape(self.shape)
        if self.method == "linear":
            zeros = self._raw("zeros")
            if mask is not None:  # pruned positions take the zero-point: decodes to 0.0
                gs = self.spec["group_size"]
                group = 1 if gs is None or gs == -1 else gs
                col_group = np.minimum(np.arange(cols) // group, zeros.shape[1] - 1)
                zfull = np.broadcast_to(zeros[:, col_group], (rows, cols))
                codes = np.where(mask, codes, zfull)
            return LinearQuantized(codes=codes.reshape(self.shape), scales=self._raw("scales"),
                                   zeros=zeros, bits=self.bits,
                                   group_size=self.spec["group_size"],
                                   symmetric=bool(self.spec.get("symmetric", False)),
                                   shape=self.shape)
        zero_code = self.spec.get("zero_code")
        if mask is not None:
            codes[~mask] = zero_code
        return KMeansQuantized(codes=codes.reshape(self.shape), codebook=self._raw("codebook"),
                               zero_code=zero_code, bits=self.bits, shape=self.shape,
                               per_channel=bool(self.spec.get("per_channel", False)))

    def dequantize(self) -> np.ndarray:
        """The decompressed array, in the original shape and dtype (a fresh array).

        Raises FormatError if a section is damaged.
        """
        if self.method == "raw":
            return np.array(self._raw("data"))
        w = self.quantized().dequantize(np.float32)
        return dtypes.cast_to(np.asarray(w).reshape(self.shape), self.spec["dtype"])

    # -- inference ---------------------------------------------------------------
    def kernel_weights(self):
        """The in-memory form the matmul kernels run on (built once, then cached)."""
        if self._kernel is None:
            self._kernel = self._build_kernel_weights()
        return self._kernel

    def _build_kernel_weights(self):
        from qpack import matmul as mm

        rows, cols = matrix_shape(self.shape)
        if self.method == "raw":
            return mm.FloatWeights(np.asarray(self._raw("data"), dtype=np.float32)
                                   .reshape(rows, cols))
        bits = self.bits
        if self.method == "linear":
            params = {"scales": self._raw("scales"), "zeros": self._raw("zeros"),
                      "group_size": self.spec["group_size"]}
        else:
            params = {"codebook": self._raw("codebook")}
        if self.layout == "dense":
            packed = packed_codes(self.spec["sections"]["codes"], self._read_section("codes"),
                                  self._where("codes"))
            if self.method == "linear":
                return mm.LinearWeights.from_packed(packed, bits, params["scales"],
                                                    params["zeros"], params["group_size"],
                                                    (rows, cols))
            return mm.CodebookWeights.from_packed(packed, bits, params["codebook"],
                                                  (rows, cols))
        row_ptr, col_idx = self._sparse_index().column_indices()
        kept = self._kept_codes()
        if kept.size != col_idx.size:
            raise FormatError(f"tensor {self.name!r}: sparse index keeps {col_idx.size} "
                              f"weights but {kept.size} codes are stored")
        return mm.SparseWeights.from_csr((rows, cols), row_ptr, col_idx, kept, **params)

    def take_rows(self, indices) -> np.ndarray:
        """Rows ``self[indices]`` decoded to float32, without decoding the others.

        For embedding lookups: ``indices`` is any integer array (negatives count from the
        end); the result has shape indices.shape + shape[1:]. Rows of packed sections are
        decoded straight from the (memory-mapped) codes; a Huffman-coded tensor is decoded
        once into memory first. Raises ValueError for out-of-range or non-integer indices
        and for a tensor that is not floating or has fewer than 2 dims.
        """
        if not dtypes.is_floating_name(self.spec["dtype"]) or len(self.shape) < 2:
            raise ValueError(f"tensor {self.name!r} (dtype {self.spec['dtype']}, shape "
                             f"{self.shape}) has no float rows to take")
        rows = self.kernel_weights().take_rows(indices)
        return rows.reshape(rows.shape[:-1] + self.shape[1:])

    def matmul(self, x, act_quant: str | None = None) -> np.ndarray:
        """y = x @ W.T straight from the packed form, W viewed as (rows, cols).

        x: float array of shape (cols,) or (batch, cols). Returns float32 (rows,) or
        (batch, rows). ``act_quant="int8"`` quantizes x per block to int8 and uses integer
        dot products (faster, slightly less accurate: docs/KERNELS.md). Raises ValueError
        for a wrong inner size, a non-floating tensor or an unknown act_quant.
        """
        if not dtypes.is_floating_name(self.spec["dtype"]):
            raise ValueError(f"tensor {self.name!r} has dtype {self.spec['dtype']}; "
                             "matmul needs a floating tensor")
        return self.kernel_weights().matmul(x, act_quant=act_quant)
