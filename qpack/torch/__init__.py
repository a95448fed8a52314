"""PyTorch front door: packed layers as ``torch.nn.Module``s, and .qpk files into models.

- ``PackedLinear``, ``PackedConv2d``: inference modules over a ``CompressedTensor``;
  CPU tensors in and out, sharing memory with the numpy arrays qpack's kernels run on.
- ``load_packed(model, source)``: replaces a model's nn.Linear / nn.Conv2d layers whose
  weights are quantized in a .qpk by packed modules and loads everything else.
- ``state_dict(source)``: every tensor of a .qpk decoded to a torch tensor (dtypes kept,
  bfloat16 included), ready for ``model.load_state_dict``.
- ``prune(model, amount)``: magnitude pruning whose zeros hold through retraining (any
  optimizer); its masks go to ``qpack.compress(model, masks=...)``.
- ``share_weights(model, bits)``: K-means weight sharing with trainable centroids;
  ``quantize_aware(model, bits)``: fake-quantized training (straight-through);
  ``to_qpack(model)``: the trained state exported exactly;
  ``deep_compression(model, data, loss_fn)``: the paper's three stages in one call;
  ``sensitivity`` / ``allocate_sparsity``: the per-layer pruning scan it starts from.
- ``calibrate(model, batches)``: each layer's input statistics (forward hooks), for
  ``qpack.compress(model, calibration=...)``.

Needs PyTorch (the ``torch`` extra: ``pip install 'qpack[torch]'``, or
``pip install torch==2.13.0``); ``import qpack`` itself never imports torch.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401  (the real PyTorch: imports here are absolute)
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "qpack.torch needs PyTorch, which is not installed: pip install torch==2.13.0 "
        "(or install qpack with the torch extra: pip install 'qpack[torch]')") from exc

from qpack.torch.calibration import calibrate  # noqa: E402
from qpack.torch.export import to_qpack  # noqa: E402
from qpack.torch.loading import load_packed, state_dict  # noqa: E402
from qpack.torch.modules import PackedConv2d, PackedLinear  # noqa: E402
from qpack.torch.pruning import masks_of, prune  # noqa: E402
from qpack.torch.recipe import deep_compression  # noqa: E402
from qpack.torch.sensitivity import Sensitivity, allocate_sparsity, sensitivity  # noqa: E402
from qpack.torch.sharing import quantize_aware, share_weights  # noqa: E402

__all__ = ["PackedConv2d", "PackedLinear", "Sensitivity", "allocate_sparsity", "calibrate",
           "deep_compression", "load_packed", "masks_of", "prune", "quantize_aware",
           "sensitivity", "share_weights", "state_dict", "to_qpack"]
