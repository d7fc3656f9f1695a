"""Shared test setup: verify the graph after every pass, seed everything."""
import os

os.environ.setdefault("GRAPHC_VERIFY", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
