"""Shared test setup: one intra-op thread per pytest worker, so ``pytest -n 2`` uses the two cores without
oversubscribing them."""
import os

import torch

torch.set_num_threads(int(os.environ.get('PLUGATTN_TEST_THREADS', '1')))
