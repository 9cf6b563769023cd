"""Benchmark suite: how many kernels XLA compiles each jsoftmax rule into, against its peer.

A ``custom_vjp`` rule is opaque to JAX's autodiff but not to XLA: after lowering, the forward
and backward rules are plain HLO that XLA fuses like any other. This suite checks that on the
backend at hand. Each function is compiled (never run) for abstract inputs, and the top-level
instructions of the optimised HLO's entry computation that do work are counted: each is one
kernel launch on a GPU (a fusion, a library call such as a matmul, a loop) or one loop nest on
the CPU. Parameters, constants, tuples, ``get-tuple-element`` and ``bitcast`` are free and not
counted. A rule that fuses as well as its peer shows the same count or fewer; every row also
lists the kernels (opcode and fusion kind) of both sides, so a difference can be read off.

Run ``python -m jsoftmax.bench.fusion [--quick]``; it prints one JSON row per comparison.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import optax

import jsoftmax
from jsoftmax.bench._timing import result_row
from jsoftmax.bench.core import _vjp, _weighted_sum_grad

__all__ = ["entry_kernels", "run"]

SUITE = "fusion"
SHAPE, QUICK_SHAPE = (4096, 32768), (64, 1024)
LINEAR = {"n": 8192, "d": 1024, "v": 65536}
LINEAR_QUICK = {"n": 256, "d": 64, "v": 2048}

#: Entry instructions that launch nothing: they name, pack or reinterpret buffers.
FREE = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast"})
# `%name = <type> opcode(operands), attributes`: the type may be a tuple with spaces in it, but
# never contains a lower-case word directly followed by "(", so the first such word is the opcode.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][\w\-]*)\(")
_FUSION_KIND = re.compile(r"\bkind=(k\w+)")


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    """Each computation's instruction lines by name, and the name of the entry computation."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$", line)
        if head:
            current = head.group(2)
            comps[current] = []
            entry = current if head.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line)
    if entry is None:
        raise ValueError("hlo_text has no ENTRY computation; pass the compiled module's text")
    return comps, entry


def _labels(comps: dict[str, list[str]], name: str) -> list[str]:
    kernels = []
    for line in comps[name]:
        m = _INSTRUCTION.match(line)
        if m is None or m.group(1) in FREE:
            continue
        label = m.group(1)
        if label == "call" and (c := re.search(r"\bto_apply=%?([\w.\-]+)", line)):
            kernels += _labels(comps, c.group(1))  # a wrapper (XLA's CPU backend wraps loops)
            continue
        if label == "fusion" and (k := _FUSION_KIND.search(line)):
            label += ":" + k.group(1)
        elif label == "custom-call" and (t := re.search(r'custom_call_target="([^"]+)"', line)):
            label += ":" + t.group(1)
        elif label == "while" and (b := re.search(r"\bbody=%?([\w.\-]+)", line)):
            # a loop is one instruction here but launches its body's kernels every iteration
            label += "[" + ", ".join(_labels(comps, b.group(1))) + "]"
        kernels.append(label)
    return kernels


def entry_kernels(hlo_text: str) -> list[str]:
    """The working top-level instructions of an optimised HLO module's ``ENTRY`` computation.

    Args:
      hlo_text: ``jax.jit(f).lower(...).compile().as_text()``.

    Returns:
      One label per instruction in program order: the opcode, with the fusion kind for
      fusions (``"fusion:kLoop"``), the target for custom calls, and for a ``while`` loop the
      labels of its body's instructions in brackets (``"while[dot, fusion:kLoop]"``); a
      ``call`` (XLA's CPU backend wraps loops in one) stands as the labels of what it calls.

    Raises:
      ValueError: if ``hlo_text`` has no ``ENTRY`` computation.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> text = jax.jit(lambda x: jnp.exp(x) + 1).lower(jnp.ones(8)).compile().as_text()
      >>> len(entry_kernels(text))
      1
    """
    comps, entry = _computations(hlo_text)
    return _labels(comps, entry)


def _kernels(fn, *abstract) -> list[str]:
    return entry_kernels(jax.jit(fn).lower(*abstract).compile().as_text())


def _row(op: str, shape, dtype: str, ours, base, baseline: str, *abstract) -> dict:
    mine, theirs = _kernels(ours, *abstract), _kernels(base, *abstract)
    return result_row(
        SUITE,
        op,
        shape,
        dtype,
        jsoftmax_kernels=len(mine),
        baseline_kernels=len(theirs),
        baseline=baseline,
        jsoftmax_list=mine,
        baseline_list=theirs,
        backend=jax.default_backend(),
    )


def _ce(logits, labels):
    return jsoftmax.cross_entropy(logits, labels)


def _optax_ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _linear(x, w, y):
    return jax.value_and_grad(jsoftmax.linear_cross_entropy, argnums=(0, 1))(x, w, y)


def _naive_linear(x, w, y):
    loss = lambda x, w, y: _optax_ce(x @ w, y)  # noqa: E731
    return jax.value_and_grad(loss, argnums=(0, 1))(x, w, y)


def run(quick: bool = False, dtype: str = "float32") -> list[dict]:
    """One row per operation: kernel counts of jsoftmax and of ``jax.nn``/``optax``."""
    shape = QUICK_SHAPE if quick else SHAPE
    x = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    labels = jax.ShapeDtypeStruct(shape[:1], jnp.int32)
    rows = []
    for name, ours, base in [
        ("softmax", jsoftmax.softmax, jax.nn.softmax),
        ("log_softmax", jsoftmax.log_softmax, jax.nn.log_softmax),
    ]:
        rows.append(_row(f"{name} forward", list(shape), dtype, ours, base, "jax.nn", x))
        rows.append(_row(f"{name} vjp", list(shape), dtype, _vjp(ours), _vjp(base), "jax.nn", x, x))
        rows.append(
            _row(
                f"{name} value_and_grad",
                list(shape),
                dtype,
                _weighted_sum_grad(ours),
                _weighted_sum_grad(base),
                "jax.nn",
                x,
                x,
            )
        )
    rows.append(
        _row(
            "cross_entropy value_and_grad(mean loss)",
            list(shape),
            dtype,
            jax.value_and_grad(_ce),
            jax.value_and_grad(_optax_ce),
            "optax",
            x,
            labels,
        )
    )
    cfg = LINEAR_QUICK if quick else LINEAR
    n, d, v = cfg["n"], cfg["d"], cfg["v"]
    abstract = (
        jax.ShapeDtypeStruct((n, d), jnp.dtype(dtype)),
        jax.ShapeDtypeStruct((d, v), jnp.dtype(dtype)),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    rows.append(
        _row(
            "linear_cross_entropy value_and_grad(x, w)",
            f"N={n} D={d} V={v}",
            dtype,
            _linear,
            _naive_linear,
            "naive jax (x @ w, optax cross-entropy)",
            *abstract,
        )
    )
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv[1:]):
        print(json.dumps(r))
