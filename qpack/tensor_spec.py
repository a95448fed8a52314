"""Validation of a tensor's header entry: every key, type, section and size limit, once.

``validate_spec`` turns an untrusted JSON entry (docs/FORMAT.md, section 4) into a clean
spec: exactly the keys a reader uses, each of the right type and range, with optional
keys filled in with their defaults and unknown keys dropped. Everything after it (the
decoders in tensor.py, the kernels) relies on that and reads keys directly. Every error is
a FormatError, raised before any section byte is read or any buffer is allocated.
"""

from __future__ import annotations

import math

import numpy as np

from qpack import dtypes
from qpack._validate import group_layout, matrix_shape
from qpack.bitpack import packed_nbytes
from qpack.errors import FormatError
from qpack.format import FORMAT_VERSION, section_alignment

METHODS = ("raw", "linear", "kmeans")
LAYOUTS = ("dense", "sparse")
# values of a kmeans tensor's informative "grid" key: how its codebook was built
GRIDS = ("log",)
CODE_CODECS = ("packed", "huffman")
CODECS = ("raw", "varint") + CODE_CODECS
# A tensor may declare at most this many elements per stored byte (plus a small allowance).
# Dense codes cost >= 1 bit per element, so only extreme sparsity approaches it; the bound
# stops a hostile header from making a reader allocate far more than the file could encode.
MAX_ELEMENTS_PER_BYTE = 1024
ELEMENT_ALLOWANCE = 4096
# An empty tensor stores no bytes, yet matmul and take_rows size outputs by its other
# dimensions: their product (the tensor's extent) is capped explicitly.
MAX_EMPTY_EXTENT = 1 << 20
MAX_DIMS = 32
MAX_JSON_INT = (1 << 63) - 1
STATS_KEYS = ("sparsity", "rel_error", "sqnr_db", "max_abs_error")

# Section roles each kind of tensor has: exactly these, no more, no fewer.
_LAYOUT_ROLES = {"dense": ("codes",), "sparse": ("gaps", "row_nsym", "codes")}
_PARAM_ROLES = {"linear": ("scales", "zeros"), "kmeans": ("codebook",)}
# Version 3: a symmetric linear tensor stores no zero-points (they are 2**(bits-1)).
_SYMMETRIC_ROLES = ("scales",)
# Parameter dtypes by format version: version 3 adds float16 codebooks (version 4 changes
# only the container: the header moves to the end).
_CODEBOOK_DTYPES = {1: ("float32",), 2: ("float32",), 3: ("float16", "float32"),
                    4: ("float16", "float32")}


def roles_of(method: str, layout: str | None, symmetric: bool = False,
             version: int = FORMAT_VERSION) -> tuple[str, ...]:
    """The section roles a tensor of this method (and layout) must have.

    ``symmetric`` matters for linear tensors of format version 3 and later, which have no
    ``zeros`` section when symmetric; in versions 1 and 2 every linear tensor has one.
    """
    if method == "raw":
        return ("data",)
    if method == "linear" and symmetric and version >= 3:
        return _LAYOUT_ROLES[layout] + _SYMMETRIC_ROLES
    return _LAYOUT_ROLES[layout] + _PARAM_ROLES[method]


def extent(shape: tuple[int, ...]) -> int:
    """Product of the non-zero dimensions: the largest output a product can derive from it."""
    return math.prod(d for d in shape if d) if shape else 1


def element_limit(stored_bytes: int) -> int:
    """Most elements a tensor whose sections hold ``stored_bytes`` bytes may declare."""
    return MAX_ELEMENTS_PER_BYTE * stored_bytes + ELEMENT_ALLOWANCE


# -- typed JSON fields -----------------------------------------------------------------

def json_int(obj: dict, key: str, where: str, low: int = 0, high: int = MAX_JSON_INT) -> int:
    """``obj[key]`` as an int in [low, high] (bools and floats are not integers)."""
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise FormatError(f"{where}: '{key}' must be an integer in {low}..{high}, got "
                          f"{_short(v)}")
    return v


def json_bool(obj: dict, key: str, where: str, default: bool) -> bool:
    """``obj[key]`` as a bool, ``default`` when absent."""
    v = obj.get(key, default)
    if not isinstance(v, bool):
        raise FormatError(f"{where}: '{key}' must be true or false, got {_short(v)}")
    return v


def json_str(obj: dict, key: str, where: str, allowed) -> str:
    """``obj[key]``: one of the strings in ``allowed``."""
    v = obj.get(key)
    if not isinstance(v, str) or v not in allowed:
        raise FormatError(f"{where}: '{key}' must be one of {', '.join(map(str, allowed))}; "
                          f"got {_short(v)}")
    return v


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def check_shape(shape, where: str) -> tuple[int, ...]:
    """Validate a JSON shape (list of at most 32 non-negative ints) and return it."""
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise FormatError(f"{where}: shape must be a list of at most {MAX_DIMS} integers, "
                          f"got {_short(shape)}")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= MAX_JSON_INT:
            raise FormatError(f"{where}: shape entries must be non-negative integers, "
                              f"got {_short(shape)}")
    return tuple(shape)


def check_dtype(obj: dict, where: str) -> str:
    """``obj["dtype"]``: a whitelisted dtype name."""
    name = obj.get("dtype")
    if not isinstance(name, str) or name not in dtypes.DTYPE_NAMES:
        raise FormatError(f"{where}: unsupported dtype {_short(name)}")
    return name


# -- sections --------------------------------------------------------------------------

def check_section(desc, where: str, data_size: int | None,
                  version: int = FORMAT_VERSION) -> dict:
    """A clean section descriptor; its bytes must fit a data region of ``data_size`` bytes.

    ``data_size`` None skips the placement fields (a section held in memory). The length is
    checked against what the codec needs; placement against the file and the alignment
    rule of the file's format ``version``.
    """
    if not isinstance(desc, dict):
        raise FormatError(f"{where}: section descriptor must be a JSON object")
    codec = json_str(desc, "codec", where, CODECS if version >= 2 else
                     tuple(c for c in CODECS if c != "varint"))
    clean: dict = {"codec": codec}
    if codec == "raw":
        clean["dtype"] = check_dtype(desc, where)
        clean["shape"] = list(check_shape(desc.get("shape"), where))
    elif codec == "varint":
        clean["count"] = json_int(desc, "count", where)
    else:
        clean["bits"] = json_int(desc, "bits", where, 1, 8)
        clean["rows"] = json_int(desc, "rows", where)
        clean["count"] = json_int(desc, "count", where)
    if data_size is None:
        return clean
    clean["offset"] = json_int(desc, "offset", where)
    clean["length"] = json_int(desc, "length", where)
    clean["crc32"] = json_int(desc, "crc32", where, 0, 0xFFFFFFFF)
    align = section_alignment(clean, version)
    if clean["offset"] % align:
        raise FormatError(f"{where}: offset {clean['offset']} is not {align}-byte aligned")
    if clean["offset"] + clean["length"] > data_size:
        raise FormatError(f"{where}: section ends at data byte "
                          f"{clean['offset'] + clean['length']} but the data region has "
                          f"{data_size} bytes (truncated?)")
    check_section_length(clean, clean["length"], where)
    return clean


def check_section_length(desc: dict, nbytes: int, where: str) -> None:
    """The stored length agrees with what the codec's fields need."""
    codec = desc["codec"]
    if codec == "raw":
        need = math.prod(desc["shape"]) * dtypes.itemsize(desc["dtype"])
        if nbytes != need:
            raise FormatError(f"{where}: {nbytes} bytes stored, shape {desc['shape']} of "
                              f"{desc['dtype']} needs {need}")
    elif codec == "varint":
        # each value takes 1 to 5 bytes
        if not desc["count"] <= nbytes <= 5 * desc["count"]:
            raise FormatError(f"{where}: {nbytes} bytes cannot hold {desc['count']} varint "
                              "values")
    elif codec == "packed":
        need = desc["rows"] * packed_nbytes(desc["count"], desc["bits"])
        if nbytes != need:
            raise FormatError(f"{where}: {nbytes} bytes stored, {desc['rows']} rows of "
                              f"{desc['count']} {desc['bits']}-bit codes need {need}")
    elif desc["rows"] * desc["count"] > 8 * nbytes:
        # every Huffman symbol costs at least one bit
        raise FormatError(f"{where}: declares {desc['rows'] * desc['count']} symbols but "
                          f"holds only {nbytes} bytes")


def _codes_section(sections: dict, role: str, where: str, bits: int, rows: int,
                   count: int) -> None:
    desc = sections[role]
    if desc["codec"] not in CODE_CODECS:
        raise FormatError(f"{where} section {role!r}: codec must be packed or huffman, got "
                          f"{desc['codec']!r}")
    if (desc["bits"], desc["rows"], desc["count"]) != (bits, rows, count):
        raise FormatError(f"{where} section {role!r}: holds {desc['rows']} x "
                          f"{desc['count']} {desc['bits']}-bit codes, the tensor needs "
                          f"{rows} x {count} {bits}-bit codes")


def _raw_section(sections: dict, role: str, where: str, dtype_names, shape) -> None:
    desc = sections[role]
    if desc["codec"] != "raw" or desc["dtype"] not in dtype_names or desc["shape"] != shape:
        raise FormatError(f"{where} section {role!r}: must be raw {'/'.join(dtype_names)} of "
                          f"shape {shape}, got {desc['codec']} {desc.get('dtype')} "
                          f"{desc.get('shape')}")


def _zeros_section(sections: dict, where: str, bits: int, prow: int, ngroups: int,
                   version: int) -> None:
    """Linear zero-points: raw uint8 (prow, ngroups), or (version 3) ``packed`` at the
    tensor's code width, one row of ngroups codes per parameter row."""
    desc = sections["zeros"]
    if version < 3 or desc["codec"] != "packed":
        _raw_section(sections, "zeros", where, ("uint8",), [prow, ngroups])
    elif (desc["bits"], desc["rows"], desc["count"]) != (bits, prow, ngroups):
        raise FormatError(f"{where} section 'zeros': holds {desc['rows']} x {desc['count']} "
                          f"{desc['bits']}-bit codes, the tensor needs {prow} x {ngroups} "
                          f"{bits}-bit zero-points")


# -- the tensor entry ------------------------------------------------------------------

def _in_order(clean: dict, original: dict) -> dict:
    """``clean`` with its keys in ``original``'s order (new keys last), so that a loaded
    file saves back byte for byte."""
    out = {k: clean[k] for k in original if k in clean}
    out.update((k, v) for k, v in clean.items() if k not in out)
    return out


def validate_spec(name: str, spec, data_size: int | None = None,
                  version: int = FORMAT_VERSION) -> dict:
    """Check a tensor's header entry and return the clean spec that readers rely on.

    ``data_size``: bytes of the file's data region, against which every section's offset
    and length are checked (None for sections held in memory, whose lengths are checked
    when they are read); ``version``: the file's format version. Raises FormatError naming
    the tensor and the offending field.
    """
    where = f"tensor {name!r}"
    if not isinstance(spec, dict):
        raise FormatError(f"{where}: entry must be a JSON object")
    method = json_str(spec, "method", where, METHODS)
    shape = check_shape(spec.get("shape"), where)
    dtype = check_dtype(spec, where)
    clean: dict = {"method": method, "shape": list(shape), "dtype": dtype}
    layout = None
    if method != "raw":
        layout = json_str(spec, "layout", where, LAYOUTS)
    raw_sections = spec.get("sections")
    if not isinstance(raw_sections, dict):
        raise FormatError(f"{where}: 'sections' must be a JSON object")
    # read before the roles: in version 3 it decides whether zero-points are stored
    symmetric = method == "linear" and json_bool(spec, "symmetric", where, False)
    want = roles_of(method, layout, symmetric, version)
    unknown = sorted(set(raw_sections) - set(want))
    missing = [r for r in want if r not in raw_sections]
    if unknown or missing:
        kind = ", ".join(([layout] if layout else []) + (["symmetric"] if symmetric else []))
        raise FormatError(f"{where}: a {method} tensor{' (' + kind + ')' if kind else ''} "
                          f"has sections {', '.join(want)}; "
                          + (f"unknown: {', '.join(map(_short, unknown))}" if unknown else "")
                          + ("; " if unknown and missing else "")
                          + (f"missing: {', '.join(missing)}" if missing else ""))
    sections = {role: _in_order(check_section(raw_sections[role],
                                              f"{where} section {role!r}", data_size,
                                              version),
                                raw_sections[role])
                for role in raw_sections}
    clean["sections"] = sections
    stats = _check_stats(spec.get("stats", {}), where)
    if stats:
        clean["stats"] = stats
    stored = sum(d.get("length", 0) for d in sections.values())
    numel = math.prod(shape)
    if numel == 0 and extent(shape) > MAX_EMPTY_EXTENT:
        raise FormatError(f"{where}: empty tensor of shape {list(shape)} exceeds the "
                          f"{MAX_EMPTY_EXTENT}-element extent cap")
    if method == "raw":
        _raw_section(sections, "data", where, (dtype,), list(shape))
        return _in_order(clean, spec)
    if data_size is not None and max(numel, extent(shape)) > element_limit(stored):
        raise FormatError(f"{where}: declares {numel} elements but stores only {stored} bytes")
    if numel == 0:
        raise FormatError(f"{where}: a {method} tensor must have at least one element")
    if not dtypes.is_floating_name(dtype):
        raise FormatError(f"{where}: a {method} tensor must have a floating dtype, got {dtype}")
    bits = json_int(spec, "bits", where, 1, 8)
    clean.update(bits=bits, layout=layout)
    if "act_scale" in spec:
        clean["act_scale"] = _act_scale(spec["act_scale"], where)
    rows, cols = matrix_shape(shape)
    if layout == "dense":
        _codes_section(sections, "codes", where, bits, rows, cols)
    else:
        gap_bits = json_int(spec, "gap_bits", where, 1, 8)
        nnz = json_int(spec, "nnz", where, 0, numel)
        clean.update(gap_bits=gap_bits, nnz=nnz)
        gaps = sections["gaps"]
        _codes_section(sections, "gaps", where, gap_bits, 1, gaps.get("count", 0))
        _codes_section(sections, "codes", where, bits, 1, nnz)
        nsym = sections["row_nsym"]
        if not (nsym["codec"] == "varint" and nsym["count"] == rows):
            _raw_section(sections, "row_nsym", where, ("uint32",), [rows])
    if method == "linear":
        group_size = spec.get("group_size")
        if group_size is not None and (isinstance(group_size, bool)
                                       or not isinstance(group_size, int)
                                       or not (group_size == -1 or 0 < group_size
                                               <= MAX_JSON_INT)):
            raise FormatError(f"{where}: 'group_size' must be null, -1 or a positive integer, "
                              f"got {_short(group_size)}")
        prow, ngroups, _ = group_layout(group_size, rows, cols)
        _raw_section(sections, "scales", where, ("float16", "float32"), [prow, ngroups])
        if symmetric and version >= 3 and bits == 1:
            # 2**(bits-1) = 1 leaves no symmetric range: qpack never writes it
            raise FormatError(f"{where}: a symmetric linear tensor needs bits >= 2")
        if "zeros" in sections:
            _zeros_section(sections, where, bits, prow, ngroups, version)
        clean.update(group_size=group_size, symmetric=symmetric)
    else:
        k = 1 << bits
        per_channel = json_bool(spec, "per_channel", where, False)
        _raw_section(sections, "codebook", where, _CODEBOOK_DTYPES[version],
                     [rows, k] if per_channel else [k])
        zero_code = spec.get("zero_code")
        if zero_code is not None:
            zero_code = json_int(spec, "zero_code", where, 0, k - 1)
        if layout == "sparse" and zero_code is None:
            raise FormatError(f"{where}: a sparse kmeans tensor needs a zero_code")
        clean.update(per_channel=per_channel, zero_code=zero_code)
        if "grid" in spec:
            clean["grid"] = json_str(spec, "grid", where, GRIDS)
    return _in_order(clean, spec)


def _act_scale(value, where: str) -> float:
    """A static int8 activation scale: a finite number > 0 that float32 holds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 < value <= float(np.finfo(np.float32).max) \
            or np.float32(value) == 0:
        raise FormatError(f"{where}: 'act_scale' must be a finite number > 0 (a float32), "
                          f"got {_short(value)}")
    return float(value)


def _check_stats(stats, where: str) -> dict:
    """The informative ``stats`` object: flat, numbers or null (unknown keys dropped)."""
    if not isinstance(stats, dict):
        raise FormatError(f"{where}: 'stats' must be a JSON object")
    clean = {}
    for key in STATS_KEYS:
        if key not in stats:
            continue
        v = stats[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v)):
            raise FormatError(f"{where}: stats '{key}' must be a finite number or null, "
                              f"got {_short(v)}")
        clean[key] = v
    if clean.get("sparsity") is not None and not 0.0 <= clean["sparsity"] <= 1.0:
        raise FormatError(f"{where}: stats 'sparsity' must lie in [0, 1]")
    return clean


def check_param_values(arr: np.ndarray, where: str) -> np.ndarray:
    """A decoded scale or codebook array must be finite (NaN would decode silently)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise FormatError(f"{where}: holds NaN or Inf")
    return arr
