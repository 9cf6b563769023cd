"""Run every benchmark suite, print a table, write JSON, Markdown and a PNG chart."""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
from pathlib import Path

import jax

SUITES = ["core", "bandwidth", "losses", "linear_xent", "train_step", "torch"]


def _suite_rows(name: str, quick: bool, dtype: str) -> list[dict]:
    if name == "core":
        from jsoftmax.bench import core

        return core.run(quick=quick, dtype=dtype)
    if name == "bandwidth":
        from jsoftmax.bench import core

        return core.bandwidth(quick=quick, dtype=dtype)
    if name == "torch":
        from jsoftmax.bench import core

        return core.run_torch(quick=quick)
    module = importlib.import_module(f"jsoftmax.bench.{name}")
    if dtype != "float32" and "dtype" in module.run.__code__.co_varnames:
        return module.run(quick=quick, dtype=dtype)
    return module.run(quick=quick)


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


def _fmt_bytes(n) -> str:
    return "" if n is None else f"{n / 2**20:.1f} MiB"


def _ms(value) -> str:
    return "" if value is None else f"{value:.3f}"


def _fmt(row: dict) -> tuple[str, ...]:
    shape = row.get("shape", [])
    shape = shape if isinstance(shape, str) else "×".join(str(s) for s in shape)
    if "ratio" in row and row["ratio"] is None:  # a memory-only row
        return (
            row["suite"],
            row["op"],
            shape,
            row["dtype"],
            "",
            f"({row['baseline']})",
            f"temp {row['jsoftmax_temp_bytes'] / row['baseline_temp_bytes']:.4f} of baseline",
            _fmt_bytes(row.get("jsoftmax_temp_bytes")),
            _fmt_bytes(row.get("baseline_temp_bytes")),
        )
    if "ratio" in row:
        return (
            row["suite"],
            row["op"],
            shape,
            row["dtype"],
            _ms(row["jsoftmax_ms"]),
            f"{_ms(row['baseline_ms'])} ({row['baseline']})",
            f"{row['ratio']:.2f}",
            _fmt_bytes(row.get("jsoftmax_temp_bytes")),
            _fmt_bytes(row.get("baseline_temp_bytes")),
        )
    if row["suite"] == "bandwidth":
        return (
            row["suite"],
            row["op"],
            shape,
            row["dtype"],
            f"{row['ms']:.3f}",
            f"{row['gb_per_s']:.1f} GB/s",
            f"{row['fraction_of_copy']:.2f} of copy",
            f"copy {row['copy_gb_per_s']:.1f} GB/s",
            "",
        )
    if row["suite"] == "torch":
        return (row["suite"], row["op"], shape, row["dtype"], "", f"{row['torch_ms']:.3f}")
    return (row["suite"], row.get("op", ""), shape, row.get("dtype", ""), json.dumps(row))


HEADER = (
    "suite",
    "operation",
    "shape",
    "dtype",
    "jsoftmax ms",
    "baseline ms",
    "ratio",
    "jsoftmax temp",
    "baseline temp",
)


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        f"Measured {env['date']} with jax {env['jax']} on {env['backend']} "
        f"({env['device']}, {env['cpu_count']} CPU cores). Medians of interleaved repetitions "
        "after warm-up, each call synchronised with `block_until_ready()`; ratio = jsoftmax / "
        "baseline (below 1 is faster); temp = compiled temp memory from `memory_analysis()`.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for row in rows:
        cells = list(_fmt(row)) + [""] * (len(HEADER) - len(_fmt(row)))
        lines.append("| " + " | ".join(cells[: len(HEADER)]) + " |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio_rows = [r for r in rows if r.get("ratio") is not None]
    if not ratio_rows:
        return
    labels = [
        f"{r['suite']}: {r['op']}\n{_fmt(r)[2]} vs {r['baseline'].split(' (')[0]}"
        for r in ratio_rows
    ]
    fig, ax = plt.subplots(figsize=(11, 0.4 * len(labels) + 1.5))
    colors = ["tab:green" if r["ratio"] <= 1.0 else "tab:red" for r in ratio_rows]
    ax.barh(range(len(labels)), [r["ratio"] for r in ratio_rows], color=colors)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time ratio jsoftmax / baseline (below 1 is faster)")
    ax.set_title(f"jsoftmax vs jax.nn / optax / naive ({jax.default_backend()})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jsoftmax bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated suites")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--out", default="benchmarks", help="folder for the result files")
    args = parser.parse_args(argv)
    suites = [s for s in args.suites.split(",") if s]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suites {unknown}; choose from {SUITES}")
    env = environment()
    print(f"jax {env['jax']} on {env['backend']}: {jax.devices()}", flush=True)
    rows: list[dict] = []
    for suite in suites:
        print(f"== {suite}", flush=True)
        suite_rows = _suite_rows(suite, args.quick, args.dtype)
        for row in suite_rows:
            print("  " + " | ".join(_fmt(row)), flush=True)
        rows += suite_rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"results-{env['backend']}-{args.dtype}" + ("-quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    (out / f"{stem}.md").write_text(markdown(rows, env))
    chart(rows, out / f"{stem}.png")
    print(f"wrote {out / stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
