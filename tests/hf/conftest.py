"""tests/hf need the optional extra ``hf`` (transformers 5.x), which CI installs.

The tiny models run single-threaded: on a shared 2-core machine, idle OpenMP threads made one
training step 7x slower (measured: 5 steps 2.2 s with the default threads, 0.31 s with one).
"""

import pytest
import torch

pytest.importorskip("transformers", minversion="5", reason="the hf extra is not installed")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
