"""Worked numbers from PyTorch for tests/test_loss.py (not a test module; needs only torch).

Run it in an environment with torch (``python tests/torch_oracle.py``); it prints the
``TORCH_CASES`` literal that tests/test_loss.py keeps as expected values. torch is imported inside
the functions only, so importing this file (pytest's doctest collection does) needs no torch.

Every case is computed in float64 from the fixed inputs below: the loss for the given keyword
arguments of ``torch.nn.functional.cross_entropy`` / ``nll_loss`` and its gradient with respect
to the logits (and to probability labels).
"""

from __future__ import annotations

# Fixed small inputs: 5 examples, 4 classes.
LOGITS = [
    [1.5, -0.25, 0.75, -2.0],
    [0.0, 2.25, -1.0, 0.5],
    [-0.5, 0.125, 3.0, 1.0],
    [2.0, 2.0, -3.0, 0.25],
    [-1.25, 0.5, 0.0, 1.75],
]
LABELS = [0, 1, 3, 3, 2]
LABELS_WITH_IGNORED = [0, -100, 3, 1, -100]
PROBS = [
    [0.7, 0.1, 0.1, 0.1],
    [0.0, 1.0, 0.0, 0.0],
    [0.25, 0.25, 0.25, 0.25],
    [0.5, 0.0, 0.5, 0.0],
    [0.1, 0.2, 0.3, 0.4],
]
WEIGHT = [0.5, 2.0, 1.0, 3.0]

# (name, function, keyword arguments). "labels" picks the labels input; "weight" is a flag.
CASES = [
    ("int_mean", "cross_entropy", {"labels": "int", "reduction": "mean"}),
    ("int_sum", "cross_entropy", {"labels": "int", "reduction": "sum"}),
    ("int_none", "cross_entropy", {"labels": "int", "reduction": "none"}),
    ("int_weight_mean", "cross_entropy", {"labels": "int", "weight": True}),
    ("int_smooth_mean", "cross_entropy", {"labels": "int", "label_smoothing": 0.2}),
    (
        "int_weight_ignore_smooth_mean",
        "cross_entropy",
        {"labels": "ignored", "weight": True, "ignore_index": -100, "label_smoothing": 0.3},
    ),
    (
        "int_weight_ignore_smooth_none",
        "cross_entropy",
        {
            "labels": "ignored",
            "weight": True,
            "ignore_index": -100,
            "label_smoothing": 0.3,
            "reduction": "none",
        },
    ),
    (
        "int_weight_smooth_sum",
        "cross_entropy",
        {"labels": "int", "weight": True, "label_smoothing": 0.1, "reduction": "sum"},
    ),
    ("int_ignore_mean", "cross_entropy", {"labels": "ignored", "ignore_index": -100}),
    ("prob_mean", "cross_entropy", {"labels": "prob"}),
    (
        "prob_weight_smooth_mean",
        "cross_entropy",
        {"labels": "prob", "weight": True, "label_smoothing": 0.25},
    ),
    (
        "prob_weight_smooth_none",
        "cross_entropy",
        {"labels": "prob", "weight": True, "label_smoothing": 0.25, "reduction": "none"},
    ),
    (
        "prob_smooth_sum",
        "cross_entropy",
        {"labels": "prob", "label_smoothing": 1.0, "reduction": "sum"},
    ),
    ("nll_mean", "nll_loss", {"labels": "int"}),
    (
        "nll_weight_ignore_mean",
        "nll_loss",
        {"labels": "ignored", "weight": True, "ignore_index": -100},
    ),
    ("nll_weight_none", "nll_loss", {"labels": "int", "weight": True, "reduction": "none"}),
]


def torch_case(fn: str, options: dict, logits=LOGITS) -> dict:
    """Loss and gradients from torch in float64 for one case (imports torch lazily)."""
    import torch
    import torch.nn.functional as F

    options = dict(options)
    kind = options.pop("labels")
    if options.pop("weight", False):
        options["weight"] = torch.tensor(WEIGHT, dtype=torch.float64)
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    if kind == "prob":
        y = torch.tensor(PROBS, dtype=torch.float64, requires_grad=True)
    else:
        y = torch.tensor(LABELS if kind == "int" else LABELS_WITH_IGNORED)
    if fn == "cross_entropy":
        loss = F.cross_entropy(z, y, **options)
    else:
        loss = F.nll_loss(torch.log_softmax(z, -1), y, **options)
    # the gradient of the sum of the outputs, so "none" gets one too
    loss.sum().backward()
    out = {"loss": loss.detach().tolist(), "dlogits": z.grad.tolist()}
    if kind == "prob":
        out["dlabels"] = y.grad.tolist()
    return out


def _num(v) -> str:
    return repr(float(f"{v:.13g}"))


def _value(v, indent: str) -> str:
    """A float, or (rows of) floats four to a line, as Python source within 100 columns."""
    if not isinstance(v, list):
        return _num(v)
    if isinstance(v[0], list):
        rows = "".join(f"{indent}    {_value(r, indent + '    ')},\n" for r in v)
        return "[\n" + rows + indent + "]"
    chunks = [", ".join(_num(x) for x in v[i : i + 4]) for i in range(0, len(v), 4)]
    if len(chunks) == 1:
        return f"[{chunks[0]}]"
    return "[\n" + "".join(f"{indent}    {c},\n" for c in chunks) + indent + "]"


def _options(options: dict, indent: str) -> str:
    items = [f'"{k}": ' + (f'"{v}"' if isinstance(v, str) else repr(v)) for k, v in options.items()]
    one_line = "{" + ", ".join(items) + "}"
    if len(indent) + len(one_line) < 98:
        return one_line
    return "{\n" + "".join(f"{indent}    {i},\n" for i in items) + indent + "}"


def main() -> None:
    import torch

    lines = [
        f"# generated by tests/torch_oracle.py with torch {torch.__version__} (float64)",
        "# fmt: off",
        "TORCH_CASES = {",
    ]
    for name, fn, options in CASES:
        lines += [f'    "{name}": (', f'        "{fn}",', f"        {_options(options, ' ' * 8)},"]
        lines.append("        {")
        for key, value in torch_case(fn, options).items():
            lines.append(f'            "{key}": {_value(value, " " * 12)},')
        lines += ["        },", "    ),"]
    lines += ["}", "# fmt: on"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
