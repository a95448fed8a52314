"""``to_qpack``: the trained state of a torch model, exported exactly into a .qpk model."""

from __future__ import annotations

import numpy as np
from torch import nn

from qpack.cluster import KMeansQuantized
from qpack.inputs import to_array
from qpack.model import CompressedModel, compress
from qpack.quantize import quantize_linear
from qpack.torch.sharing import SHARED, reparametrized


def _export_weight(module: nn.Module, attr: str):
    """The exact stored form of a shared or QAT weight: a KMeansQuantized whose codebook is
    the trained one, or the LinearQuantized that forward used."""
    kind = reparametrized(module)
    if kind == SHARED:
        codes = getattr(module, f"{attr}_codes").detach().cpu().numpy()
        book = getattr(module, f"{attr}_codebook").detach().cpu().numpy().astype(np.float32)
        zc = module._qpack_zero_code
        if zc is not None:
            book = book.copy()
            book[zc] = 0.0  # exactly zero, as forward saw it (the hook kept it there)
        return KMeansQuantized(codes=codes, codebook=book, zero_code=zc,
                               bits=module._qpack_bits, shape=tuple(codes.shape),
                               per_channel=False)
    w = getattr(module, f"{attr}_float").detach().cpu().numpy().astype(np.float32)
    return quantize_linear(w, module._qpack_bits, group_size=module._qpack_group_size,
                           symmetric=module._qpack_symmetric)


def to_qpack(model: nn.Module, *, entropy: str | None = "huffman",
             metadata=None) -> CompressedModel:
    """Export the trained state of ``model`` exactly.

    - weights shared by ``share_weights``: their fixed codes, the fine-tuned codebook and
      the zero code of the pruned entries (so the mask) are stored as they are;
    - weights under ``quantize_aware``: the codes and scales of Q(current weights), the
      exact values forward uses;
    - everything else (biases, norms, buffers, weights only pruned or not compressed) is
      stored raw, pruned zeros included.

    ``qpack.torch.load_packed`` on the saved file then gives the trained model's outputs
    (to float32 rounding). Returns a CompressedModel; ValueError if ``model`` is not an
    nn.Module.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tensors: dict[str, object] = {}
    done: set[str] = set()
    for name, module in model.named_modules():
        kind = reparametrized(module)
        if kind is None:
            continue
        prefix = f"{name}." if name else ""
        suffix = "_codebook" if kind == SHARED else "_float"
        for key in list(module._parameters):
            if key.endswith(suffix):
                attr = key[:-len(suffix)]
                tensors[prefix + attr] = _export_weight(module, attr)
                done.update({prefix + attr + s for s in ("_codebook", "_codes", "_float")})
    raw = []
    for name, value in model.state_dict().items():
        if name in done:
            continue
        tensors[name] = to_array(name, value)
        raw.append(name)
    # every other tensor is stored exactly as it is
    return compress(tensors, entropy=entropy, metadata=metadata,
                    overrides={n: {"method": "raw"} for n in raw} or None)
