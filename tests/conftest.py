"""Shared test setup: one intra-op thread per pytest worker, so ``pytest -n 2`` uses the two cores without
oversubscribing them, and a fresh torch.compile state after every test."""
import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get('PLUGATTN_TEST_THREADS', '1')))


@pytest.fixture(autouse=True)
def _fresh_compiler_state():
    """Each test starts from a fresh torch.compile state: graphs and guards that earlier tests in the same worker
    compiled would otherwise make later compilations recompile again and again (minutes instead of seconds)."""
    yield
    torch._dynamo.reset()
