"""Run the benchmark suites, print a table, write JSON, Markdown and a PNG chart.

The files go to ``runs/bench/`` unless ``--out`` names another folder. The committed results
that BENCHMARKS.md shows live in ``benchmarks/``; a run writes there only when asked to with
``--out benchmarks``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import jax

#: Where ``jsoftmax bench`` writes without ``--out``: not the committed ``benchmarks/``.
DEFAULT_OUT = Path("runs") / "bench"


def _core(quick: bool, dtype: str) -> list[dict]:
    from jsoftmax.bench import core

    return core.run(quick=quick, dtype=dtype)


def _bandwidth(quick: bool, dtype: str) -> list[dict]:
    from jsoftmax.bench import core

    return core.bandwidth(quick=quick, dtype=dtype)


def _losses(quick: bool, dtype: str) -> list[dict]:
    from jsoftmax.bench import losses

    return losses.run(quick=quick, dtype=dtype)


def _linear_xent(quick: bool, dtype: str) -> list[dict]:  # float32 only
    from jsoftmax.bench import linear_xent

    return linear_xent.run(quick=quick)


def _linear_xent_accumulation(quick: bool, dtype: str) -> list[dict]:  # float32 only
    from jsoftmax.bench import linear_xent

    return linear_xent.accumulation(quick=quick)


def _linear_xent_processes(quick: bool, dtype: str) -> list[dict]:  # float32, CPU only
    from jsoftmax.bench import linear_xent

    return linear_xent.alternate(quick=quick)


def _train_step(quick: bool, dtype: str) -> list[dict]:  # float32 only
    from jsoftmax.bench import train_step

    return train_step.run(quick=quick)


def _sparse(quick: bool, dtype: str) -> list[dict]:  # its PyTorch rows: float32 only
    from jsoftmax.bench import sparse

    return sparse.run(quick=quick, dtype=dtype)


def _fusion(quick: bool, dtype: str) -> list[dict]:  # compiled only, never run
    from jsoftmax.bench import fusion

    return fusion.run(quick=quick, dtype=dtype)


def _sharded(quick: bool, dtype: str) -> list[dict]:  # float32, 8 (faked) devices
    from jsoftmax.bench import sharded

    return sharded.run(quick=quick)


def _torch(quick: bool, dtype: str) -> list[dict]:  # float32 only
    from jsoftmax.bench import core

    return core.run_torch(quick=quick)


#: Each suite's rows for ``(quick, dtype)``; the modules are imported only when run.
SUITES: dict[str, Callable[[bool, str], list[dict]]] = {
    "core": _core,
    "bandwidth": _bandwidth,
    "losses": _losses,
    "linear_xent": _linear_xent,
    "linear_xent_processes": _linear_xent_processes,
    "linear_xent_accumulation": _linear_xent_accumulation,
    "train_step": _train_step,
    "sparse": _sparse,
    "fusion": _fusion,
    "sharded": _sharded,
    "torch": _torch,
}


def environment() -> dict:
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


# ------------------------------------------------------------------------------------- tables
# Each kind of row has its own columns; a table starts a new header where the kind changes.

COLUMNS = {
    "comparison": (
        "jsoftmax (ms)",
        "baseline (ms)",
        "ratio (jsoftmax / baseline)",
        "jsoftmax temp (MiB)",
        "baseline temp (MiB)",
    ),
    "bandwidth": (
        "time (ms)",
        "achieved (GB/s)",
        "fraction of copy",
        "copy (GB/s)",
        "copy measured on",
    ),
    "torch": ("torch (ms)", "torch version"),
    "fusion": ("jsoftmax kernels", "baseline kernels", "kernels (jsoftmax; baseline)"),
    "skipped": ("skipped because",),
    "other": ("figures (JSON)",),
}
WHERE = ("suite", "operation", "shape", "dtype")


def _kind(row: dict) -> str:
    if "skipped" in row:
        return "skipped"
    if "ratio" in row:
        return "comparison"
    return row["suite"] if row["suite"] in ("bandwidth", "torch", "fusion") else "other"


def _num(value, fmt: str = ".3f") -> str:
    return "" if value is None else format(value, fmt)


def _mib(n) -> str:
    return _num(None if n is None else n / 2**20, ".1f")


def _figures(row: dict) -> tuple[str, ...]:
    kind = _kind(row)
    if kind == "comparison":
        if row["ratio"] is None:  # compiled only: temp memory, no time
            temp = row["jsoftmax_temp_bytes"] / max(row["baseline_temp_bytes"], 1)
            ratio = f"temp {temp:.4f} of baseline"
        else:
            ratio = f"{row['ratio']:.2f}"
        return (
            _num(row["jsoftmax_ms"]),
            f"{_num(row['baseline_ms'])} ({row['baseline']})".lstrip(),
            ratio,
            _mib(row.get("jsoftmax_temp_bytes")),
            _mib(row.get("baseline_temp_bytes")),
        )
    if kind == "bandwidth":
        return (
            _num(row["ms"]),
            _num(row["gb_per_s"], ".1f"),
            _num(row["fraction_of_copy"], ".2f"),
            _num(row["copy_gb_per_s"], ".1f"),
            row["copy_measured_on"],
        )
    if kind == "torch":
        return (_num(row["torch_ms"]), row["torch_version"])
    if kind == "fusion":
        listed = f"{', '.join(row['jsoftmax_list'])}; {', '.join(row['baseline_list'])}"
        base = f"{row['baseline_kernels']} ({row['baseline']})"
        return (str(row["jsoftmax_kernels"]), base, listed)
    if kind == "skipped":
        return (row["skipped"],)
    return (json.dumps({k: v for k, v in row.items() if k not in ("suite", "op", "shape")}),)


def _cells(row: dict) -> tuple[str, ...]:
    shape = row.get("shape", "")
    shape = shape if isinstance(shape, str) else "×".join(str(s) for s in shape)
    return (row["suite"], row.get("op", ""), shape, row.get("dtype", ""), *_figures(row))


def _blocks(rows: list[dict]) -> list[tuple[tuple[str, ...], list[tuple[str, ...]]]]:
    """Runs of rows of one kind: ``(header, cells of each row)``."""
    blocks: list[tuple[str, list]] = []
    for row in rows:
        if not blocks or blocks[-1][0] != _kind(row):
            blocks.append((_kind(row), []))
        blocks[-1][1].append(_cells(row))
    return [(WHERE + COLUMNS[kind], cells) for kind, cells in blocks]


def text_table(rows: list[dict]) -> str:
    """The console table: aligned columns under a header with units, one per kind of row."""
    lines = []
    for header, cells in _blocks(rows):
        widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
        for i, line in enumerate([header, *cells]):
            lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows: list[dict], env: dict, quick: bool = False) -> str:
    lines = [
        f"Measured {env['date']} with jax {env['jax']} on {env['backend']} "
        f"({env['device']}, {env['cpu_count']} CPU cores). Medians of interleaved repetitions "
        "after warm-up, each call synchronised with `block_until_ready()`; ratio = jsoftmax / "
        "baseline (below 1 is faster); temp = compiled temp memory from `memory_analysis()`.",
    ]
    if env["backend"] != "cpu":
        from jsoftmax.bench._timing import ACCELERATOR_CALLS

        lines[0] += (
            f" On {env['backend']} each timed sample is the mean of {ACCELERATOR_CALLS} "
            "back-to-back calls synchronised once (one call would time Python's dispatch)."
        )
    if quick:
        lines.append(
            "\n**Quick run** (`--quick`: tiny shapes, a smoke test): not comparable with the "
            "figures of a full run, the copy bandwidth least of all (a small array stays in "
            "cache)."
        )
    for header, cells in _blocks(rows):
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path, quick: bool = False) -> bool:
    """A bar chart of the time ratios, with a colour key; ``False`` (no file) if there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ratio_rows = [r for r in rows if r.get("ratio") is not None]
    if not ratio_rows:
        return False
    labels = [
        f"{r['suite']}: {r['op']}\n{_cells(r)[2]} vs {r['baseline'].split(' (')[0]}"
        for r in ratio_rows
    ]
    fig, ax = plt.subplots(figsize=(11, 0.4 * len(labels) + 2), layout="constrained")
    faster, slower = "tab:green", "tab:red"
    colors = [faster if r["ratio"] <= 1.0 else slower for r in ratio_rows]
    ax.barh(range(len(labels)), [r["ratio"] for r in ratio_rows], color=colors)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio jsoftmax / baseline (below 1 is faster)")
    run = "quick run, tiny shapes" if quick else "full run"
    ax.set_title(f"jsoftmax vs the baseline named in each row ({jax.default_backend()}, {run})")
    fig.legend(  # below the axes, where it hides no bar
        handles=[
            Patch(color=faster, label="jsoftmax faster or equal (ratio ≤ 1)"),
            Patch(color=slower, label="jsoftmax slower (ratio > 1)"),
            Line2D([], [], color="black", lw=1, label="same time (ratio = 1)"),
        ],
        loc="outside lower center",
        ncols=3,
        fontsize=8,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jsoftmax bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated suites")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for the result files (default {DEFAULT_OUT}; the committed results are "
        "in benchmarks/, overwritten only by --out benchmarks)",
    )
    args = parser.parse_args(argv)
    suites = [s for s in args.suites.split(",") if s]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suites {unknown}; choose from {list(SUITES)}")
    env = environment()
    print(f"jax {env['jax']} on {env['backend']}: {jax.devices()}", flush=True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (f"results-{env['backend']}-{args.dtype}" + ("-quick" if args.quick else ""))
    rows: list[dict] = []
    for suite in suites:
        print(f"\n== {suite}", flush=True)
        suite_rows = SUITES[suite](args.quick, args.dtype)
        print(text_table(suite_rows), flush=True)
        rows += suite_rows
        # written after every suite, so a run stopped part-way keeps the suites it finished
        result = {"environment": env, "quick": args.quick, "suites": suites, "rows": rows}
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
        stem.with_suffix(".md").write_text(markdown(rows, env, args.quick))
    png = ", .png" if chart(rows, stem.with_suffix(".png"), args.quick) else ""
    print(f"\nwrote {stem}.json, .md{png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
