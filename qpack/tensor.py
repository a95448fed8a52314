"""CompressedTensor: one tensor's encoding description plus access to its sections.

The encoding description (``spec``) is exactly the tensor's entry in the ``.qpk`` header
(docs/FORMAT.md, section 4), as produced by the encoder or cleaned by
``tensor_spec.validate_spec``, so saving is serializing it and loading is validating it. A
tensor decodes its sections only when asked (dequantize, matmul), and checks them then.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from qpack import dtypes
from qpack._validate import group_layout, matrix_shape
from qpack.errors import FormatError
from qpack.sections import decode_codes, decode_raw, decode_varint, packed_codes
from qpack.tensor_spec import check_param_values

# the parameter sections whose values must be finite
_PARAM_VALUE_ROLES = ("scales", "codebook")


class CompressedTensor:
    """One stored tensor: its encoding description and lazily decoded contents.

    Attributes: ``name``, ``shape``, ``dtype`` (of the decompressed array), ``method``
    ("raw", "linear", "kmeans", or "log" for a kmeans tensor whose codebook is a log grid,
    spec "grid"), ``bits`` (None for raw), ``sparsity`` (fraction of weights pruned),
    ``nbytes`` (bytes of its sections), ``stats`` (errors measured when it was
    compressed), ``spec`` (the header entry).
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
        return dtypes.bfloat16() if name == "bfloat16" else np.dtype(name)

    @property
    def method(self) -> str:
        # a log grid is stored as a codebook (spec method "kmeans"); say how it was built
        return "log" if self.spec.get("grid") == "log" else self.spec["method"]

    @property
    def bits(self) -> int | None:
        return self.spec.get("bits")

    @property
    def layout(self) -> str:
        return self.spec.get("layout") or "dense"

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

    def entry_to_write(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(header entry without offsets, lengths and CRCs, {role: section bytes}) as a
        file of the current format version stores this tensor.

        An entry read from a version-1 or -2 file is a valid version-3 entry but in one
        case: a symmetric linear tensor with a ``zeros`` section (version 3 has none, the
        zero-points being 2**(bits-1)). Its zero-points are dropped when they are exactly
        that (as qpack wrote them); otherwise ``symmetric`` (informative before version 3)
        is cleared and they stay. Either way the tensor decodes as before.
        """
        spec = copy.deepcopy(self.spec)
        for desc in spec["sections"].values():
            for key in ("offset", "length", "crc32"):
                desc.pop(key, None)
        blobs = {role: self._read_section(role) for role in spec["sections"]}
        if spec["method"] == "linear" and spec["symmetric"] and "zeros" in blobs:
            half = 1 << (spec["bits"] - 1)
            if spec["bits"] >= 2 and bool(np.all(self._zeros() == half)):
                del spec["sections"]["zeros"], blobs["zeros"]
            else:
                spec["symmetric"] = False
        return spec, blobs

    # -- decoding ----------------------------------------------------------------
    def _where(self, role: str) -> str:
        return f"tensor {self.name!r} section {role!r}"

    def _raw(self, role: str) -> np.ndarray:
        arr = decode_raw(self.spec["sections"][role], self._read_section(role),
                         self._where(role))
        if role in _PARAM_VALUE_ROLES:
            check_param_values(arr, self._where(role))
        zero_code = self.spec.get("zero_code")
        if role == "codebook" and zero_code is not None and np.any(arr[..., zero_code] != 0):
            # pruned weights decode through this entry, and the kernels take them as 0.0
            raise FormatError(f"{self._where(role)}: entry zero_code={zero_code} is not 0.0")
        return arr

    def _zeros(self) -> np.ndarray:
        """The linear zero-points as uint8 (prow, ngroups), whichever way they are stored:
        raw uint8, packed at the code width (version 3), or absent (a version-3 symmetric
        tensor, whose zero-points are 2**(bits-1) by definition)."""
        sections = self.spec["sections"]
        if "zeros" not in sections:
            rows, cols = matrix_shape(self.shape)
            prow, ngroups, _ = group_layout(self.spec["group_size"], rows, cols)
            return np.full((prow, ngroups), 1 << (self.bits - 1), dtype=np.uint8)
        if sections["zeros"]["codec"] == "packed":
            return decode_codes(sections["zeros"], self._read_section("zeros"),
                                self._where("zeros"))
        return self._raw("zeros")

    def verify(self) -> None:
        """Read every section (checking its CRC32) and check that scales and codebooks are
        finite. Decodes no code stream. Raises FormatError naming the damaged section."""
        for role in self.spec["sections"]:
            if role in _PARAM_VALUE_ROLES:
                self._raw(role)
            else:
                self._read_section(role)

    def _sparse_index(self):
        from qpack.sparse import SparseIndex

        rows, cols = matrix_shape(self.shape)
        gaps = decode_codes(self.spec["sections"]["gaps"], self._read_section("gaps"),
                            self._where("gaps")).reshape(-1)
        nsym_desc = self.spec["sections"]["row_nsym"]
        if nsym_desc["codec"] == "varint":
            row_nsym = decode_varint(nsym_desc, self._read_section("row_nsym"),
                                     self._where("row_nsym"))
        else:
            row_nsym = self._raw("row_nsym")
        return SparseIndex.from_arrays((rows, cols), self.spec["gap_bits"], gaps, row_nsym)

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
            zeros = self._zeros()
            if mask is not None:  # pruned positions take the zero-point: decodes to 0.0
                _, ngroups, width = group_layout(self.spec["group_size"], rows, cols)
                col_group = np.minimum(np.arange(cols) // width, ngroups - 1)
                zfull = np.broadcast_to(zeros[:, col_group], (rows, cols))
                codes = np.where(mask, codes, zfull)
            return LinearQuantized(codes=codes.reshape(self.shape), scales=self._raw("scales"),
                                   zeros=zeros, bits=self.bits,
                                   group_size=self.spec["group_size"],
                                   symmetric=self.spec["symmetric"],
                                   shape=self.shape)
        zero_code = self.spec["zero_code"]
        if mask is not None:
            codes[~mask] = zero_code
        return KMeansQuantized(codes=codes.reshape(self.shape), codebook=self._raw("codebook"),
                               zero_code=zero_code, bits=self.bits, shape=self.shape,
                               per_channel=self.spec["per_channel"])

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
        """The in-memory form the matmul kernels run on (built once, then cached), with
        the tensor's static activation scale (``act_scale``, if calibrated)."""
        if self._kernel is None:
            kernel = self._build_kernel_weights()
            kernel.act_scale = self.spec.get("act_scale")
            self._kernel = kernel
        return self._kernel

    def _build_kernel_weights(self):
        from qpack import matmul as mm

        rows, cols = matrix_shape(self.shape)
        if self.method == "raw":
            return mm.FloatWeights(np.asarray(self._raw("data"), dtype=np.float32)
                                   .reshape(rows, cols))
        bits = self.bits
        if self.method == "linear":
            params = {"scales": self._raw("scales"), "zeros": self._zeros(),
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
        dot products (faster, slightly less accurate: docs/KERNELS.md); "int8-static" does
        so with the tensor's calibrated activation scale ``act_scale`` for every block
        (compress with calibration stores it). Raises ValueError for a wrong inner size, a
        non-floating tensor, an unknown act_quant, or "int8-static" without act_scale.
        """
        if not dtypes.is_floating_name(self.spec["dtype"]):
            raise ValueError(f"tensor {self.name!r} has dtype {self.spec['dtype']}; "
                             "matmul needs a floating tensor")
        return self.kernel_weights().matmul(x, act_quant=act_quant)


def memory_tensor(name: str, spec: dict, blobs: dict[str, np.ndarray]) -> CompressedTensor:
    """A CompressedTensor whose sections are the encoder's in-memory blobs {role: uint8}."""
    return CompressedTensor(name, spec, read_section=blobs.__getitem__,
                            section_nbytes=lambda role: int(blobs[role].nbytes))
