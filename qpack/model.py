"""``compress``, ``load``, ``save`` and the CompressedModel they produce and consume."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np

from qpack import format
from qpack._version import __version__
from qpack.encode import encode_prequantized, encode_raw_tensor, encode_tensor
from qpack.errors import FormatError
from qpack.handover import is_prequantized, numel
from qpack.inputs import read_input
from qpack.plan import make_plan, patterns
from qpack.progress import Progress
from qpack.report import Report
from qpack.tensor import CompressedTensor
from qpack.tensor_spec import validate_spec
from qpack.threads import get_num_threads

DEFAULT_MIN_NUMEL = 1024


class CompressedModel(Mapping):
    """A read-only mapping of tensor names to ``CompressedTensor``s, plus whole-model figures.

    ``nbytes`` is the exact size of the ``.qpk`` file this model saves to (every section,
    the header, the preamble and alignment padding); ``original_nbytes`` the bytes of the
    arrays given to compress; ``ratio`` = original_nbytes / nbytes. ``metadata`` holds
    qpack's and the user's strings; ``source_metadata`` the input file's own metadata
    (a safetensors ``__metadata__``), kept so that decompressing restores it.
    """

    def __init__(self, tensors: dict[str, CompressedTensor], metadata: dict[str, str],
                 source: format.MappedFile | None = None,
                 source_metadata: Mapping[str, str] | None = None):
        self._tensors = tensors
        self.metadata = dict(metadata)
        # the input file's own metadata (safetensors __metadata__), written back by
        # ``qpack decompress``
        self.source_metadata = dict(source_metadata or {})
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
        """One row per tensor: name, shape, method, bits, kept fraction, the bytes of its
        code stream, sparse index and parameters, stored bytes, ratio, relative error and
        SQNR (dB) measured at compression time (see ``Report``). Prints as a table."""
        rows = []
        for name, t in self._tensors.items():
            stats = t.stats
            raw = t.method == "raw"
            part = {role: t._section_nbytes(role) for role in t.spec["sections"]}
            rows.append({
                "name": name, "shape": t.shape, "method": t.method + (
                    "" if raw or t.layout == "dense" else "+sparse"),
                "bits": t.bits, "sparsity": t.sparsity, "kept": 1.0 - t.sparsity,
                "codes_bytes": part.get("codes", part.get("data", 0)),
                "index_bytes": part.get("gaps", 0) + part.get("row_nsym", 0),
                "params_bytes": sum(part.get(r, 0) for r in ("codebook", "scales", "zeros")),
                "stored_bytes": t.nbytes, "original_bytes": t.original_nbytes,
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
        if self.source_metadata:
            header["source_metadata"] = self.source_metadata
        return header, blobs, data_size

    def save(self, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> int:
        """Write the model to a ``.qpk`` file atomically; return the file size in bytes.

        ``metadata``: extra string key/values stored in the header (merged over the
        model's own). Raises ValueError for non-string metadata or a missing directory.
        """
        meta = dict(self.metadata)
        meta.update(_check_metadata(metadata, "metadata"))
        path = format.check_output_path(path)
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
    if header.get("format") != "qpk" or not isinstance(tensors_header, dict):
        raise FormatError(f"{where}: header lacks the 'format' tag or the 'tensors' object")
    metadata = _string_map(header.get("metadata", {}), f"{where}: metadata")
    source_metadata = _string_map(header.get("source_metadata", {}),
                                  f"{where}: source_metadata")
    tensors = {}
    spans = []
    for name, entry in tensors_header.items():
        spec = validate_spec(name, entry, mapped.data_size, mapped.version)
        for role, desc in spec["sections"].items():
            spans.append((desc["offset"], desc["length"], f"tensor {name!r} section {role!r}"))
        tensors[name] = _mapped_tensor(name, spec, mapped)
    format.check_disjoint(spans, where)
    if verify:
        for t in tensors.values():
            t.verify()
    return CompressedModel(tensors, metadata, source=mapped, source_metadata=source_metadata)


def _string_map(value, where: str) -> dict[str, str]:
    """A header object of string values (metadata); FormatError otherwise."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FormatError(f"{where} must map strings to strings")
    return value


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


def _encode_one(value, settings, mask, reference, calibration):
    """Encode one tensor by what it is: an array to compress or a pre-quantized object."""
    if is_prequantized(value):
        return encode_prequantized(value, settings.entropy, mask, reference)
    return encode_tensor(value, settings, mask, calibration)


def _encode_all(arrays: dict, plan, progress: bool) -> dict[str, tuple[dict, dict]]:
    """Encode every tensor, several at once on a thread pool (the heavy steps release the
    GIL). Memory stays bounded: tensors run concurrently only while the elements in flight
    total at most the largest quantized tensor, so peak memory is about that of encoding
    the largest tensor alone."""
    settings = plan.settings
    quantized = [numel(arrays[n]) for n, s in settings.items() if s is not None]
    budget = max(quantized, default=0)
    bar = Progress(len(arrays), "compress", "tensors") if progress else None
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
            for name, value in arrays.items():
                if settings[name] is None:
                    results[name] = encode_raw_tensor(value)
                    if bar is not None:
                        bar.update()
                    continue
                size = numel(value)
                while pending and in_flight + size > budget:
                    collect_one()
                fut = pool.submit(_encode_one, value, settings[name], plan.masks.get(name),
                                  plan.references.get(name), plan.calibration.get(name))
                pending[fut] = (name, size)
                in_flight += size
            while pending:
                collect_one()
    finally:
        if bar is not None:
            bar.close()
    return results


def compress(model_dict, bits: int = 4, prune: float = 0.0, method: str = "kmeans", *,
             group_size: int | None = None, symmetric: bool = False, clip: str = "minmax",
             entropy: str | None = "huffman", include=None, exclude=None,
             overrides: Mapping[str, Mapping] | None = None,
             min_numel: int = DEFAULT_MIN_NUMEL, prune_scope: str = "tensor",
             per_channel: bool = False, init: str = "linear",
             metadata: Mapping[str, str] | None = None,
             masks: Mapping | None = None, float_weights: Mapping | None = None,
             calibration: Mapping | None = None, calibration_damping: float | None = None,
             progress: bool = False) -> CompressedModel:
    """Compress a model's weights: prune, quantize (K-means, linear or log), pack, entropy-code.

    Parameters
    ----------
    model_dict : mapping name -> array-like (numpy, PyTorch tensors, ...), an object with
        ``state_dict()`` (a PyTorch ``nn.Module``), or a path to a ``.npz`` /
        ``.safetensors`` file. A value may also be a ``KMeansQuantized`` or
        ``LinearQuantized`` (from quantize_kmeans / quantize_linear): its codes, codebook
        or scales and its pruned positions (codes equal to ``zero_code``) are stored
        exactly, so the loaded tensor decodes to the object's own ``dequantize()``.
    bits : 1..8, bits per code. prune : fraction in [0, 1) of weights removed by magnitude.
    method : "kmeans" (Deep Compression weight sharing), "linear" (scale + zero-point) or
        "log" (0 and ±m·2^-k, m fitted per tensor or row: qpack.quantize_log; stored as a
        kmeans tensor marked ``grid: "log"``, reported as method "log").
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
    per_channel : kmeans and log: one codebook (log: one scale) per output row.
    init : kmeans only: centroid initialization.
    metadata : extra string key/values for the file header.
    masks : {name: bool keep-mask of the tensor's shape}: exactly these weights are kept
        (no magnitude pruning for that tensor, whose prune must be 0). For a pre-quantized
        tensor the removed positions must already decode to 0.0.
    float_weights : {name: float array} the weights a pre-quantized tensor approximates,
        for its error stats in ``report()`` (without them only its sparsity is known).
    calibration : {name: inputs} quantizes those tensors with error compensation (GPTQ,
        qpack/gptq.py) for their outputs on the given inputs: each value is a float array
        (n_samples, in_features) of the layer's inputs (torch tensors work; for a conv
        weight, the unfolded patches: qpack.calibration) or a ``HessianStats`` of them;
        in_features is the weight's matrix-view column count, prod(shape[1:]). Works with
        method "linear" (every group_size, symmetric, clip), "kmeans" and "log" (one
        codebook per tensor, not per_channel), with pruning and masks. The codes are
        ordinary: the file and matmul are as without calibration. The damping used is
        recorded per tensor in the metadata's compress_args ("calibrated").
    calibration_damping : relative damping (a fraction of mean(diag(X^T X / n)), in
        [1e-6, 1e6]) for every calibrated tensor, or None: chosen per tensor on held-back
        rows of raw inputs, in_features / n_samples clipped to [0.1, 1] for HessianStats
        (qpack.gptq.calibrated, qpack.calibration.default_damping).
    progress : count tensors on stderr.

    Returns a CompressedModel. Raises ValueError, before any encoding, naming any bad
    argument, NaN/Inf weights, an empty model, a pattern that matches no tensor or only
    tensors stored exactly, an option that no tensor uses (e.g. group_size with kmeans),
    a mask of the wrong shape or given together with prune, calibration naming no tensor
    or one stored exactly, of the wrong width, non-finite or with per_channel kmeans/log.
    """
    meta = {"qpack_version": __version__}
    meta.update(_check_metadata(metadata, "metadata"))
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got {progress!r}")
    arrays, source_metadata = read_input(model_dict)
    base = {"method": method, "bits": bits, "prune": prune, "group_size": group_size,
            "symmetric": symmetric, "clip": clip, "entropy": entropy,
            "per_channel": per_channel, "init": init}
    plan = make_plan(arrays, base, include=include, exclude=exclude, overrides=overrides,
                     min_numel=min_numel, prune_scope=prune_scope, masks=masks,
                     float_weights=float_weights, calibration=calibration,
                     calibration_damping=calibration_damping)

    if prune_scope == "global":
        from qpack.prune import prune_global

        pool = {n: arrays[n] for n, s in plan.settings.items()
                if s is not None and s.prune == plan.base.prune and n not in plan.masks
                and not is_prequantized(arrays[n])}
        if pool:
            plan.masks.update(prune_global(pool, plan.base.prune))

    encoded = _encode_all(arrays, plan, progress)
    tensors = {name: _memory_tensor(name, *encoded[name]) for name in arrays}
    meta["compress_args"] = json.dumps(
        {**plan.base.as_json(), "min_numel": min_numel, "prune_scope": prune_scope,
         "include": patterns(include, "include"), "exclude": patterns(exclude, "exclude"),
         "overrides": plan.overrides,
         "handed_over": sorted(set(plan.masks) | {n for n, v in arrays.items()
                                                  if is_prequantized(v)}),
         **({"calibrated": {n: c.chosen for n, c in plan.calibration.items()}}
            if plan.calibration else {})},
        default=str)
    return CompressedModel(tensors, meta, source_metadata=source_metadata)


def _check_metadata(metadata, what: str) -> dict[str, str]:
    """User metadata: a mapping of strings to strings (ValueError naming ``what``)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{what} must map strings to strings, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"{what} must map strings to strings, got {key!r}: {value!r}")
        for text in (key, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{what}: {text!r} is not valid Unicode (lone "
                                 "surrogate)") from None
    return dict(metadata)
