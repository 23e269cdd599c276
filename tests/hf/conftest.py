"""tests/hf need the optional extra ``hf`` (transformers 5.x); the ``test`` extra pulls it, so a
missing transformers fails here loudly instead of skipping the folder.

The tiny models run single-threaded: on a shared 2-core machine, idle OpenMP threads made one
training step 7x slower (measured: 5 steps 2.2 s with the default threads, 0.31 s with one).
"""

import pytest
import torch

import transformers  # noqa: F401  (the hf extra; fails with ModuleNotFoundError if absent)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
