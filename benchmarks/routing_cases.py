r"""The three routers the benchmarks compare, as fwd+bwd closures over shared inputs.

Each closure runs one training step of Exact-k routing on logits ``(T, n)``: the routing weights
(``probmoe_fast``: :math:`(z + m - \mathrm{sg}(m)) \odot \mathrm{softmax}(\theta)` from one DP
table; ``topk``: the softmax top-k weights; ``paper``: :mod:`paper_baseline`), then the backward of
a fixed random linear loss of the weights.
"""

from __future__ import annotations

import weakref

import torch

import probmoe_fast as pf
from paper_baseline import paper_route_weights

__all__ = ["SIZES", "make_inputs", "ROUTERS", "step", "saved_bytes"]

#: (T, n, k) of the report.
SIZES = [(4096, 64, 8), (4096, 60, 4)]


def make_inputs(T: int, n: int, seed: int = 0, device="cpu", dtype=torch.float32):
    """Standard normal ``(T, n)`` logits (leaf, requiring grad) and cotangent, and the generator
    (on ``device``) that drew them, for the samplers to go on with."""
    g = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(T, n, generator=g, device=device, dtype=dtype).requires_grad_()
    cotangent = torch.randn(T, n, generator=g, device=device, dtype=dtype)
    return logits, cotangent, g


def _probmoe_weights(logits, k, generator):
    z, m = pf.sample_and_marginals(logits, k, k, generator=generator)
    return (z + m - m.detach()) * torch.softmax(logits, dim=-1)


def _topk_loss(logits, k, cotangent, generator):
    probs = torch.softmax(logits, dim=-1)
    values, indices = torch.topk(probs, k, dim=-1)
    return (values * cotangent.gather(-1, indices)).sum()


def _dense_loss(weights_fn):
    def loss(logits, k, cotangent, generator):
        return (weights_fn(logits, k, generator) * cotangent).sum()
    return loss


ROUTERS = {
    "probmoe_fast": _dense_loss(_probmoe_weights),
    "softmax_topk": _topk_loss,
    "paper_style": _dense_loss(paper_route_weights),
}


def step(name, logits, k, cotangent, generator):
    """One forward + backward of router ``name``."""
    logits.grad = None
    ROUTERS[name](logits, k, cotangent, generator).backward()


class _Box:
    def __init__(self, tensor):
        self.tensor = tensor


def saved_bytes(name, logits, k, cotangent, generator) -> int:
    """Bytes of distinct storages the autograd graph holds for backward after the forward."""
    boxes = []

    def pack(t):
        box = _Box(t)
        boxes.append(weakref.ref(box))
        return box
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        loss = ROUTERS[name](logits, k, cotangent, generator)
    held = {}
    for ref in boxes:
        box = ref()
        if box is not None:
            storage = box.tensor.untyped_storage()
            held[storage.data_ptr()] = storage.nbytes()
    del loss
    return sum(held.values())
