"""The ``sharded`` benchmark suite (jsoftmax/bench/sharded.py): its quick run on 8 faked devices.

Times are not checked (8 faked devices share this machine's cores); the per-device FLOPs from
the compiled cost analysis are: the data x vocabulary-parallel loss does 1/8 of the
single-device work on each device of a (2, 4) mesh, the tokens replicated over "data" 1/4.
"""

from __future__ import annotations

import jsoftmax.bench.__main__ as bench


def test_sharded_suite_is_registered_and_reports_an_eighth_of_the_flops():
    rows = bench.SUITES["sharded"](True, "float32")
    assert {row["baseline"] for row in rows} == {"xla_plain", "xla_chunked", "vocab_only"}
    for row in rows:
        assert row["devices"] == 8 and row["mesh"] == {"data": 2, "model": 4}
        assert row["flops_fraction"] <= 1.1 / 8, row
        assert row["jsoftmax_ms"] > 0 and row["jsoftmax_temp_bytes"] > 0
    (vocab_only,) = [row for row in rows if row["baseline"] == "vocab_only"]
    assert 0.9 / 4 <= vocab_only["baseline_flops_fraction"] <= 1.1 / 4, vocab_only
