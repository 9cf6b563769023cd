"""Independent float64 references for the sparse normalisers (not a test module).

Used by tests/test_sparse.py and tests/test_fy_loss.py: the textbook closed forms of sparsemax
and 1.5-entmax (sort, cumulative sums) and a 200-step bisection for other α, in NumPy float64,
written from the definitions and sharing no code with the library.
"""

import jax
import numpy as np


def ref64(alpha, x, axis=-1):
    """α-entmax in float64 NumPy along one axis: closed forms for α = 2 and 1.5, else bisection."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx]
        live = row > -np.inf
        z = (alpha - 1) * (row[live] - row[live].max())
        zs = np.sort(z)[::-1]
        k = np.arange(1, zs.size + 1)
        if alpha == 2.0:
            cs = np.cumsum(zs)
            kk = np.sum(1 + k * zs > cs)
            p = np.maximum(z - (cs[kk - 1] - 1) / kk, 0)
        elif alpha == 1.5:
            mean = np.cumsum(zs) / k
            var = np.cumsum(zs**2) / k - mean**2
            tau = mean - np.sqrt(np.maximum((1 - k * var) / k, 0))
            kk = np.sum(tau <= zs)
            p = np.maximum(z - tau[kk - 1], 0) ** 2
        else:
            lo, hi = -1.0, 0.0
            for _ in range(200):
                mid = (lo + hi) / 2
                if np.sum(np.maximum(z - mid, 0) ** (1 / (alpha - 1))) >= 1:
                    lo = mid
                else:
                    hi = mid
            p = np.maximum(z - lo, 0) ** (1 / (alpha - 1))
            p = p / p.sum()
        out[idx][live] = p
    return np.moveaxis(out, -1, axis)


def smooth_points(alpha, n=7, count=4, seed=3):
    """Score rows with no entry within 0.05 of the threshold, so finite differences do not
    straddle a kink (and at least two entries in the support)."""
    rows, key = [], jax.random.key(seed)
    while len(rows) < count:
        key, sub = jax.random.split(key)
        x = np.asarray(jax.random.normal(sub, (n,)), np.float64) * 1.5
        z = (alpha - 1) * (x - x.max())
        p = ref64(alpha, x)
        tau = z[p > 0].min() - p[p > 0].min() ** (alpha - 1)
        if np.min(np.abs(z - tau)) > 0.05 and (p > 0).sum() >= 2:
            rows.append(x)
    return np.stack(rows)
