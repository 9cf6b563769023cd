"""One differential sweep of every integer/probability-label loss against a float64 reference.

``tests/_loss_reference.py`` re-derives each loss from its docstring math in plain float64 NumPy
(with closed-form gradients, themselves checked against ``jax.grad`` of the same code run on
``jax.numpy``, and against PyTorch where PyTorch has the option). Here every option of
``cross_entropy``, ``nll_loss``, the two optax drop-ins and ``linear_cross_entropy`` is swept
together against it, values and gradients:

* layouts: int class axes (trailing and not), tuple class axes in either order, non-trailing;
* ``where`` masks of the batch rank (per example) and of the logits' rank (per class) in every
  broadcastable shape, with rows or whole batches fully masked;
* integer labels in int8, int16, int32, uint8 (and int64 under x64), probability labels;
* ``weight``, ``ignore_index`` (outside and inside the class range, all-ignored batches),
  ``label_smoothing``, ``z_loss``, ``reduction``; ``softcap`` and shifted-back ``chunk_size``
  blocks for ``linear_cross_entropy``;
* narrow label dtypes with more classes than the dtype can count, and logits of magnitude
  1e7 (float32) and 1e16 (float64), whose gradients are checked in units of the dtype's eps times
  a rounding-aware scale (the closed form's terms in absolute value), not with a loose rtol.

Tolerances: float64 results must agree to ``TOL64`` (64 eps) and results at large magnitude to
``ULPS`` eps of their dtype, both relative to ``|reference| + scale`` where ``scale`` is that
rounding-aware magnitude of the same entry (an entry whose scale is 0, e.g. a masked gradient,
must be exactly 0). A correct kernel stays within 1 eps of it here.
"""

from __future__ import annotations

import importlib.util
import itertools
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jsoftmax

_spec = importlib.util.spec_from_file_location(
    "_loss_reference", Path(__file__).with_name("_loss_reference.py")
)
R = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(R)  # plain NumPy; imports neither jax nor jsoftmax at module level

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)
TOL64 = 64 * EPS64  # float64 results vs the float64 reference (about 1.4e-14 of the scale)
ULPS = 32  # large-magnitude results vs the float64 reference, in eps of the scale

LABEL_DTYPES = ("int8", "int16", "int32", "uint8", "int64")


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------


def assert_close(what, got, want, scale, tol):
    """``|got - want| <= tol * (|want| + scale)`` elementwise; NaN anywhere fails."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    bound = tol * (np.abs(want) + np.broadcast_to(np.asarray(scale, np.float64), want.shape))
    err = np.abs(got - want)
    bad = ~(err <= bound)
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        units = err[idx] / (bound[idx] / tol) if bound[idx] > 0 else np.inf
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} entries off; first at {idx}: got "
            f"{got[idx]!r}, want {want[idx]!r} (error {err[idx]:.3g} = {units:.3g} x scale, "
            f"tolerance {tol:.3g} x scale)\ngot  = {np.array2string(got, precision=6)}\n"
            f"want = {np.array2string(want, precision=6)}"
        )


class Checks:
    """Collects :func:`assert_close` failures so that one report names every wrong output."""

    def __init__(self):
        self.failures = []

    def close(self, *args):
        try:
            assert_close(*args)
        except AssertionError as err:
            self.failures.append(str(err))

    def done(self):
        if self.failures:
            raise AssertionError("\n\n".join(self.failures))


def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


# --------------------------------------------------------------------------------------------
# case generation
# --------------------------------------------------------------------------------------------

# (id, logits shape, axis); the class axes are flattened in the order given. Every layout but
# the last flattens to classes-last [4, 6] or [2, 3, 6]: the kernel then sees the same few
# shapes in every case, so its operations compile once and the sweep stays fast.
LAYOUTS = [
    ("BC", (4, 6), -1),
    ("CB", (6, 4), 0),
    ("B23_ax12", (4, 2, 3), (1, 2)),
    ("B32_ax21", (4, 3, 2), (2, 1)),
    ("3D_ax0,2", (2, 4, 3), (0, 2)),
    ("3D_ax-1,0", (3, 4, 2), (-1, 0)),
    ("BTC", (2, 3, 6), -1),
    ("BCT", (2, 6, 3), 1),
    ("4D_ax0,2", (2, 2, 3, 3), (0, 2)),
    ("all_axes", (4, 6), None),  # one example: the loss of the whole array
]


def broadcast_shapes_of(shape):
    """Every shape that broadcasts to ``shape`` at its rank (each axis full or 1)."""
    return sorted({tuple(1 if keep else d for keep, d in zip(k, shape, strict=True))
                   for k in itertools.product([False, True], repeat=len(shape))})  # fmt: skip


def where_variants(shape, axis):
    axes = R.class_axes(axis, len(shape))
    bshape = R.batch_shape(shape, axes)
    out = [("nomask", None)]
    out += [("ex" + "x".join(map(str, s)), ("ex", s)) for s in broadcast_shapes_of(bshape)]
    out += [("cls" + "x".join(map(str, s)), ("cls", s)) for s in broadcast_shapes_of(shape)]
    return out


def make_mask(rng, kind, mshape, axes):
    """A random mask; often with one fully masked example (or everything masked)."""
    mask = np.array(rng.random(mshape) < (0.7 if kind == "ex" else 0.75), dtype=bool)
    r = rng.random()
    if r < 0.1:
        mask[...] = False  # everything masked: nothing takes part
    elif r < 0.5:
        # one example (in the mask's own, possibly broadcast, shape) loses every class
        idx = tuple(
            slice(None) if (kind == "cls" and a in axes) else rng.integers(d)
            for a, d in enumerate(mshape)
        )
        mask[idx] = False
    elif kind == "cls" and rng.random() < 0.5:
        mask[...] = True  # a broadcast all-True mask: C must still count every class
    return mask


def int_label_array(rng, bshape, n_classes, dtype, ignore_index):
    hi = min(n_classes, np.iinfo(dtype).max + 1)
    y = rng.integers(0, hi, size=bshape)
    info = np.iinfo(dtype)
    if ignore_index is not None and info.min <= ignore_index <= info.max:
        r = rng.random()
        drop = np.ones(bshape, bool) if r < 0.15 else rng.random(bshape) < 0.3
        y = np.where(drop, ignore_index, y)
    return y.astype(dtype)


def prob_label_array(rng, shape):
    r = rng.random()
    if r < 0.4:  # normalised along every axis at once is fine: the docstring needs no sum 1
        q = rng.random(shape)
        q[rng.random(shape) < 0.3] = 0.0
    elif r < 0.7:
        q = rng.dirichlet(np.ones(3), size=shape)[..., 0]
    else:
        q = rng.random(shape) * 2.0  # unnormalised
    return q


def pick(rng, options):
    return options[int(rng.integers(len(options)))]


def ignore_choices(dtype, n_classes):
    if dtype == "uint8":  # -100 never matches a uint8 label: it must ignore nothing
        return [None, -100, 255, n_classes - 1]
    return [None, -100, -1, 1 % n_classes]


def make_ce_case(name, shape, axis, where_spec, kind):
    """Logits, labels, options, reduction and output cotangent for one cross_entropy case."""
    rng = rng_for(name)
    axes = R.class_axes(axis, len(shape))
    bshape = R.batch_shape(shape, axes)
    n_classes = int(np.prod([shape[a] for a in axes]))
    z = rng.normal(size=shape) * pick(rng, [0.5, 2.0, 6.0])
    opts = {"axis": axis}
    if kind == "int":
        dtype = pick(rng, LABEL_DTYPES)  # int64 too: the sweep runs under x64
        ignore_index = pick(rng, ignore_choices(dtype, n_classes))
        labels = int_label_array(rng, bshape, n_classes, dtype, ignore_index)
        opts["ignore_index"] = ignore_index
    else:
        labels = prob_label_array(rng, shape)
    r = rng.random()
    if r < 0.6:
        weight = rng.uniform(0.25, 2.0, n_classes)
        if r < 0.15:
            weight[rng.random(n_classes) < 0.3] = 0.0  # zero class weights too
        opts["weight"] = weight
    opts["label_smoothing"] = pick(rng, [0.0, 0.1, 0.37, 0.37, 1.0])
    opts["z_loss"] = pick(rng, [0.0, 0.0, 1e-3, 0.3])
    if where_spec is not None:
        wkind, mshape = where_spec
        opts["where"] = make_mask(rng, wkind, mshape, axes)
    reduction = pick(rng, ["mean", "sum", "none"])
    terms = R.ce_terms(z, labels, **opts)
    if reduction == "mean" and np.sum(terms["omega"]) == 0 and np.any(terms["loss"] != 0):
        reduction = "sum"  # zero-weight labels with smoothing mass: the mean divides by 0
    g = rng.normal(size=bshape) if reduction == "none" else rng.uniform(0.5, 1.5)
    return z, labels, opts, reduction, np.asarray(g)


def ce_case_ids():
    """Every layout with every mask shape, integer and probability labels taking turns (and
    swapping turns from layout to layout), so that each kind meets every kind of mask."""
    out = []
    for i, (lname, shape, axis) in enumerate(LAYOUTS):
        for j, (wname, wspec) in enumerate(where_variants(shape, axis)):
            kind = ("int", "prob")[(i + j) % 2]
            out.append(pytest.param(lname, shape, axis, wspec, kind, id=f"{lname}-{kind}-{wname}"))
    return out


# --------------------------------------------------------------------------------------------
# running jsoftmax and the reference
# --------------------------------------------------------------------------------------------


def jsoftmax_value_and_grads(fn, z, labels, opts, g, *, jit=False):
    """``fn(z, labels, **opts)`` and the vjp with cotangent ``g`` (logits, and float labels)."""
    z = jnp.asarray(z)
    labels = jnp.asarray(labels)
    opts = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in opts.items()}
    prob = jnp.issubdtype(labels.dtype, jnp.floating)

    def f(z, q):
        return fn(z, q if prob else labels, **opts)

    if jit:
        f = jax.jit(f)
    out, vjp = jax.vjp(f, z, labels if prob else z)
    dz, dq = vjp(jnp.asarray(g, out.dtype))
    return np.asarray(out), np.asarray(dz), (np.asarray(dq) if prob else None)


def reference_ce(z, labels, opts, reduction, g):
    """Reference value, gradients (original layout) and their rounding-aware scales."""
    terms = R.ce_terms(np.asarray(z, np.float64), labels, **opts)
    value = R.reduce(terms["loss"], terms["omega"], reduction)
    dz, dq = R.ce_grads(terms, g, reduction)
    vscale = R.reduced_scale(R.ce_value_scale(terms), terms, reduction)
    gscale = R.ce_grad_scale(terms, g, reduction)
    gn = np.abs(R.cotangent_per_example(g, terms, reduction))[..., None]
    nll = 1 + np.abs(terms["log_s"])[..., None] + np.abs(terms["xs"])
    qscale = gn * (1 - terms["eps"]) * np.abs(terms["w"]) * nll
    qscale = np.where(terms["live"] & terms["ok"][..., None], qscale, 0.0)
    shape, axes = terms["shape"], terms["axes"]
    back = lambda a: R.classes_back(a, shape, axes)  # noqa: E731
    return {
        "value": value,
        "vscale": vscale,
        "dz": back(dz),
        "dz_scale": back(gscale),
        "dq": back(dq),
        "dq_scale": back(qscale),
    }


def check_ce_against_reference(z, labels, opts, reduction, g, tol, *, fn=None, jit=False):
    fn = fn or (lambda z, y, **o: jsoftmax.cross_entropy(z, y, reduction=reduction, **o))
    got, dz, dq = jsoftmax_value_and_grads(fn, z, labels, opts, g, jit=jit)
    ref = reference_ce(z, labels, opts, reduction, g)
    checks = Checks()
    checks.close("loss", got, ref["value"], ref["vscale"], tol)
    checks.close("d loss / d logits", dz, ref["dz"], ref["dz_scale"], tol)
    if dq is not None:
        checks.close("d loss / d labels", dq, ref["dq"], ref["dq_scale"], tol)
    checks.done()


# --------------------------------------------------------------------------------------------
# cross_entropy: every layout x every mask shape, options drawn per case
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lname,shape,axis,wspec,kind", ce_case_ids())
def test_cross_entropy_sweep(x64, lname, shape, axis, wspec, kind):
    name = f"{lname}-{kind}-{wspec}"
    z, labels, opts, reduction, g = make_ce_case(name, shape, axis, wspec, kind)
    check_ce_against_reference(z, labels, opts, reduction, g, TOL64)


# Written-out cases for each known way to get these options wrong (ids name the bug class).
def _focused_cases():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(4, 6)) * 2
    y = np.array([0, 3, 5, 1], np.int32)
    q = rng.dirichlet(np.ones(6), size=4)
    z3 = rng.normal(size=(4, 2, 3)) * 2
    y3 = np.array([5, 0, 4, 2], np.int32)  # flat (row-major) indices into the 2 x 3 slice
    q3 = rng.random((4, 2, 3))
    rows = np.array([[True], [False], [True], [True]])  # (B, 1): example 1 masked
    m413 = np.array([[[True, False, True]], [[False] * 3], [[True, True, False]], [[True] * 3]])
    w6 = np.array([0.5, 2.0, 1.0, 3.0, 1.5, 0.75])
    one_row_dead = np.array([[True] * 6, [False] * 6, [True, False, True, True, False, True]] * 2)
    cases = {
        # (a) a class mask with a size-1 class axis: C_n counts the BROADCAST mask
        "a-mask1x1-smoothing": (z, y, {"where": np.ones((1, 1), bool), "label_smoothing": 0.2}),
        "a-maskBx1-smoothing": (z, y, {"where": rows, "label_smoothing": 0.3}),
        "a-maskBx1-prob-smoothing": (z, q, {"where": rows, "label_smoothing": 0.3}),
        "a-mask1x1-weight-smooth-zloss": (
            z,
            y,
            {"where": np.ones((1, 1), bool), "label_smoothing": 0.5, "weight": w6, "z_loss": 0.1},
        ),
        # (b) probability labels, every class of an example masked: contributes 0, not NaN
        "b-prob-row-masked": (z, q, {"where": one_row_dead[:4]}),
        "b-prob-row-masked-smoothing": (
            z,
            q,
            {"where": one_row_dead[1:5], "label_smoothing": 0.1, "z_loss": 0.1},
        ),
        "b-prob-Bx1-masked": (z, q, {"where": rows}),
        # (c) tuple class axes with a mask that broadcasts
        "c-tuple-axes-Bx1x3": (z3, y3, {"axis": (1, 2), "where": m413}),
        "c-tuple-axes-Bx1x3-smoothing": (
            z3,
            y3,
            {"axis": (1, 2), "where": m413, "label_smoothing": 0.2},
        ),
        "c-tuple-axes-Bx1x3-prob": (z3, q3, {"axis": (1, 2), "where": m413}),
        "c-tuple-axes21-1x2x1": (
            z3,
            np.array([2, 5, 3, 0], np.int32),
            {"axis": (2, 1), "where": np.array([[[True], [False]]])},
        ),
        "c-tuple-axes-1x1x1-smoothing": (
            z3,
            y3,
            {"axis": (1, 2), "where": np.ones((1, 1, 1), bool), "label_smoothing": 0.3},
        ),
        # (f) fully masked examples and all-ignored batches
        "f-every-class-masked": (z, y, {"where": np.zeros((1, 6), bool), "z_loss": 0.1}),
        "f-every-example-masked": (z, y, {"where": np.zeros(4, bool), "label_smoothing": 0.1}),
        "f-all-ignored": (z, np.full(4, -100, np.int32), {"ignore_index": -100}),
        "f-all-ignored-in-range": (z, np.full(4, 2, np.int32), {"ignore_index": 2, "weight": w6}),
        "f-prob-every-example-masked": (z, q, {"where": np.zeros((4,), bool), "z_loss": 0.2}),
    }
    out = []
    for name, (zz, labels, opts) in cases.items():
        for reduction in ("mean", "sum", "none"):
            out.append(pytest.param(zz, labels, opts, reduction, id=f"{name}-{reduction}"))
    return out


@pytest.mark.parametrize("z,labels,opts,reduction", _focused_cases())
def test_cross_entropy_focused(x64, z, labels, opts, reduction):
    bshape = R.batch_shape(z.shape, R.class_axes(opts.get("axis", -1), z.ndim))
    g = np.linspace(0.5, 1.5, int(np.prod(bshape))).reshape(bshape) if reduction == "none" else 1.0
    check_ce_against_reference(z, labels, opts, reduction, np.asarray(g), TOL64)
    if reduction == "none" and "where" in opts:
        # the same under jit (tracers take other paths: no concrete label checks)
        check_ce_against_reference(z, labels, opts, reduction, np.asarray(g), TOL64, jit=True)


# --------------------------------------------------------------------------------------------
# nll_loss
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lname,shape,axis", LAYOUTS, ids=[lay[0] for lay in LAYOUTS])
def test_nll_loss_sweep(x64, lname, shape, axis):
    rng = rng_for(f"nll-{lname}-0")
    axes = R.class_axes(axis, len(shape))
    bshape = R.batch_shape(shape, axes)
    n_classes = int(np.prod([shape[a] for a in axes]))
    lp = rng.normal(size=shape) * 3  # nll_loss normalises nothing: any numbers will do
    dtype = pick(rng, LABEL_DTYPES)
    ignore_index = pick(rng, ignore_choices(dtype, n_classes))
    labels = int_label_array(rng, bshape, n_classes, dtype, ignore_index)
    weight = rng.uniform(0.25, 2.0, n_classes) if rng.random() < 0.6 else None
    for reduction in ("mean", "sum", "none"):
        g = rng.normal(size=bshape) if reduction == "none" else np.asarray(0.75)
        opts = {"axis": axis, "weight": weight, "ignore_index": ignore_index}

        def fn(lp, y, reduction=reduction, **o):
            return jsoftmax.nll_loss(lp, y, reduction=reduction, **o)

        got, dlp, _ = jsoftmax_value_and_grads(fn, lp, labels, opts, g)
        value, omega, y_safe, _, _ = R.nll_loss(lp, labels, reduction=reduction, **opts)
        gn = np.broadcast_to(g, bshape)
        if reduction == "mean":
            gn = gn / (np.sum(omega) if np.sum(omega) != 0 else 1.0)
        dflat = np.zeros((*bshape, n_classes))
        np.put_along_axis(dflat, y_safe[..., None], (-gn * omega)[..., None], -1)
        absl = np.abs(
            omega * np.take_along_axis(R.classes_last(lp, axes), y_safe[..., None], -1)[..., 0]
        )
        vscale = absl if reduction == "none" else np.sum(absl) / (np.sum(omega) or 1.0)
        assert_close(f"nll {reduction}", got, value, vscale, TOL64)
        assert_close(f"d nll {reduction}", dlp, R.classes_back(dflat, shape, axes), 0.0, TOL64)


# --------------------------------------------------------------------------------------------
# the optax drop-ins: vs the reference, and vs optax where optax defines the case
# --------------------------------------------------------------------------------------------


def _dropin_cases():
    out = []
    for i, (lname, shape, axis) in enumerate(LAYOUTS):
        variants = where_variants(shape, axis)
        # no mask or a full per-example mask, a broadcast (and a full) per-class mask
        full_ex = [v for v in variants if v[1] and v[1][0] == "ex" and 1 not in v[1][1]]
        cls = [v for v in variants if v[1] and v[1][0] == "cls"]
        bcast = [c for c in cls[:-1] if 1 in c[1][1]]
        chosen = [variants[0] if i % 2 else full_ex[0], bcast[i % len(bcast)]]
        chosen += [cls[-1]] if i % 2 else []
        for j, (wname, wspec) in enumerate(chosen):
            kind = "int" if (i + j) % 2 == 0 and axis is not None else "prob"
            out.append(pytest.param(lname, shape, axis, wspec, kind, id=f"{lname}-{kind}-{wname}"))
    return out


@pytest.mark.parametrize("lname,shape,axis,wspec,kind", _dropin_cases())
def test_optax_dropins_sweep(x64, lname, shape, axis, wspec, kind):
    rng = rng_for(f"dropin-{lname}-{kind}-{wspec}")
    axes = R.class_axes(axis, len(shape))
    bshape = R.batch_shape(shape, axes)
    n_classes = int(np.prod([shape[a] for a in axes]))
    z = rng.normal(size=shape) * 2
    where = None if wspec is None else make_mask(rng, wspec[0], wspec[1], axes)
    if kind == "int":
        fn, optax_fn = (
            jsoftmax.softmax_cross_entropy_with_integer_labels,
            optax.softmax_cross_entropy_with_integer_labels,
        )
        labels = rng.integers(0, n_classes, bshape).astype(pick(rng, LABEL_DTYPES))
        full_labels = labels
    else:
        fn, optax_fn = jsoftmax.softmax_cross_entropy, optax.softmax_cross_entropy
        # labels broadcastable to the logits, as optax allows
        lshape = pick(rng, broadcast_shapes_of(shape))
        labels = prob_label_array(rng, lshape)
        full_labels = np.broadcast_to(labels, shape)
    g = rng.normal(size=bshape)
    ref = reference_ce(z, full_labels, {"axis": axis, "where": where}, "none", g)

    def ours(z, q):
        return fn(z, q if kind == "prob" else jnp.asarray(labels), axis, where)

    prob = kind == "prob"
    out, vjp = jax.vjp(ours, jnp.asarray(z), jnp.asarray(labels if prob else z))
    dz, dq = vjp(jnp.asarray(g))
    assert out.dtype == jnp.float64
    assert_close("loss", out, ref["value"], ref["vscale"], TOL64)
    assert_close("d loss / d logits", dz, ref["dz"], ref["dz_scale"], TOL64)
    if prob:
        want = R.unbroadcast(ref["dq"], labels.shape)
        scale = R.unbroadcast(ref["dq_scale"], labels.shape)
        assert_close("d loss / d labels", dq, want, scale, TOL64)

    # optax itself, where it is defined: it flattens an unbroadcast mask wrongly for tuple
    # axes, and its gradients are NaN on fully masked examples
    if where is None:
        live = np.ones(shape, bool)
    elif where.ndim == len(bshape):
        live = np.broadcast_to(np.expand_dims(where, axes), shape)
    else:
        live = np.broadcast_to(where, shape)
    fully_masked = (~live).all(axis=axes).any()
    tuple_bcast = where is not None and where.shape != shape and where.ndim == len(shape)
    per_example_all_axes = axis is None and where is not None and where.ndim == 0
    if fully_masked or per_example_all_axes or (kind == "int" and len(axes) > 1 and tuple_bcast):
        return
    theirs = lambda z: optax_fn(z, jnp.asarray(full_labels), axis, where)  # noqa: E731
    want, vjp = jax.vjp(theirs, jnp.asarray(z))
    assert_close("optax loss", out, want, ref["vscale"], TOL64)
    assert_close("optax d logits", dz, vjp(jnp.asarray(g))[0], ref["dz_scale"], TOL64)


@pytest.mark.parametrize("dtype", ["bool", "int32"])
def test_probability_dropin_non_float_labels(x64, dtype):
    """One-hot labels of a non-float dtype (broadcast over the batch) are cast, as in optax."""
    rng = rng_for(f"dropin-cast-{dtype}")
    z = rng.normal(size=(4, 6)) * 2
    where = rng.random((1, 6)) < 0.7
    labels = (np.arange(6) == 2).astype(dtype)  # [C]: broadcast to every example
    g = rng.normal(size=4)
    out, vjp = jax.vjp(lambda z: jsoftmax.softmax_cross_entropy(z, labels, -1, where), z)
    ref = reference_ce(z, np.broadcast_to(labels.astype(np.float64), z.shape), {"where": where},
                       "none", g)  # fmt: skip
    assert_close("loss", out, ref["value"], ref["vscale"], TOL64)
    assert_close("d loss / d logits", vjp(jnp.asarray(g))[0], ref["dz"], ref["dz_scale"], TOL64)


# --------------------------------------------------------------------------------------------
# linear_cross_entropy
# --------------------------------------------------------------------------------------------

# N = 7 tokens, V = 13 classes: automatic, vocabulary-only, shifted-back (overlapping) last
# blocks along either axis, one block, one logit per block
LINEAR_CHUNKS = [None, 5, (3, 5), (7, 13), (4, None), (1, 1), (6, 12)]


def linear_case(name):
    rng = rng_for(name)
    n_tok, d, v = 7, 4, 13
    xshape = pick(rng, [(n_tok, d), (1, n_tok, d)])
    x = rng.normal(size=xshape)
    w = rng.normal(size=(d, v)) * pick(rng, [0.5, 1.5, 4.0])
    bias = rng.normal(size=v) if rng.random() < 0.5 else None
    dtype = pick(rng, LABEL_DTYPES)
    ignore_index = pick(rng, ignore_choices(dtype, v))
    labels = int_label_array(rng, xshape[:-1], v, dtype, ignore_index)
    opts = {
        "bias": bias,
        "ignore_index": ignore_index,
        "label_smoothing": pick(rng, [0.0, 0.1, 0.37, 1.0]),
        "z_loss": pick(rng, [0.0, 1e-3, 0.3]),
        "softcap": pick(rng, [None, None, 5.0, 1.5]),
    }
    reduction = pick(rng, ["mean", "sum", "none"])
    g = rng.normal(size=xshape[:-1]) if reduction == "none" else np.asarray(1.25)
    return x, w, labels, opts, reduction, g


def check_linear(x, w, labels, opts, reduction, g, chunk_size, tol):
    bias = opts["bias"]
    kw = {k: v for k, v in opts.items() if k != "bias"}

    def f(x, w, b):
        return jsoftmax.linear_cross_entropy(
            x, w, jnp.asarray(labels), bias=b, chunk_size=chunk_size, reduction=reduction, **kw
        )

    jb = None if bias is None else jnp.asarray(bias)
    out, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(w), jb)
    dx, dw, db = vjp(jnp.asarray(g, out.dtype))

    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    b64 = None if bias is None else np.asarray(bias, np.float64)
    terms = R.linear_terms(x64, w64, labels, bias=b64, **kw)
    value = R.reduce(terms["loss"], terms["omega"], reduction)
    vscale = R.reduced_scale(R.ce_value_scale(terms), terms, reduction)
    (rdx, rdw, rdb), (sdx, sdw, sdb) = R.linear_grads(x64, w64, terms, g, reduction)
    shape = np.shape(labels) if reduction == "none" else ()
    checks = Checks()
    checks.close("loss", out, np.reshape(value, shape), np.reshape(vscale, shape), tol)
    checks.close("d loss / d x", dx, rdx.reshape(np.shape(x)), sdx.reshape(np.shape(x)), tol)
    checks.close("d loss / d w", dw, rdw, sdw, tol)
    if bias is not None:
        checks.close("d loss / d bias", db, rdb, sdb, tol)
    checks.done()


@pytest.mark.parametrize(
    "seed,chunk_size",
    [pytest.param(k, c, id=f"{k}-chunk{c}") for k, c in enumerate(LINEAR_CHUNKS)],
)
def test_linear_cross_entropy_sweep(x64, seed, chunk_size):
    x, w, labels, opts, reduction, g = linear_case(f"linear-{seed}")
    check_linear(x, w, labels, opts, reduction, g, chunk_size, TOL64)


def test_linear_cross_entropy_all_ignored(x64):
    """(f) every token ignored: "mean" is 0 with zero gradients (not 0 / 0)."""
    x, w, _, opts, _, _ = linear_case("linear-all-ignored")
    labels = np.full(x.shape[:-1], -100, np.int16)
    opts.update(ignore_index=-100, label_smoothing=0.2, z_loss=0.1)
    check_linear(x, w, labels, opts, "mean", np.asarray(1.0), (3, 5), TOL64)


# --------------------------------------------------------------------------------------------
# (d) narrow label dtypes: more classes than the dtype counts, labels inside its range
# --------------------------------------------------------------------------------------------

# (label dtype, classes): more classes than the dtype can count (one class count for both 8-bit
# dtypes, so they share compilations), labels up to the dtype's largest value
NARROW = [("int8", 300), ("uint8", 300), ("int16", 40000)]


@pytest.mark.parametrize("dtype,n_classes", NARROW, ids=[n[0] for n in NARROW])
def test_narrow_label_dtypes(dtype, n_classes):
    """Labels up to the dtype's max with more classes than the dtype counts: the results are
    the int32-label ones (checked against the reference in float32 ulps)."""
    rng = rng_for(f"narrow-{n_classes}")
    top = int(np.iinfo(dtype).max)
    z = rng.normal(size=(4, n_classes)).astype(np.float32)
    y = np.array([top, 0, 5, top], dtype)
    # the options ignore the third example; for uint8 labels, ignore_index=-1 is no uint8 value
    # and must ignore nothing (not wrap to 255, the top label)
    ign = -1 if dtype == "uint8" else 5
    weight = rng.uniform(0.5, 2.0, n_classes).astype(np.float32)
    mask = rng.random((4, n_classes)) < 0.9
    mask[:, top] = True
    w = (0.5 * rng.normal(size=(8, n_classes))).astype(np.float32)
    tol = ULPS * EPS32
    g = np.linspace(0.5, 1.5, 4)
    opts = {"weight": weight, "ignore_index": ign, "label_smoothing": 0.1, "z_loss": 1e-3}
    opts["where"] = mask

    def sce(z, y, where):
        return jsoftmax.softmax_cross_entropy_with_integer_labels(z, y, where=where)

    def nll():
        fn = lambda lp, y, **o: jsoftmax.nll_loss(lp, y, reduction="sum", **o)  # noqa: E731
        o = {"weight": weight, "ignore_index": ign}
        got, dlp, _ = jsoftmax_value_and_grads(fn, z, y, o, np.asarray(1.0))
        value, omega, y_safe, _, _ = R.nll_loss(z, y, reduction="sum", **o)
        want = np.zeros(z.shape)
        np.put_along_axis(want, y_safe[:, None], -omega[:, None], -1)
        assert_close("nll", got, value, np.abs(value), tol)
        assert_close("d nll", dlp, want, 0.0, tol)

    checks = {
        "cross_entropy_options": lambda: check_ce_against_reference(z, y, opts, "mean", 1.0, tol),
        "nll_loss": nll,
        "softmax_cross_entropy_with_integer_labels": lambda: check_ce_against_reference(
            z, y, {"where": mask}, "none", g, tol, fn=sce
        ),
        "linear_cross_entropy": lambda: check_linear(
            z[:, :8],
            w,
            y,
            {"bias": None, "ignore_index": ign, "label_smoothing": 0.1},
            "mean",
            np.asarray(1.0),
            (3, 64),
            tol,
        ),
    }
    failures = []
    for name, check in checks.items():
        try:
            check()
        except Exception as err:  # collect every function's failure, not just the first
            failures.append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
    assert not failures, f"{dtype} labels with {n_classes} classes:\n" + "\n".join(failures)


# --------------------------------------------------------------------------------------------
# (e) large magnitudes: gradients within a few eps of a rounding-aware scale
# --------------------------------------------------------------------------------------------


def large_logits(rng, shape, dtype, big):
    """Logits of magnitude ``big`` whose rows have near ties (differences of a few units).

    Exactly representable in ``dtype``, so the float64 reference sees the same numbers.
    """
    unit = float(np.spacing(np.asarray(big, dtype)))  # ulp at this magnitude
    base = np.round(rng.uniform(-1, 1, (*shape[:-1], 1)) * big / unit) * unit
    near = base + unit * rng.integers(-3, 4, shape)  # a few ulps from the row's base
    far = np.round(rng.uniform(-2, 2, shape) * big / unit) * unit  # far away either side
    z = np.where(rng.random(shape) < 0.6, near, far).astype(dtype)
    assert np.all(np.abs(z.astype(np.float64)) < 4 * big)
    return z


LARGE = [("float32", 1e7, EPS32), ("float64", 1e16, EPS64)]


# (options, reduction): each option set meets one reduction
LARGE_OPTIONS = [
    ("plain", "none"),
    ("smooth_zloss_weight", "mean"),
    ("mask_smooth", "none"),
    ("tuple_axes_mask_smooth", "sum"),
]


@pytest.mark.parametrize("opts_name,reduction", LARGE_OPTIONS, ids=[o[0] for o in LARGE_OPTIONS])
@pytest.mark.parametrize("kind", ["int", "prob"])
@pytest.mark.parametrize("dt,big,eps", LARGE, ids=[c[0] for c in LARGE])
def test_cross_entropy_large_magnitude(dt, big, eps, kind, opts_name, reduction):
    rng = rng_for(f"large-{dt}-{kind}-{opts_name}")
    tuple_axes = opts_name.startswith("tuple_axes")
    shape, axis = ((4, 2, 3), (1, 2)) if tuple_axes else ((4, 6), -1)
    z = large_logits(rng, shape, dt, big)
    bshape = shape[:1]
    if kind == "int":
        labels = rng.integers(0, 6, bshape).astype(np.int32)
    else:
        labels = rng.random(shape).astype(dt)
    opts = {"axis": axis}
    if "smooth" in opts_name:
        opts["label_smoothing"] = 0.1
    if "zloss" in opts_name:
        opts.update(z_loss=1e-3, weight=rng.uniform(0.5, 2.0, 6).astype(dt))
    if "mask" in opts_name:
        opts["where"] = rng.random(shape) < 0.8
    g = rng.uniform(0.5, 1.5, bshape) if reduction == "none" else np.asarray(1.0)
    with jax.enable_x64(dt == "float64"):
        check_ce_against_reference(z, labels, opts, reduction, g, ULPS * eps)


@pytest.mark.parametrize("dt,big,eps", LARGE, ids=[c[0] for c in LARGE])
@pytest.mark.parametrize("kind", ["int", "prob"])
def test_optax_dropins_large_magnitude(dt, big, eps, kind):
    rng = rng_for(f"large-dropin-{dt}-{kind}")
    z = large_logits(rng, (4, 6), dt, big)
    where = rng.random((4, 6)) < 0.8
    if kind == "int":
        labels = rng.integers(0, 6, 4).astype(np.int32)
        fn = jsoftmax.softmax_cross_entropy_with_integer_labels
    else:
        labels = rng.random((4, 6)).astype(dt)
        fn = jsoftmax.softmax_cross_entropy
    g = rng.uniform(0.5, 1.5, 4)
    with jax.enable_x64(dt == "float64"):
        check_ce_against_reference(z, labels, {"where": where}, "none", g, ULPS * eps, fn=fn)


def exact_linear_inputs(rng, dt, n, d, v):
    """``x``, ``w``, ``bias`` of a large-magnitude head whose logits are exact in ``dt``.

    Small-integer ``x`` times ``w`` in multiples of a power of two: every partial sum of
    ``x @ w`` is exact, and ``bias`` adds an even offset of a few units, so many classes of a
    token tie at a logit near 1e7 (float32) or 1e16 (float64) up to a few units.
    """
    step = 2.0**19 if dt == "float32" else 2.0**48  # 45 * step < 2**25 resp. 2**54
    x = rng.integers(-3, 4, (n, d)).astype(dt)
    cols = rng.integers(-5, 6, (d, 3))  # three distinct columns: ties across classes
    w = (cols[:, rng.integers(0, 3, v)] * step).astype(dt)
    bias = (2 * rng.integers(-3, 4, v)).astype(dt)
    exact = x.astype(object) @ w.astype(object) + bias.astype(object)
    assert np.array_equal(exact.astype(np.float64), (x @ w + bias).astype(np.float64))
    return x, w, bias


@pytest.mark.parametrize("dt,big,eps", LARGE, ids=[c[0] for c in LARGE])
@pytest.mark.parametrize(
    "opts_name,chunk_size,reduction",
    [("plain", (3, 5), "none"), ("smooth_zloss_ignore", (4, 6), "mean")],
    ids=["plain", "smooth_zloss_ignore"],
)
def test_linear_cross_entropy_large_magnitude(dt, big, eps, opts_name, chunk_size, reduction):
    rng = rng_for(f"large-linear-{dt}-{opts_name}")
    x, w, bias = exact_linear_inputs(rng, dt, 7, 3, 13)
    labels = rng.integers(0, 13, 7).astype(np.int32)
    opts = {"bias": bias, "ignore_index": None, "label_smoothing": 0.0, "z_loss": 0.0}
    opts["softcap"] = None
    if opts_name == "smooth_zloss_ignore":
        opts.update(label_smoothing=0.1, z_loss=1e-4, ignore_index=4)
        labels[:2] = 4
    g = rng.uniform(0.5, 1.5, 7) if reduction == "none" else np.asarray(1.0)
    with jax.enable_x64(dt == "float64"):
        check_linear(x, w, labels, opts, reduction, g, chunk_size, ULPS * eps)


# --------------------------------------------------------------------------------------------
# property test: random layouts, masks and options
# --------------------------------------------------------------------------------------------


@st.composite
def ce_problems(draw):
    """A random layout (batch and class axes interleaved, class axes in any order, size-1 class
    axes), mask shape and seed. Batch axes keep their order and the classes multiply to 6, so
    the kernel sees the same classes-last shapes as the fixed sweep (no new compilations)."""
    bshape = draw(st.sampled_from([(4,), (2, 3)]))
    cshape = draw(st.sampled_from([(6,), (2, 3), (3, 2), (1, 6), (6, 1), (3, 1, 2)]))
    ndim = len(bshape) + len(cshape)
    pos = draw(st.permutations(range(ndim)))
    bpos, cpos = sorted(pos[: len(bshape)]), pos[len(bshape) :]
    shape = [0] * ndim
    for p_, d in [*zip(bpos, bshape, strict=True), *zip(cpos, cshape, strict=True)]:
        shape[p_] = d
    shape = tuple(shape)
    negative = draw(st.booleans())
    axes = tuple(a - ndim if negative else a for a in cpos)
    axis = axes[0] if len(axes) == 1 and draw(st.booleans()) else axes
    kind = draw(st.sampled_from(["int", "prob"]))
    wkind = draw(st.sampled_from([None, "ex", "cls"]))
    if wkind is None:
        wspec = None
    else:
        full = bshape if wkind == "ex" else shape
        ones = draw(st.lists(st.booleans(), min_size=len(full), max_size=len(full)))
        wspec = (wkind, tuple(1 if o else d for o, d in zip(ones, full, strict=True)))
    seed = draw(st.integers(0, 2**32 - 1))
    return shape, axis, wspec, kind, seed, draw(st.booleans())


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ce_problems())
def test_cross_entropy_property(x64, problem):
    shape, axis, wspec, kind, seed, jit = problem
    z, labels, opts, reduction, g = make_ce_case(f"prop-{seed}", shape, axis, wspec, kind)
    check_ce_against_reference(z, labels, opts, reduction, g, TOL64, jit=jit)


# --------------------------------------------------------------------------------------------
# the reference itself: its closed-form gradients are autodiff, and it agrees with PyTorch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["B32_ax21-int-cls4x1x2", "BCT-prob-cls2x1x3", "lin"],
)
def test_reference_gradients_are_autodiff(x64, name):
    """``R.ce_grads`` / ``R.linear_grads`` equal ``jax.grad`` of the same reference code."""
    if name == "lin":
        x, w, labels, opts, reduction, g = linear_case("linear-ref")
        opts.update(softcap=3.0, label_smoothing=0.2, z_loss=0.1)
        kw = {k: v for k, v in opts.items() if k != "bias"}

        def f(x, w, b):
            terms = R.linear_terms(x, w, labels, bias=b, xp=jnp, **kw)
            return jnp.vdot(R.reduce(terms["loss"], terms["omega"], reduction, jnp), g)

        b0 = opts["bias"] if opts["bias"] is not None else 0.0
        auto = jax.jit(jax.grad(f, (0, 1, 2)))(x, w, b0)
        terms = R.linear_terms(x, w, labels, **opts)
        (dx, dw, db), _ = R.linear_grads(x, w, terms, g, reduction)
        np.testing.assert_allclose(dx.reshape(x.shape), auto[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dw, auto[1], rtol=1e-12, atol=1e-14)
        if opts["bias"] is not None:
            np.testing.assert_allclose(db, auto[2], rtol=1e-12, atol=1e-14)
        return
    lname, kind, wname = name.split("-")
    (_, shape, axis) = next(lay for lay in LAYOUTS if lay[0] == lname)
    wspec = dict(where_variants(shape, axis))[wname]
    z, labels, opts, _, _ = make_ce_case(name, shape, axis, wspec, kind)
    opts.update(label_smoothing=0.3, z_loss=0.2)
    bshape = R.batch_shape(shape, R.class_axes(axis, len(shape)))
    gs = {
        "mean": 1.5,
        "sum": -0.5,
        "none": np.linspace(-1, 2, int(np.prod(bshape))).reshape(bshape),
    }

    def f(z, q):  # one program for the three reductions: one compilation
        q = q if kind == "prob" else labels
        return sum(
            jnp.vdot(R.cross_entropy(z, q, reduction=r, xp=jnp, **opts), g) for r, g in gs.items()
        )

    auto = jax.jit(jax.grad(f, (0, 1)))(jnp.asarray(z), jnp.asarray(labels, jnp.float64))
    refs = [reference_ce(z, labels, opts, r, np.asarray(g)) for r, g in gs.items()]
    np.testing.assert_allclose(sum(r["dz"] for r in refs), auto[0], rtol=1e-12, atol=1e-14)
    if kind == "prob":
        np.testing.assert_allclose(sum(r["dq"] for r in refs), auto[1], rtol=1e-12, atol=1e-14)
    # the NumPy and the jax.numpy runs of the reference agree on the values too
    want = jax.jit(lambda z: [R.cross_entropy(z, labels, reduction=r, xp=jnp, **opts) for r in gs])
    for ref, w in zip(refs, want(jnp.asarray(z)), strict=True):
        np.testing.assert_allclose(ref["value"], w, rtol=1e-14, atol=1e-15)


def _torch_cases():
    cases = []
    for layout, kind, weight, ignore, eps, reduction in itertools.product(
        ["BC", "BCT"], ["int", "prob"], [False, True], [None, -100, 2], [0.0, 0.25],
        ["mean", "sum", "none"],
    ):  # fmt: skip
        if kind == "prob" and ignore is not None:
            continue  # PyTorch ignores ignore_index for probabilities; jsoftmax raises
        cases.append((layout, kind, weight, ignore, eps, reduction))
    cases.append(("BC", "int", True, -100, 0.25, "all_ignored_sum"))
    cases.append(("BC", "int", True, -100, 0.25, "all_ignored_mean"))
    return cases


def test_reference_matches_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    for layout, kind, use_w, ignore, eps, reduction in _torch_cases():
        rng = rng_for(f"torch-{layout}-{kind}-{use_w}-{ignore}-{eps}-{reduction}")
        shape = (5, 6) if layout == "BC" else (3, 6, 4)  # PyTorch: classes on axis 1
        bshape = R.batch_shape(shape, (1,))
        z = rng.normal(size=shape) * 2
        weight = rng.uniform(0.25, 2.0, 6) if use_w else None
        all_ignored = reduction.startswith("all_ignored")
        reduction = reduction.removeprefix("all_ignored_")
        if kind == "int":
            labels = rng.integers(0, 6, bshape)
            if ignore is not None:
                labels = np.where(rng.random(bshape) < 0.3, ignore, labels)
                labels.reshape(-1)[0] = 3  # at least one example takes part
                if all_ignored:
                    labels[...] = ignore
        else:
            labels = rng.dirichlet(np.ones(6), size=bshape)
            labels = np.moveaxis(labels, -1, 1)
        g = rng.normal(size=bshape) if reduction == "none" else np.asarray(0.8)

        tz = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        tl = torch.tensor(labels, dtype=torch.float64 if kind == "prob" else torch.int64)
        tl.requires_grad_(kind == "prob")
        kw = {"label_smoothing": eps, "reduction": reduction}
        if weight is not None:
            kw["weight"] = torch.tensor(weight, dtype=torch.float64)
        if ignore is not None:
            kw["ignore_index"] = ignore
        tout = F.cross_entropy(tz, tl, **kw)
        tout.backward(torch.tensor(g, dtype=torch.float64))

        opts = {"axis": 1, "weight": weight, "ignore_index": ignore, "label_smoothing": eps}
        ref = reference_ce(z, labels, opts, reduction, g)
        if all_ignored and reduction == "mean":
            # the documented difference: 0 with zero gradients here, 0 / 0 = NaN in PyTorch
            assert torch.isnan(tout) and ref["value"] == 0 and not ref["dz"].any()
            continue
        np.testing.assert_allclose(ref["value"], tout.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ref["dz"], tz.grad.numpy(), rtol=1e-12, atol=1e-14)
        if kind == "prob":
            np.testing.assert_allclose(ref["dq"], tl.grad.numpy(), rtol=1e-12, atol=1e-14)
