import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def toy_model():
    from toymodel import ToyModel

    return ToyModel()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
