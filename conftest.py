"""Repository-wide pytest setup: strict JAX numerics and stable doctest printing."""

import jax
import numpy as np
import pytest

# Implicit rank promotion hides shape bugs; the whole suite runs with it forbidden.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _doctest_print_precision(doctest_namespace):
    """Docstring examples print 4 significant decimals so they read the same on every backend."""
    with np.printoptions(precision=4, suppress=True, floatmode="maxprec"):
        yield
