"""Which tensors ``compress`` quantizes, with which settings: validated before any work.

``make_plan`` checks every keyword of ``compress`` (including each override), decides per
tensor whether it is quantized and with what ``TensorSettings``, and refuses options that
would do nothing: a linear-only option where every tensor it reaches uses K-means (and
the reverse), or an include/override pattern that only names tensors stored exactly.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from qpack import dtypes
from qpack._validate import check_bits, check_group_size, check_int, matrix_shape
from qpack.act_range import check_act_range
from qpack.calibration import Calibration, check_damping, check_source
from qpack.cluster import INIT_METHODS as INITS
from qpack.cluster import check_codebook_dtype
from qpack.defaults import DEFAULT_ACT_RANGE, DEFAULT_CLIP, DEFAULT_GROUP_SIZE
from qpack.encode import TensorSettings
from qpack.handover import check_mask, check_prequantized, is_prequantized
from qpack.inputs import to_array
from qpack.quantize import CLIP_METHODS as CLIPS
from qpack.stored_tensor import StoredTensor
from qpack.tensor_spec import MAX_EMPTY_EXTENT, extent

METHODS = ("kmeans", "linear", "log")
# the keyword arguments an override may set; "method" may also be "raw" (store exactly)
OVERRIDABLE = ("method", "bits", "prune", "group_size", "symmetric", "clip", "entropy",
               "per_channel", "init", "scale_dtype", "codebook_dtype")
# options that change nothing unless the tensor uses one of these methods
METHOD_ONLY = {"group_size": ("linear",), "symmetric": ("linear",), "clip": ("linear",),
               "per_channel": ("kmeans", "log"), "init": ("kmeans",),
               "scale_dtype": ("linear",), "codebook_dtype": ("kmeans",)}
# defaults of the method-specific options (as validated by check_settings): a top-level
# value equal to its default was not asked for, so it cannot be "an option that does
# nothing"
METHOD_ONLY_DEFAULTS = {"group_size": DEFAULT_GROUP_SIZE, "symmetric": False,
                        "clip": DEFAULT_CLIP,
                        "per_channel": False, "init": "linear", "scale_dtype": "float16",
                        "codebook_dtype": "auto"}
# the scale dtypes a .qpk file stores (docs/FORMAT.md, 4.3)
SCALE_DTYPES = ("float16", "float32")


def patterns(value, what: str) -> list[str]:
    """A glob or list of globs as a list; ValueError naming ``what`` otherwise."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{what} must be a glob pattern or a list of them, got {value!r}")
    return list(value)


def check_settings(s: Mapping, where: str) -> TensorSettings:
    """Validate one full set of compression settings; ValueError naming the bad one."""
    method = s["method"]
    if method not in METHODS + ("raw",):
        raise ValueError(f"{where}method must be one of {METHODS} (or 'raw' in an "
                         f"override), got {method!r}")
    bits = check_bits(s["bits"], f"{where}bits")
    prune = s["prune"]
    if isinstance(prune, bool) or not isinstance(prune, (int, float, np.floating)) \
            or not 0 <= prune < 1:
        raise ValueError(f"{where}prune must be a fraction in [0, 1), got {prune!r}")
    gs = check_group_size(s["group_size"], f"{where}group_size")
    if s["clip"] not in CLIPS:
        raise ValueError(f"{where}clip must be one of {CLIPS}, got {s['clip']!r}")
    if s["entropy"] not in ("huffman", None, True, False):
        raise ValueError(f"{where}entropy must be 'huffman' or None, got {s['entropy']!r}")
    if s["init"] not in INITS:
        raise ValueError(f"{where}init must be one of {INITS}, got {s['init']!r}")
    for flag in ("symmetric", "per_channel"):
        if not isinstance(s[flag], bool):
            raise ValueError(f"{where}{flag} must be True or False, got {s[flag]!r}")
    return TensorSettings(method=method, bits=bits, prune=float(prune), group_size=gs,
                          symmetric=s["symmetric"], clip=s["clip"],
                          entropy=s["entropy"] in ("huffman", True),
                          per_channel=s["per_channel"], init=s["init"],
                          scale_dtype=check_scale_dtype(s["scale_dtype"],
                                                        f"{where}scale_dtype"),
                          codebook_dtype=check_codebook_dtype(s["codebook_dtype"],
                                                              f"{where}codebook_dtype"))


def check_scale_dtype(value, name: str = "scale_dtype") -> str:
    """A linear scale dtype that a .qpk stores, as its name ("float16" or "float32").

    ``quantize_linear`` also computes float64 scales, but the file format has none:
    ValueError naming ``name`` for float64 and anything else.
    """
    try:
        dt = None if value is None else np.dtype(value)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.name not in SCALE_DTYPES:
        raise ValueError(f"{name} must be float16 or float32 (the dtypes a .qpk file stores "
                         f"scales in), got {value!r}")
    return dt.name


def stored_exactly_reason(arr: np.ndarray, min_numel: int) -> str | None:
    """Why ``arr`` cannot be quantized (None when it can): not floating, < 2-D, too small."""
    if not dtypes.is_floating_name(dtypes.dtype_name(arr.dtype)):
        return f"has dtype {dtypes.dtype_name(arr.dtype)}, not floating"
    if arr.ndim < 2:
        return f"is {arr.ndim}-D (only tensors with >= 2 dims are quantized)"
    if arr.size < max(min_numel, 1):
        return f"has {arr.size} elements, fewer than min_numel={min_numel}"
    return None


def _matching(names, pat: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pat)]


def check_overrides(overrides, names) -> dict[str, dict]:
    """Overrides as {glob: dict}; ValueError for bad types, unknown keys, dead patterns."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"overrides must map glob patterns to dicts, got {overrides!r}")
    out = {}
    for pat, kw in overrides.items():
        if not isinstance(pat, str) or not isinstance(kw, Mapping):
            raise ValueError(f"overrides must map glob patterns to dicts, got {pat!r}: {kw!r}")
        unknown = set(kw) - set(OVERRIDABLE)
        if unknown:
            raise ValueError(f"override {pat!r}: unknown keyword(s) {sorted(unknown)} "
                             f"(allowed: {', '.join(OVERRIDABLE)})")
        if not _matching(names, pat):
            raise ValueError(f"override pattern {pat!r} matches no tensor name")
        if kw.get("method") == "raw" and len(kw) > 1:
            extra = sorted(set(kw) - {"method"})
            raise ValueError(f"override {pat!r}: {', '.join(extra)} do nothing with "
                             "method='raw' (the tensor is stored exactly)")
        out[pat] = dict(kw)
    return out


@dataclass
class Plan:
    """What ``compress`` will do, fully validated.

    settings : per tensor, its TensorSettings, or None when it is stored exactly. A
        pre-quantized tensor has the object's method and bits and only ``entropy`` from
        the keywords.
    base : the validated top-level settings. overrides : {glob: dict}.
    masks : the keep-masks handed over, by tensor name.
    references : float weights given for pre-quantized tensors (their error stats).
    calibration : the checked calibration of the tensors quantized with error
        compensation (qpack/gptq.py), by tensor name.
    pinned_bits : tensors whose bits an override sets (a size budget leaves them as set).
    """

    settings: dict[str, TensorSettings | None]
    base: TensorSettings
    overrides: dict[str, dict]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    references: dict[str, np.ndarray] = field(default_factory=dict)
    calibration: dict[str, Calibration] = field(default_factory=dict)
    pinned_bits: set[str] = field(default_factory=set)


def make_plan(arrays: Mapping, base: Mapping, *, include, exclude, overrides,
              min_numel: int, prune_scope: str, masks=None, float_weights=None,
              calibration=None, calibration_damping=None, act_range=DEFAULT_ACT_RANGE,
              act_percentile=99.99) -> Plan:
    """Decide every tensor's settings; validate every argument first.

    ``arrays`` maps names to arrays, StoredTensors (not read yet: only their shapes and
    dtypes are looked at) or pre-quantized objects (KMeansQuantized / LinearQuantized,
    stored as given); ``base`` holds the top-level keywords
    (OVERRIDABLE keys). Raises ValueError naming the argument for any bad value, a pattern
    that matches nothing or only tensors stored exactly, an option that no tensor uses, a
    mask that does not fit its tensor or comes with pruning, NaN/Inf in a tensor that
    is quantized (in memory), or calibration that does not fit (``_check_calibration``).
    """
    base_settings = check_settings(base, "")
    if base_settings.method == "raw":
        raise ValueError(f"method must be one of {METHODS}, got 'raw'")
    min_numel = check_int(min_numel, "min_numel", 0)
    if prune_scope not in ("tensor", "global"):
        raise ValueError(f"prune_scope must be 'tensor' or 'global', got {prune_scope!r}")
    if prune_scope == "global" and base_settings.prune == 0:
        raise ValueError("prune_scope='global' does nothing with prune=0")
    names = list(arrays)
    inc, exc = patterns(include, "include"), patterns(exclude, "exclude")
    for pat in inc + exc:
        if not _matching(names, pat):
            raise ValueError(f"pattern {pat!r} matches no tensor name")
    overrides = check_overrides(overrides, names)

    pre = {n for n, v in arrays.items() if is_prequantized(v)}
    for name in pre:
        check_prequantized(name, arrays[name])
    reasons = {n: None if n in pre else stored_exactly_reason(a, min_numel)
               for n, a in arrays.items()}
    for name, arr in arrays.items():
        if name not in pre and arr.size == 0 and extent(arr.shape) > MAX_EMPTY_EXTENT:
            raise ValueError(f"tensor {name!r}: empty tensor of shape {arr.shape} exceeds "
                             f"the {MAX_EMPTY_EXTENT}-element extent a .qpk may declare")
    for pat in inc:
        _require_quantizable(_matching(names, pat), reasons, f"include pattern {pat!r}")
    selected = {n for n in names
                if reasons[n] is None and (not inc or any(fnmatch.fnmatchcase(n, p)
                                                          for p in inc))
                and not any(fnmatch.fnmatchcase(n, p) for p in exc)}
    plan: dict[str, TensorSettings | None] = {}
    pinned = set()
    for name in names:
        settings = dict(base)
        for pat, kw in overrides.items():
            if fnmatch.fnmatchcase(name, pat):
                settings.update(kw)
                if "bits" in kw:
                    pinned.add(name)
        tensor_settings = check_settings(settings, f"override for {name!r}: ")
        if name in pre:
            q = arrays[name]
            plan[name] = TensorSettings(method="kmeans" if hasattr(q, "codebook")
                                        else "linear", bits=int(q.bits),
                                        entropy=tensor_settings.entropy)
            continue
        quantized = name in selected and tensor_settings.method != "raw"
        plan[name] = tensor_settings if quantized else None
        # a tensor still on disk is checked when it is read for encoding (encode_jobs):
        # reading every tensor twice would double the cost of a large model
        if quantized and not isinstance(arrays[name], StoredTensor) \
                and not np.isfinite(arrays[name]).all():
            raise ValueError(f"tensor {name!r} contains NaN or Inf")

    # every option must reach at least one tensor it changes: pre-quantized tensors take
    # only ``entropy``; method-only options need a tensor compressed with that method
    made = {n: s for n, s in plan.items() if s is not None and n not in pre}
    used = {s.method for s in made.values()}
    for key, value in base.items():
        if key in METHOD_ONLY and getattr(base_settings, key) != METHOD_ONLY_DEFAULTS[key] \
                and not used & set(METHOD_ONLY[key]):
            raise ValueError(f"{key}={value!r} applies only to {_methods_text(key)}, "
                             f"and no tensor is compressed with it")
    if base_settings.prune > 0 and not any(s.prune > 0 for s in made.values()):
        raise ValueError(f"prune={base_settings.prune} reaches no tensor that is compressed "
                         "here (pre-quantized tensors and masks are stored as given)")
    for pat, kw in overrides.items():
        if kw.get("method") == "raw":
            continue
        matched = _matching(names, pat)
        _require_quantizable(matched, reasons, f"override pattern {pat!r}")
        methods = {made[n].method for n in matched if n in made}
        if set(kw) - {"entropy"} and not methods:
            raise ValueError(f"override pattern {pat!r} matches only tensors that are "
                             "stored as given or left uncompressed by include/exclude, so "
                             "it does nothing")
        for key in kw:
            if key in METHOD_ONLY and not methods & set(METHOD_ONLY[key]):
                raise ValueError(f"override {pat!r}: {key} applies only to "
                                 f"{_methods_text(key)}, and no tensor it matches "
                                 "is compressed with it")
    return Plan(plan, base_settings, overrides,
                masks=_check_masks(masks, arrays, plan, pre),
                references=_check_references(float_weights, arrays, pre),
                calibration=_check_calibration(calibration, calibration_damping, arrays,
                                               plan, pre, reasons, act_range,
                                               act_percentile),
                pinned_bits=pinned)


def _methods_text(key: str) -> str:
    """The methods a method-only option applies to, e.g. "method='kmeans' or 'log'"."""
    return "method=" + " or ".join(repr(m) for m in METHOD_ONLY[key])


def _check_calibration(calibration, damping, arrays: Mapping, plan: dict, pre: set,
                       reasons: dict, act_range=DEFAULT_ACT_RANGE, act_percentile=99.99
                       ) -> dict[str, Calibration]:
    """Checked calibration: each name is a tensor that is quantized here (not stored
    exactly nor handed over pre-quantized), with settings error compensation honours
    (not a per-channel K-means or log grid), and inputs of the weight's matrix-view
    width; and the static activation range rule (act_range None: none stored)."""
    damping = check_damping(damping, "calibration_damping")
    if act_range is not None:
        act_range, act_percentile = check_act_range(act_range, act_percentile)
    if calibration is None:
        if damping is not None:
            raise ValueError("calibration_damping does nothing without calibration")
        if act_range not in (None, DEFAULT_ACT_RANGE) or act_percentile != 99.99:
            raise ValueError(f"act_range={act_range!r} (act_percentile={act_percentile}) "
                             "does nothing without calibration: activation ranges come "
                             "from the calibration inputs")
        return {}
    if act_range != "percentile" and act_percentile != 99.99:
        raise ValueError(f"act_percentile does nothing with act_range={act_range!r}")
    if not isinstance(calibration, Mapping):
        raise ValueError("calibration must map tensor names to input arrays (n_samples, "
                         f"in_features) or HessianStats, got {type(calibration).__name__}")
    if not calibration:
        raise ValueError("calibration is empty: name the tensors to calibrate, or pass None")
    out = {}
    for name, value in calibration.items():
        where = f"calibration[{name!r}]"
        if not isinstance(name, str) or name not in arrays:
            raise ValueError(f"{where} matches no tensor of the model")
        if name in pre:
            raise ValueError(f"{where}: the tensor is handed over pre-quantized and stored "
                             "as given, so calibration would do nothing")
        settings = plan[name]
        if settings is None:
            why = reasons[name] or "is left uncompressed by include/exclude/overrides"
            raise ValueError(f"{where}: the tensor is stored exactly ({why}), so "
                             "calibration would do nothing")
        if settings.method in ("kmeans", "log") and settings.per_channel:
            raise ValueError(f"{where}: error-compensated quantization has one codebook "
                             f"per tensor; per_channel {settings.method} cannot be "
                             "calibrated (set per_channel=False for this tensor)")
        cols = matrix_shape(arrays[name].shape)[1]
        out[name] = Calibration(check_source(value, cols, where), damping, act_range,
                                act_percentile)
    return out


def _check_masks(masks, arrays: Mapping, plan: dict, pre: set) -> dict[str, np.ndarray]:
    """Validated keep-masks: each names a tensor that is quantized without pruning."""
    if masks is None:
        return {}
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks must map tensor names to boolean arrays, got "
                         f"{type(masks).__name__}")
    out = {}
    for name, mask in masks.items():
        if name not in arrays:
            raise ValueError(f"masks names {name!r}, which is not a tensor of the model")
        if name not in pre:
            if plan[name] is None:
                raise ValueError(f"masks[{name!r}]: the tensor is stored exactly, so a mask "
                                 "would do nothing")
            if plan[name].prune > 0:
                raise ValueError(f"masks[{name!r}] given together with prune="
                                 f"{plan[name].prune}: the mask decides what is removed; "
                                 "set prune to 0 for it (e.g. overrides={name: {'prune': 0}})")
        out[name] = check_mask(name, to_array(f"masks[{name!r}]", mask), arrays[name])
    return out


def _check_references(float_weights, arrays: Mapping, pre: set) -> dict[str, np.ndarray]:
    """Float weights of pre-quantized tensors, for their error stats."""
    if float_weights is None:
        return {}
    if not isinstance(float_weights, Mapping):
        raise ValueError("float_weights must map tensor names to arrays")
    out = {}
    for name, value in float_weights.items():
        if name not in pre:
            raise ValueError(f"float_weights[{name!r}]: only pre-quantized tensors take "
                             "float weights (the others are measured against their own)")
        arr = to_array(f"float_weights[{name!r}]", value)
        if arr.dtype.kind != "f" or arr.shape != tuple(arrays[name].shape):
            raise ValueError(f"float_weights[{name!r}] must be floating of shape "
                             f"{tuple(arrays[name].shape)}, got {arr.dtype} {arr.shape}")
        out[name] = arr
    return out


def _require_quantizable(matched: list[str], reasons: dict, what: str) -> None:
    """A pattern that matches only tensors that cannot be quantized does nothing."""
    if matched and all(reasons[n] is not None for n in matched):
        shown = matched[0]
        raise ValueError(f"{what} matches only tensors that are stored exactly: "
                         f"{shown!r} {reasons[shown]}"
                         + (f" (and {len(matched) - 1} more)" if len(matched) > 1 else ""))
