"""Defaults of ``compress`` that the command line shows too (no imports: ``qpack --version``
must not load numpy).

Linear codes, measured on all-MiniLM-L6-v2 (docs/benchmarks/calibration.md, min cosine of
160 held-out sentence embeddings, 4 bits): one scale per tensor gives 0.16, per row 0.91,
groups of 128 0.92 (64: 0.94 for 0.25 more bits per weight; 128 is also the group the
fast kernels run); "mse" clipping lifts 3-bit g128 from 0.71 to 0.83 and matches minmax
at 4 bits.
"""

DEFAULT_GROUP_SIZE = 128
DEFAULT_CLIP = "mse"
# The static int8 activation range (docs/benchmarks/act_static.md, MiniLM's real
# activations): "minmax" stays within 2-7% output error on every layer measured; "mse",
# "percentile" and "kl" are better on some layers but clip the rare huge inputs of a
# feed-forward output layer (75-87% error there).
DEFAULT_ACT_RANGE = "minmax"
