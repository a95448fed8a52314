"""``compress``, ``load``, ``save`` and the CompressedModel they produce and consume."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from qpack import format
from qpack._version import __version__
from qpack.allocate import Allocation, allocate_bits, budget_bytes, candidate_bits, check_targets
from qpack.defaults import DEFAULT_ACT_RANGE, DEFAULT_CLIP, DEFAULT_GROUP_SIZE
from qpack.encode_jobs import EncodeJob, plan_jobs, run_jobs
from qpack.errors import FormatError
from qpack.executors import check_executor
from qpack.handover import is_prequantized
from qpack.inputs import read_input
from qpack.plan import make_plan, patterns
from qpack.progress import Progress
from qpack.report import Report
from qpack.shards import (
    ShardedWriter,
    check_output_folder,
    index_path,
    parse_size,
    read_shard_index,
    run_fingerprint,
)
from qpack.stored_tensor import StoredTensor, read_value
from qpack.tensor import CompressedTensor, memory_tensor
from qpack.tensor_spec import validate_spec

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
        # the bit allocation compress made under a size budget (qpack.allocate.Allocation:
        # every candidate's bytes and score), None otherwise and after load
        self.allocation = None
        self._shards: list[CompressedModel] = []  # set by load for a sharded model

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

    @property
    def shards(self) -> list[CompressedModel]:
        """The shards of a sharded model loaded from its folder or index, each a
        CompressedModel of its own file, in order; [self] for any other model."""
        return list(self._shards) if self._shards else [self]

    @property
    def files(self) -> list[str]:
        """The .qpk files this model was loaded from (several for a sharded model; [] for
        one made by compress in memory)."""
        if self._shards:
            return [path for part in self._shards for path in part.files]
        return [] if self._source is None else [self._source.path]

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
        SQNR (dB) measured at compression time (see ``Report``), and for a tensor whose
        bits a size budget chose, its allocation ``score``. Prints as a table."""
        scores = self._allocation_scores()
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
                "score": scores.get(name),
            })
        return Report(rows, self.nbytes, self.original_nbytes)

    def _allocation_scores(self) -> dict[str, float]:
        """{name: allocation score} from compress_args, {} when no budget chose bits (or
        the metadata is not qpack's own: it is informative, so a foreign shape is
        ignored)."""
        try:
            tensors = json.loads(self.metadata.get("compress_args", "{}"))["allocation"][
                "tensors"]
            return {n: float(v[1]) for n, v in tensors.items()}
        except (ValueError, KeyError, TypeError, IndexError):
            return {}

    # -- conversion --------------------------------------------------------------
    def decompress(self) -> dict[str, np.ndarray]:
        """All tensors as numpy arrays in their original shapes and dtypes."""
        return {name: t.dequantize() for name, t in self._tensors.items()}

    def _layout(self, metadata: dict[str, str]):
        tensors_header = {}
        blobs = []
        for name, t in self._tensors.items():
            spec, sections = _sections_in_order(t)
            blobs.extend(sections)
            tensors_header[name] = spec
        data_size = format.layout_sections(blobs)
        return file_header(metadata, tensors_header, self.source_metadata), blobs, data_size

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


def _sections_in_order(t: CompressedTensor) -> tuple[dict, list[tuple[dict, np.ndarray]]]:
    """(entry as written, [(descriptor, blob)] in file order) of one tensor."""
    spec, sections = t.entry_to_write()
    return spec, [(spec["sections"][role], sections[role]) for role in spec["sections"]]


def file_header(metadata: Mapping[str, str], tensors_header: dict,
                source_metadata: Mapping[str, str] | None) -> dict:
    """The .qpk header object (docs/FORMAT.md, 4.2): every writer builds it here, so a
    streamed file and a saved one are the same bytes."""
    header = {"format": "qpk", "metadata": dict(metadata), "tensors": tensors_header}
    if source_metadata:
        header["source_metadata"] = dict(source_metadata)
    return header


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

    ``path`` may also be a sharded model (qpack/shards.py): its folder or its
    ``model.qpk.index.json``. Every shard is opened (headers only) and the result is
    one CompressedModel over all of them; the index must list exactly the tensors each
    shard holds (FormatError otherwise).
    """
    index = index_path(os.fspath(path))
    if index is not None:
        return _load_shards(index, verify)
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


def _load_shards(index: str, verify: bool) -> CompressedModel:
    """One CompressedModel over the shards an index lists (see ``load``)."""
    shard_list, _ = read_shard_index(index)
    tensors: dict[str, CompressedTensor] = {}
    parts = []
    for shard_path, names in shard_list:
        part = load(shard_path, verify)
        if set(part) != set(names):
            extra = sorted(set(part) - set(names)) or sorted(set(names) - set(part))
            how = "holds" if set(part) - set(names) else "lacks"
            raise FormatError(f"{index}: shard {os.path.basename(shard_path)} {how} "
                              f"tensor {extra[0]!r}, unlike the index's weight_map")
        tensors.update(part.items())
        parts.append(part)
    first = parts[0]
    model = CompressedModel(tensors, first.metadata, source_metadata=first.source_metadata)
    model._nbytes = sum(p.nbytes for p in parts)
    model._shards = parts  # keeps every mapping open with the model
    return model


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


def _progress(arrays: Mapping, progress: bool) -> Progress | None:
    """The tensors-and-bytes progress line of a compression, or None."""
    if not progress:
        return None
    return Progress(len(arrays), "compress", "tensors",
                    total_bytes=sum(_input_nbytes(v) for v in arrays.values()))


def _input_nbytes(value) -> int:
    """Bytes of one input tensor as given (a pre-quantized one: its float32 size)."""
    if is_prequantized(value):
        return 4 * int(np.prod(value.shape, dtype=np.int64))
    return int(value.nbytes)


def _encode_all(arrays: dict, plan, progress: bool, executor
                ) -> dict[str, tuple[dict, dict]]:
    """Encode every tensor of the plan (qpack/encode_jobs.py: several at once, memory
    bounded by about the largest tensor); {name: (header entry, blobs)}."""
    bar = _progress(arrays, progress)
    results: dict[str, tuple[dict, dict]] = {}

    def done(job: EncodeJob, result) -> None:
        results[job.key] = result
        if bar is not None:
            bar.update(1, _input_nbytes(job.value))

    try:
        run_jobs(plan_jobs(arrays, plan), done, executor)
    finally:
        if bar is not None:
            bar.close()
    return results


def _encode_to_file(path: str, arrays: dict, plan, metadata: Callable[[], dict[str, str]],
                    source_metadata: Mapping[str, str], progress: bool,
                    executor) -> CompressedModel:
    """Encode every tensor of the plan straight into a .qpk at ``path``: each tensor's
    sections are written as soon as it (and those before it) are encoded, the header
    last (format version 4), so only the tensors in flight are in memory. The file is
    atomic: on any error nothing is left at ``path``. Returns the file, loaded."""
    bar = _progress(arrays, progress)
    tensors_header: dict[str, dict] = {}
    try:
        with format.stream_file(path) as writer:
            def done(job: EncodeJob, result) -> None:
                t = memory_tensor(job.key, *result)
                _warn_costly_codebooks({job.key: t})
                spec, sections = _sections_in_order(t)
                for desc, blob in sections:
                    writer.add(desc, blob)
                tensors_header[job.key] = spec
                if bar is not None:
                    bar.update(1, _input_nbytes(job.value))

            run_jobs(plan_jobs(arrays, plan), done, executor)
            writer.finish(file_header(metadata(), tensors_header, source_metadata))
    finally:
        if bar is not None:
            bar.close()
    return load(path)


def _encode_to_shards(writer: ShardedWriter, resume: bool, arrays: dict, plan,
                      progress: bool, executor) -> CompressedModel:
    """Encode the plan's tensors into a sharded model (qpack/shards.py), each written as
    it arrives; with ``resume`` the tensors that finished shards hold are skipped."""
    skipped = set(writer.resumed(list(arrays), resume))
    todo = {n: v for n, v in arrays.items() if n not in skipped}
    bar = _progress(todo, progress)
    try:
        def done(job: EncodeJob, result) -> None:
            t = memory_tensor(job.key, *result)
            _warn_costly_codebooks({job.key: t})
            writer.add(job.key, *_sections_in_order(t))
            if bar is not None:
                bar.update(1, _input_nbytes(job.value))

        run_jobs(plan_jobs(arrays, plan, list(todo)), done, executor)
        index = writer.finish()
    except BaseException as exc:
        writer.abort(exc)
        raise
    finally:
        if bar is not None:
            bar.close()
    return load(index)


def _identities(arrays: Mapping) -> list:
    """What identifies the inputs of a run (for resuming it): each tensor's name, dtype
    and shape, and for one read from a file, the file's path, size and mtime."""
    out = []
    for name, v in arrays.items():
        item = [name, str(getattr(v, "dtype", "")), list(np.shape(v)) if not
                is_prequantized(v) else list(v.shape)]
        if isinstance(v, StoredTensor):
            st = os.stat(v.path)
            item += [v.path, v.offset, st.st_size, st.st_mtime_ns]
        out.append(item)
    return out


def compress(model_dict, bits: int = 4, prune: float = 0.0, method: str = "kmeans", *,
             group_size: int | None = DEFAULT_GROUP_SIZE, symmetric: bool = False,
             clip: str = DEFAULT_CLIP,
             entropy: str | None = "huffman", include=None, exclude=None,
             overrides: Mapping[str, Mapping] | None = None,
             min_numel: int = DEFAULT_MIN_NUMEL, prune_scope: str = "tensor",
             per_channel: bool = False, init: str = "linear",
             scale_dtype=np.float16, codebook_dtype="auto",
             metadata: Mapping[str, str] | None = None,
             masks: Mapping | None = None, float_weights: Mapping | None = None,
             calibration: Mapping | None = None, calibration_damping: float | None = None,
             act_range: str | None = DEFAULT_ACT_RANGE, act_percentile: float = 99.99,
             target_bpw: float | None = None, target_bytes: int | None = None,
             evaluate: Callable[[dict[str, np.ndarray]], float] | None = None,
             progress: bool = False, out: str | os.PathLike | None = None,
             executor=None, max_shard_size: int | str | None = None,
             resume: bool = False) -> CompressedModel:
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
    group_size : linear only; G per G inputs (128 by default), -1 per output channel,
        None one scale for the whole tensor.
    symmetric, clip : linear only (clip: "mse", the default, searches the clipping range
        per group; "minmax" or "percentile").
    entropy : "huffman" (code and gap streams Huffman-coded when that is smaller) or None.
    include / exclude : glob pattern(s) on tensor names choosing what is quantized.
    overrides : {glob: {keyword: value}} per-layer settings; later patterns win. Keys:
        method (also "raw": store exactly), bits, prune, group_size, symmetric, clip,
        entropy, per_channel, init, scale_dtype, codebook_dtype.
    min_numel : floating tensors with >= 2 dims and at least this many elements are
        quantized; every other tensor is stored exactly.
    prune_scope : "tensor" (each tensor loses ``prune`` of its weights) or "global" (one
        magnitude threshold across the quantized tensors that use the top-level prune).
    per_channel : kmeans and log: one codebook (log: one scale) per output row (a
        UserWarning names every tensor whose codebooks take more bytes than its codes).
    init : kmeans only: centroid initialization.
    scale_dtype : linear only: np.float16 (default) or np.float32 scales (the file holds
        no float64 ones: ValueError). Calibrated tensors use it too.
    codebook_dtype : kmeans only: "auto" (default: float16 codebooks unless rounding the
        centroids raises the squared error by more than 1e-3, relative; see
        qpack.quantize_kmeans), np.float16 or np.float32.
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
    act_range : how each calibrated tensor's static int8 activation scale is chosen from
        its calibration inputs and stored (its ``act_scale``, used by
        ``matmul(x, act_quant="int8-static")``): "minmax" (default: nothing seen in
        calibration clips), "mse" (least expected squared rounding and clipping error),
        "percentile" (``act_percentile`` of |x|) or "kl" (entropy calibration); None
        stores none. Only with calibration.
    act_percentile : in (50, 100], for act_range="percentile" (99.99).
    target_bpw / target_bytes : a size budget (give one): the bits of every tensor
        quantized here, except those whose bits an override sets, are chosen from 1..8
        (2..8 for symmetric linear codes) to minimize the summed error score under it
        (qpack/allocate.py). ``target_bpw`` counts 8 * (file bytes - bytes of the tensors
        stored exactly) / the number of quantized weights, so codes, sparse index, scales,
        codebooks, Huffman tables and the header are all paid from it; ``target_bytes``
        is the whole file. The file never exceeds it. A tensor's score is, with
        ``evaluate``, the increase of the model's output error when that tensor alone is
        replaced by its decoded approximation; else with calibration its relative output
        error tr(dW X^T X dW^T) / tr(W X^T X W^T); else its relative weight error. The
        choice is stored in compress_args ("allocation") and shown by ``report()``
        ("score"); ``CompressedModel.allocation`` holds every candidate's bytes and score.
        Every allocated tensor is encoded at each candidate width, so this costs about
        eight plain compressions (plus the evaluate calls).
    evaluate : callable(replaced) -> float, the model's output error (lower is better)
        with the tensors in ``replaced`` ({name: decoded array of the tensor's shape and
        dtype}) put in place of the given ones, all others as given. Called once with {}
        (the baseline) and once per tensor and candidate, in this thread.
    progress : count tensors and bytes, with the time left (or, with a budget, candidate
        encodings), on stderr.
    out : a ``.qpk`` path: write the model there while it is encoded, each tensor's
        sections as soon as it is done (header last), and return the file loaded
        (memory-mapped, as ``qpack.load``). The file is written atomically (nothing at
        ``out`` on error or interrupt) and is the same bytes that ``save`` writes.
        Checkpoint inputs are read a tensor at a time in either case, so with ``out``
        peak memory is that of the tensors in flight, not of the model; NaN/Inf in a
        tensor read from disk is then found when that tensor is encoded (still a
        ValueError, and still nothing written). ``prune_scope="global"`` and a size
        budget need every tensor at once and read them all first.
    executor : run the encodings there instead of on this process's threads: a
        ``concurrent.futures.Executor`` (e.g. ``qpack.executors.local_workers(n)``, a
        process pool whose workers share the cores) or a ``dask.distributed.Client``.
        One task per tensor; a tensor of a safetensors checkpoint is read by the worker
        itself, by (file path, byte offset), so the files must be at the same path on
        every worker (shared storage); other inputs are sent with the task. Results
        are written in the model's order with back-pressure (about two tasks per worker
        in flight), and the output is byte-identical to a run without executor. A task
        that fails there (a worker that died after Dask's retry) raises RuntimeError
        naming the tensor.
    max_shard_size : with ``out`` a folder: write a sharded model there
        (``model-0000k-of-0000n.qpk`` files of at most this many bytes of sections each,
        bytes or a string like "5GB", plus ``model.qpk.index.json``; qpack/shards.py),
        returned loaded across its shards. A tensor never spans two shards.
    resume : with ``max_shard_size``: keep the shards an interrupted run of the same
        compression (same inputs, settings and shard size) finished, and encode only the
        tensors after them. In-memory inputs are identified by names, shapes and dtypes
        only; checkpoint files also by size and modification time. A single-file ``out``
        cannot be resumed: it is written atomically, all or nothing.

    Returns a CompressedModel. Raises ValueError, before any encoding, naming any bad
    argument, NaN/Inf weights, an empty model, a pattern that matches no tensor or only
    tensors stored exactly, an option that no tensor uses (e.g. group_size with kmeans),
    a mask of the wrong shape or given together with prune, calibration naming no tensor
    or one stored exactly, of the wrong width, non-finite or with per_channel kmeans/log, a
    target_bpw outside (0, 32] or below what 1-bit codes allow (1 bit per weight of the
    tensors not pruned), both targets, a target that no tensor's bits can serve, or an
    evaluate that is not callable or given without a target. A budget that the smallest
    encodings still exceed (known once they are encoded) raises ValueError too.
    """
    meta = {"qpack_version": __version__}
    meta.update(_check_metadata(metadata, "metadata"))
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be True or False, got {progress!r}")
    shard_size = None
    if max_shard_size is not None:
        if out is None:
            raise ValueError("max_shard_size needs out=, the folder to write the shards to")
        shard_size = parse_size(max_shard_size)
        out_path = check_output_folder(out)
    else:
        out_path = None if out is None else format.check_output_path(out)
    if not isinstance(resume, bool):
        raise ValueError(f"resume must be True or False, got {resume!r}")
    if resume and shard_size is None:
        raise ValueError("resume needs max_shard_size: only a sharded output can be resumed "
                         "(a single file is written atomically, all or nothing)")
    check_executor(executor)
    target = check_targets(target_bpw, target_bytes, evaluate)
    arrays, source_metadata = read_input(model_dict)
    base = {"method": method, "bits": bits, "prune": prune, "group_size": group_size,
            "symmetric": symmetric, "clip": clip, "entropy": entropy,
            "per_channel": per_channel, "init": init, "scale_dtype": scale_dtype,
            "codebook_dtype": codebook_dtype}
    plan = make_plan(arrays, base, include=include, exclude=exclude, overrides=overrides,
                     min_numel=min_numel, prune_scope=prune_scope, masks=masks,
                     float_weights=float_weights, calibration=calibration,
                     calibration_damping=calibration_damping, act_range=act_range,
                     act_percentile=act_percentile)

    if prune_scope == "global":
        from qpack.prune import prune_global

        pool = {n: read_value(arrays[n]) for n, s in plan.settings.items()
                if s is not None and s.prune == plan.base.prune and n not in plan.masks
                and not is_prequantized(arrays[n])}
        if pool:
            plan.masks.update(prune_global(pool, plan.base.prune))

    args = {**plan.base.as_json(), "min_numel": min_numel, "prune_scope": prune_scope,
            "include": patterns(include, "include"), "exclude": patterns(exclude, "exclude"),
            "overrides": plan.overrides,
            "handed_over": sorted(set(plan.masks) | {n for n, v in arrays.items()
                                                     if is_prequantized(v)})}

    def metadata_of(allocation: Allocation | None) -> dict[str, str]:
        # the damping chosen per calibrated tensor is known once it is encoded
        extra = {"calibrated": {n: c.chosen for n, c in plan.calibration.items()}} \
            if plan.calibration else {}
        if allocation is not None:
            extra["allocation"] = allocation.as_json()
        return {**meta, "compress_args": json.dumps({**args, **extra}, default=str)}

    def assemble(encoded: dict, allocation: Allocation | None,
                 final: bool = True) -> CompressedModel:
        tensors = {name: memory_tensor(name, *encoded[name]) for name in arrays}
        if final:
            _warn_costly_codebooks(tensors)
        model = CompressedModel(tensors, metadata_of(allocation),
                                source_metadata=source_metadata)
        model.allocation = allocation
        return model

    if target is None:
        if shard_size is not None:
            fingerprint = run_fingerprint([args, shard_size, _identities(arrays)])
            return _encode_to_shards(ShardedWriter(
                out_path, shard_size, fingerprint, lambda: metadata_of(None),
                source_metadata), resume, arrays, plan, progress, executor)
        if out_path is not None:
            return _encode_to_file(out_path, arrays, plan, lambda: metadata_of(None),
                                   source_metadata, progress, executor)
        return assemble(_encode_all(arrays, plan, progress, executor), None)
    # the allocation scores every tensor against all others: all of them in memory
    arrays = {n: read_value(v) for n, v in arrays.items()}
    names = _allocatable(arrays, plan, target)
    encodings = len(arrays) - len(names) + sum(
        len(candidate_bits(plan.settings[n].method, plan.settings[n].symmetric)) for n in names)
    bar = Progress(encodings, "compress", "encodings") if progress else None
    try:
        encoded, allocation = allocate_bits(
            arrays, plan, names, target, evaluate,
            lambda enc, alloc: assemble(enc, alloc, final=False).nbytes,
            None if bar is None else bar.update, executor)
    finally:
        if bar is not None:
            bar.close()
    model = assemble(encoded, allocation)
    if out_path is None:
        return model
    if shard_size is None:
        model.save(out_path)
        return load(out_path)
    writer = ShardedWriter(out_path, shard_size, run_fingerprint(
        [args, shard_size, _identities(arrays)]), lambda: model.metadata, source_metadata)
    writer.resumed(list(model), resume=False)
    try:
        for name, t in model.items():
            writer.add(name, *_sections_in_order(t))
        return load(writer.finish())
    except BaseException as exc:
        writer.abort(exc)
        raise


def _allocatable(arrays: Mapping, plan, target: tuple[str, float]) -> list[str]:
    """The tensors whose bits a size budget chooses: quantized here, bits not set by an
    override. Raises ValueError when there are none, or when the budget is below what
    1-bit codes allow (a bit per weight of every quantized tensor that is not pruned)."""
    names = [n for n, s in plan.settings.items()
             if s is not None and not is_prequantized(arrays[n]) and n not in plan.pinned_bits]
    what = f"target_{target[0]}={target[1]:g}"
    if not names:
        raise ValueError(f"{what} has no tensor whose bits it could choose (every "
                         "quantized tensor is pre-quantized or has bits set by an override)")
    quantized = [n for n, s in plan.settings.items() if s is not None]
    numel_q = sum(int(np.prod(np.shape(arrays[n]))) for n in quantized)
    raw_bytes = sum(np.asarray(arrays[n]).nbytes for n, s in plan.settings.items()
                    if s is None)
    floor = raw_bytes + sum(int(np.prod(np.shape(arrays[n]))) / 8.0 for n in quantized
                            if plan.settings[n].prune == 0 and n not in plan.masks)
    if budget_bytes(target, numel_q, raw_bytes) < floor:
        need = (f"{8.0 * (floor - raw_bytes) / numel_q:.3f} bits per weight"
                if target[0] == "bpw" else f"{floor:,.0f} bytes")
        raise ValueError(f"{what} is below what 1-bit codes allow: tensors that are not "
                         f"pruned cost at least 1 bit per weight, here {need}")
    return names


def _warn_costly_codebooks(tensors: dict[str, CompressedTensor]) -> None:
    """Warn about each per-channel K-means tensor whose codebooks outweigh its codes.

    One codebook of 2**bits entries per row costs more than the row's codes once 2**bits
    entries (2 or 4 bytes each) exceed cols * bits / 8 bytes: 8-bit codebooks on a
    384-wide matrix add 10.7 to 21.3 bits per weight. Emitted in the caller's thread,
    after encoding, with the sizes as stored.
    """
    for name, t in tensors.items():
        if t.method != "kmeans" or not t.spec["per_channel"]:
            continue
        book = t._section_nbytes("codebook")
        codes = t._section_nbytes("codes")
        if book > codes:
            warnings.warn(
                f"tensor {name!r}: per-channel codebooks take {book / 1024:.1f} KB, more "
                f"than the {codes / 1024:.1f} KB of codes ({t.bits} bits, "
                f"{8 * book / math.prod(t.shape):.1f} extra bits per weight); use "
                "per_channel=False or fewer bits for it", UserWarning, stacklevel=3)


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
