"""The jsoftmax benchmark harness: ``jsoftmax bench`` / ``python -m jsoftmax.bench``.

Each suite returns a list of result rows, every one built by
:func:`jsoftmax.bench._timing.result_row`: rows that compare two implementations
(:func:`~jsoftmax.bench._timing.comparison_row`) carry ``jsoftmax_ms``, ``baseline_ms``,
``ratio`` (jsoftmax / baseline; below 1 is faster) and compiled temp memory of both; a
measurement that could not be taken (PyTorch not installed) is a
:func:`~jsoftmax.bench._timing.skipped_row` that says why. The suites call jsoftmax's public
functions only. Results go to ``runs/bench/`` unless ``--out`` says otherwise.
"""
