"""The jsoftmax benchmark harness: ``jsoftmax bench`` / ``python -m jsoftmax.bench``.

Each suite module exposes ``run(quick=False) -> list[dict]``; rows that compare two
implementations carry ``jsoftmax_ms``, ``baseline_ms``, ``ratio`` (jsoftmax / baseline; below
1 is faster) and compiled temp memory of both.
"""
