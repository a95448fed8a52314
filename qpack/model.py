"""``compress``, ``load``, ``save`` and the CompressedModel they produce and consume."""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np

from qpack import dtypes, format
from qpack._version import __version__
from qpack.bitpack import check_bits
from qpack.encode import TensorSettings, encode_raw_tensor, encode_tensor
from qpack.errors import FormatError
from qpack.inputs import as_array_dict
from qpack.report import Report
from qpack.tensor import CompressedTensor, validate_spec
from qpack.threads import get_num_threads

DEFAULT_MIN_NUMEL = 1024
_METHODS = ("kmeans", "linear")
_CLIPS = ("minmax", "percentile", "mse")
_INITS = ("linear", "density", "random")
# the keyword arguments an override may set; "method" may also be "raw" (store exactly)
_OVERRIDABLE = ("method", "bits", "prune", "group_size", "symmetric", "clip", "entropy",
                "per_channel", "init")


class CompressedModel(Mapping):
    """A read-only mapping of tensor names to ``CompressedTensor``s, plus whole-model figures.

    ``nbytes`` is the exact size of the ``.qpk`` file this model saves to (every section,
    the header, the preamble and alignment padding); ``original_nbytes`` the bytes of the
    arrays given to compress; ``ratio`` = original_nbytes / nbytes.
    """

    def __init__(self, tensors: dict[str, CompressedTensor], metadata: dict[str, str],
                 source: format.MappedFile | None = None):
        self._tensors = tensors
        self.metadata = dict(metadata)
        self._source = source
        self._nbytes: int | None = source.size if source is not None else None

    # -- mapping -----------------------------------------------------------------
    def __getitem__(self, name: str) -> CompressedTensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return (f"CompressedModel({len(self)} tensors, {self.original_nbytes:,} -> "
                f"{self.nbytes:,} bytes, ratio {self.ratio:.2f}x)")

    # -- figures -----------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        if self._nbytes is None:
            header, blobs, data_size = self._layout(self.metadata)
            self._nbytes = format.file_size(header, data_size)
        return self._nbytes

    @property
    def original_nbytes(self) -> int:
        return sum(t.original_nbytes for t in self._tensors.values())

    @property
    def ratio(self) -> float:
        return self.original_nbytes / self.nbytes if self.nbytes else math.inf

    def report(self) -> Report:
        """One row per tensor: name, shape, method, bits, sparsity, stored bytes, ratio,
        relative error and SQNR (dB), measured at compression time. Prints as a table."""
        rows = []
        for name, t in self._tensors.items():
            stats = t.stats
            raw = t.method == "raw"
            rows.append({
                "name": name, "shape": t.shape, "method": t.method + (
                    "" if raw or t.layout == "dense" else "+sparse"),
                "bits": t.bits, "sparsity": t.sparsity, "stored_bytes": t.nbytes,
                "original_bytes": t.original_nbytes,
                "ratio": t.original_nbytes / t.nbytes if t.nbytes else math.inf,
                "rel_error": 0.0 if raw else stats.get("rel_error"),
                "sqnr_db": math.inf if raw or stats.get("rel_error") == 0.0
                else stats.get("sqnr_db"),
            })
        return Report(rows, self.nbytes, self.original_nbytes)

    # -- conversion --------------------------------------------------------------
    def decompress(self) -> dict[str, np.ndarray]:
        """All tensors as numpy arrays in their original shapes and dtypes."""
        return {name: t.dequantize() for name, t in self._tensors.items()}

    def _layout(self, metadata: dict[str, str]):
        tensors_header = {}
        blobs = []
        for name, t in self._tensors.items():
            spec = copy.deepcopy(t.spec)
            for role, desc in spec["sections"].items():
                for key in ("offset", "length", "crc32"):
                    desc.pop(key, None)
                blobs.append((desc, t._read_section(role)))
            tensors_header[name] = spec
        data_size = format.layout_sections(blobs)
        header = {"format": "qpk", "metadata": metadata, "tensors": tensors_header}
        return header, blobs, data_size

    def save(self, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> int:
        """Write the model to a ``.qpk`` file atomically; return the file size in bytes.

        ``metadata``: extra string key/values stored in the header (merged over the
        model's own). Raises ValueError for non-string metadata or a missing directory.
        """
        meta = dict(self.metadata)
        for key, value in (metadata or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"metadata must map strings to strings, got {key!r}: {value!r}")
            meta[key] = value
        header, blobs, _ = self._layout(meta)
        return format.write_file(path, header, blobs)


def save(model: CompressedModel, path: str | os.PathLike,
         metadata: Mapping[str, str] | None = None) -> int:
    """Same as ``model.save(path, metadata)``."""
    if not isinstance(model, CompressedModel):
        raise ValueError(f"save expects a CompressedModel, got {type(model).__name__}")
    return model.save(path, metadata)


def load(path: str | os.PathLike, verify: bool = False) -> CompressedModel:
    """Open a ``.qpk`` file, memory-mapped and lazy: O(header), nothing decoded.

    Every offset, length, shape and parameter in the header is validated now; each
    section's CRC32 is checked when the section is first read, or for all sections at once
    with ``verify=True``. Raises FormatError for a missing, damaged or unknown file.
    """
    mapped = format.MappedFile(path)
    header = mapped.header
    where = mapped.path
    tensors_header = header.get("tensors")
    metadata = header.get("metadata", {})
    if header.get("format") != "qpk" or not isinstance(tensors_header, dict):
        raise FormatError(f"{where}: header lacks the 'format' tag or the 'tensors' object")
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FormatError(f"{where}: metadata must map strings to strings")
    tensors = {}
    for name, spec in tensors_header.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("sections"), dict):
            raise FormatError(f"{where}: tensor {name!r} has no sections object")
        for role, desc in spec["sections"].items():
            if not isinstance(desc, dict):
                raise FormatError(f"{where}: tensor {name!r} section {role!r} is not an object")
            mapped.check_section(desc, f"tensor {name!r} section {role!r}")
        validate_spec(name, spec, lambda d: d["length"])
        tensors[name] = _mapped_tensor(name, spec, mapped)
    if verify:
        for t in tensors.values():
            for role in t.spec["sections"]:
                t._read_section(role)
    return CompressedModel(tensors, metadata, source=mapped)


def _mapped_tensor(name: str, spec: dict, mapped: format.MappedFile) -> CompressedTensor:
    sections = spec["sections"]
    return CompressedTensor(
        name, spec,
        read_section=lambda role: mapped.section(sections[role],
                                                 f"tensor {name!r} section {role!r}"),
        section_nbytes=lambda role: sections[role]["length"])


def _memory_tensor(name: str, spec: dict, blobs: dict[str, np.ndarray]) -> CompressedTensor:
    return CompressedTensor(name, spec, read_section=blobs.__getitem__,
                            section_nbytes=lambda role: int(blobs[role].nbytes))


def _encode_all(arrays: dict[str, np.ndarray], plan: dict, masks: dict,
                progress: bool) -> dict[str, tuple[dict, dict]]:
    """Encode every tensor, several at once on a thread pool (the heavy steps release the
    GIL). Memory stays bounded: tensors run concurrently only while the elements in flight
    total at most the largest quantized tensor, so peak memory is about that of encoding
    the largest tensor alone."""
    quantized = [arrays[n].size for n, s in plan.items() if s is not None]
    budget = max(quantized, default=0)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(arrays), desc="compress", unit="tensor", file=sys.stderr)
    results: dict[str, tuple[dict, dict]] = {}
    pending: dict = {}
    in_flight = 0

    def collect_one() -> None:
        """Wait for at least one pending tensor and store what finished."""
        nonlocal in_flight
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            name, size = pending.pop(fut)
            results[name] = fut.result()
            in_flight -= size
            if bar is not None:
                bar.update()

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(get_num_threads(), 4))) as pool:
            for name, arr in arrays.items():
                if plan[name] is None:
                    results[name] = encode_raw_tensor(arr)
                    if bar is not None:
                        bar.update()
                    continue
                while pending and in_flight + arr.size > budget:
                    collect_one()
                pending[pool.submit(encode_tensor, arr, plan[name], masks.get(name))] = (
                    name, arr.size)
                in_flight += arr.size
            while pending:
                collect_one()
    finally:
        if bar is not None:
            bar.close()
    return results


def _patterns(value, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not all(isinstance(p, str) for p in value):
        raise ValueError(f"{what} must be a glob pattern or a list of them, got {value!r}")
    return list(value)


def _check_settings(s: dict, where: str) -> TensorSettings:
    """Validate one set of compression settings; ValueError naming the bad argument."""
    method = s["method"]
    if method not in _METHODS + ("raw",):
        raise ValueError(f"{where}method must be one of {_METHODS}, got {method!r}")
    bits = check_bits(s["bits"], f"{where}bits")
    prune = s["prune"]
    if isinstance(prune, bool) or not isinstance(prune, (int, float)) or not 0 <= prune < 1:
        raise ValueError(f"{where}prune must be a fraction in [0, 1), got {prune!r}")
    gs = s["group_size"]
    if gs is not None and (isinstance(gs, bool) or not isinstance(gs, (int, np.integer))
                           or not (gs == -1 or gs > 0)):
        raise ValueError(f"{where}group_size must be None, -1 or a positive int, got {gs!r}")
    if s["clip"] not in _CLIPS:
        raise ValueError(f"{where}clip must be one of {_CLIPS}, got {s['clip']!r}")
    if s["entropy"] not in ("huffman", None, True, False):
        raise ValueError(f"{where}entropy must be 'huffman' or None, got {s['entropy']!r}")
    if s["init"] not in _INITS:
        raise ValueError(f"{where}init must be one of {_INITS}, got {s['init']!r}")
    for flag in ("symmetric", "per_channel"):
        if not isinstance(s[flag], bool):
            raise ValueError(f"{where}{flag} must be True or False, got {s[flag]!r}")
    return TensorSettings(method=method, bits=bits, prune=float(prune),
                          group_size=None if gs is None else int(gs),
                          symmetric=s["symmetric"], clip=s["clip"],
                          entropy=s["entropy"] in ("huffman", True),
                          per_channel=s["per_channel"], init=s["init"])


def compress(model_dict, bits: int = 4, prune: float = 0.0, method: str = "kmeans", *,
             group_size: int | None = None, symmetric: bool = False, clip: str = "minmax",
             entropy: str | None = "huffman", include=None, exclude=None,
             overrides: Mapping[str, Mapping] | None = None,
             min_numel: int = DEFAULT_MIN_NUMEL, prune_scope: str = "tensor",
             per_channel: bool = False, init: str = "linear",
             metadata: Mapping[str, str] | None = None,
             progress: bool = False) -> CompressedModel:
    """Compress a model's weights: prune, quantize (K-means or linear), pack, entropy-code.

    Parameters
    ----------
    model_dict : mapping name -> array-like (numpy, PyTorch tensors, ...) or a path to a
        ``.npz`` / ``.safetensors`` file.
    bits : 1..8, bits per code. prune : fraction in [0, 1) of weights removed by magnitude.
    method : "kmeans" (Deep Compression weight sharing) or "linear" (scale + zero-point).
    group_size : linear only; None per tensor, -1 per output channel, G per G inputs.
    symmetric, clip : linear only (clip: "minmax", "percentile" or "mse").
    entropy : "huffman" (code and gap streams Huffman-coded when that is smaller) or None.
    include / exclude : glob pattern(s) on tensor names choosing what is quantized.
    overrides : {glob: {keyword: value}} per-layer settings; later patterns win. Keys:
        method (also "raw": store exactly), bits, prune, group_size, symmetric, clip,
        entropy, per_channel, init.
    min_numel : floating tensors with >= 2 dims and at least this many elements are
        quantized; every other tensor is stored exactly.
    prune_scope : "tensor" (each tensor loses ``prune`` of its weights) or "global" (one
        magnitude threshold across the quantized tensors that use the top-level prune).
    per_channel, init : kmeans only: one codebook per output row; centroid initialization.
    metadata : extra string key/values for the file header. progress : show a tqdm bar.

    Returns a CompressedModel. Raises ValueError naming any bad argument, NaN/Inf weights,
    an empty model, or a pattern that matches no tensor.
    """
    arrays = as_array_dict(model_dict)
    base = {"method": method, "bits": bits, "prune": prune, "group_size": group_size,
            "symmetric": symmetric, "clip": clip, "entropy": entropy,
            "per_channel": per_channel, "init": init}
    base_settings = _check_settings(base, "")
    if base_settings.method == "raw":
        raise ValueError(f"method must be one of {_METHODS}, got 'raw'")
    if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 0:
        raise ValueError(f"min_numel must be a non-negative integer, got {min_numel!r}")
    if prune_scope not in ("tensor", "global"):
        raise ValueError(f"prune_scope must be 'tensor' or 'global', got {prune_scope!r}")
    names = list(arrays)
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    for pat in inc + exc:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"pattern {pat!r} matches no tensor name")
    overrides = dict(overrides or {})
    for pat, kw in overrides.items():
        if not isinstance(pat, str) or not isinstance(kw, Mapping):
            raise ValueError(f"overrides must map glob patterns to dicts, got {pat!r}: {kw!r}")
        unknown = set(kw) - set(_OVERRIDABLE)
        if unknown:
            raise ValueError(f"override {pat!r}: unknown keyword(s) {sorted(unknown)} "
                             f"(allowed: {', '.join(_OVERRIDABLE)})")
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"override pattern {pat!r} matches no tensor name")

    plan: dict[str, TensorSettings | None] = {}
    for name, arr in arrays.items():
        eligible = (dtypes.is_floating_name(dtypes.dtype_name(arr.dtype)) and arr.ndim >= 2
                    and arr.size >= max(min_numel, 1)
                    and (not inc or any(fnmatch.fnmatchcase(name, p) for p in inc))
                    and not any(fnmatch.fnmatchcase(name, p) for p in exc))
        settings = dict(base)
        for pat, kw in overrides.items():
            if fnmatch.fnmatchcase(name, pat):
                settings.update(kw)
        tensor_settings = _check_settings(settings, f"override for {name!r}: ")
        plan[name] = tensor_settings if eligible and tensor_settings.method != "raw" else None
        if plan[name] is not None and not np.isfinite(arr).all():
            raise ValueError(f"tensor {name!r} contains NaN or Inf")

    masks: dict[str, np.ndarray] = {}
    if prune_scope == "global" and base_settings.prune > 0:
        from qpack.prune import prune_global

        pool = {n: arrays[n] for n, s in plan.items()
                if s is not None and s.prune == base_settings.prune}
        if pool:
            masks = prune_global(pool, base_settings.prune)

    encoded = _encode_all(arrays, plan, masks, progress)
    tensors = {name: _memory_tensor(name, *encoded[name]) for name in arrays}

    meta = {"qpack_version": __version__,
            "compress_args": json.dumps({**base_settings.as_json(), "min_numel": min_numel,
                                         "prune_scope": prune_scope,
                                         "include": inc, "exclude": exc,
                                         "overrides": {k: dict(v) for k, v in overrides.items()}},
                                        default=str)}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map strings to strings, got {key!r}: {value!r}")
        meta[key] = value
    return CompressedModel(tensors, meta)
