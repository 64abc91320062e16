"""Shared test settings of crystalflow-cli: one torch thread, the small network of the unit tests."""

import pytest
import torch

#: a network small enough for unit tests (a few thousand parameters)
SMALL = dict(hidden=32, num_layers=2, time_dim=16, num_freqs=8, num_millers=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than two on a busy 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
