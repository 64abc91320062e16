"""Shared test settings of flowcore."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny matmuls: one thread is several times faster than two on a loaded 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
