"""Where do sparsemax's sort and Newton variants disagree on a GPU? (bfloat16 and float32).

Prints, per dtype: rows whose support (p > 0) differs between the variants, the largest output
among the entries that flip, the largest gradient difference in rows whose support agrees, and
the largest anywhere. A flip at an entry whose output is of the order of the rounding is the
non-differentiable boundary of sparsemax, where the two one-sided Jacobians differ by O(1).
"""

import jax
import numpy as np

import jsoftmax
from jsoftmax.bench.core import _normals, _weighted_sum_grad

print(jax.devices())
for dtype in ("bfloat16", "float32"):
    x, w = _normals((4096, 1024), dtype)
    out = {}
    for m in ("sort", "newton"):
        f = lambda x, m=m: jsoftmax.sparsemax(x, method=m)  # noqa: E731
        p = np.asarray(jax.jit(f)(x), np.float32)
        g = np.asarray(jax.jit(_weighted_sum_grad(f))(x, w)[1], np.float32)
        out[m] = (p, g)
    (ps, gs), (pn, gn) = out["sort"], out["newton"]
    flip = (ps > 0) != (pn > 0)
    rows = flip.any(1)
    d = np.abs(gs - gn)
    print(
        dtype,
        "rows with a flipped entry:",
        int(rows.sum()),
        "flipped entries:",
        int(flip.sum()),
        "largest output at a flip:",
        float(np.maximum(ps, pn)[flip].max()) if flip.any() else 0.0,
        "grad diff, agreeing rows:",
        float(d[~rows].max()),
        "grad diff, all:",
        float(d.max()),
        "forward diff:",
        float(np.abs(ps - pn).max()),
    )
