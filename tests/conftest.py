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


@pytest.fixture
def run_two_processes():
    """``run(target, results)``: run ``target(rank, port, queue)`` in two spawned processes (``port``: a free local
    port for the gloo rendezvous), return the first ``results`` items they put on ``queue``, and check that both
    exited with 0."""
    import socket

    import torch.multiprocessing as mp

    def run(target, results: int) -> list:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        ctx = mp.get_context('spawn')
        queue = ctx.Queue()
        procs = [ctx.Process(target=target, args=(rank, port, queue)) for rank in range(2)]
        for p in procs:
            p.start()
        out = [queue.get(timeout=120) for _ in range(results)]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        return out

    return run
