r"""The Triton routing kernels as ``torch.library`` custom ops (``probmoe::route_fwd``,
``probmoe::route_bwd``) with fake (meta) implementations and autograd, so ``torch.compile``
traces them as single nodes.

``route_fwd(theta, size_logits, k_min, k_max, seed, draw) -> (log_z, m, p, indices, sizes)``

=================  ==========================  =============================================
name               shape / dtype               meaning
=================  ==========================  =============================================
``theta``          ``(T, n)`` float32          logits, :math:`-\infty` = masked
``size_logits``    ``(T, L)`` float32 / None   :math:`\phi`, :math:`L = k_{\max}-k_{\min}+1`
``seed``           ``(1,)`` int64              Philox seed (drawn from the caller's generator)
``log_z``          ``(T,)`` float32            :math:`\log Z`
``m``              ``(T, n)`` float32          marginals
``p``              ``(T, L)`` float32          :math:`P(|S| = s)`
``indices``        ``(T, k_max)`` int64        the sample, largest logit first (``draw``;
                                               else ``(T, 0)``); slots past ``sizes`` are 0
``sizes``          ``(T,)`` int64              the sample's size (``draw``; else ``(0,)``)
=================  ==========================  =============================================

``log_z``, ``m`` and ``p`` are differentiable in ``theta`` and ``size_logits``: the backward
op returns the exact vector–Jacobian product (:math:`\mathrm{Cov}(z)\,v` plus the size and
:math:`\log Z` terms) from recomputed tables; only the inputs are kept between the two. Under
``create_graph`` (double backward) the product is taken through the torch path instead, whose
backward is itself differentiable, so the outputs stay twice differentiable.

The host sorts each row (descending) and forms the normalised size weights
:math:`\lambda_s - C` in float64 (see :mod:`probmoe_fast.ops.triton_kernels`), so the large
offsets :math:`o_s` never pass through float32.
"""

import math
from typing import Optional

import torch
import triton

from .._core.partition import log_partition, size_probs
from .esp_function import esp_forward
from .triton_kernels import route_bwd_kernel, route_fwd_kernel

__all__ = ["route_fwd", "route_bwd", "draw_seed"]


def draw_seed(generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """A ``(1,)`` int64 Philox seed on ``device`` from ``generator`` (or the device's default
    generator); no host synchronisation."""
    where = device if generator is None else generator.device
    seed = torch.randint(0, 2 ** 62, (1,), generator=generator, device=where)
    return seed.to(device)


#: No software pipelining: a scratch row read at step i was written at step i - 1 behind a
#: barrier, and a load hoisted into an earlier iteration would read it stale.
_LAUNCH = {"num_warps": 4, "num_stages": 1}


def _launch_shape(T: int, k_max: int, device: torch.device) -> tuple[int, int, int, int]:
    """``(KP, BLOCK_T, n_blocks, grid)``: levels padded to a power of two, tokens per program,
    blocks, and the (capped, persistent) number of programs."""
    KP = max(2, triton.next_power_of_2(k_max + 1))
    if device.type == "cuda":
        BLOCK_T = max(4, min(64, 1024 // KP))
        cap = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the interpreter: numpy over the whole tile, so few and large blocks
        BLOCK_T = max(4, min(1024, triton.next_power_of_2(T)))
        cap = 16
    n_blocks = max(1, triton.cdiv(T, BLOCK_T))
    return KP, BLOCK_T, n_blocks, min(n_blocks, cap)


def _prepare(theta, size_logits, k_min, k_max):
    r"""``(sorted theta, perm, lambda - C (float32), C (float64))``."""
    sorted_theta, perm = torch.sort(theta, dim=-1, descending=True, stable=True)
    top = sorted_theta[:, :k_max].double()
    offsets = torch.cat([top.new_zeros(top.shape[0], 1), torch.cumsum(top, dim=-1)], dim=-1)
    lam = offsets[:, k_min:k_max + 1]
    if size_logits is not None:
        lam = lam + size_logits.double()
    C = lam.amax(dim=-1)
    C = torch.where(C > -math.inf, C, torch.zeros_like(C))
    return sorted_theta.contiguous(), perm.contiguous(), (lam - C[:, None]).float().contiguous(), C


def _scratch(grid, rows, BLOCK_T, KP, like):
    return torch.empty(grid * rows * BLOCK_T * KP, dtype=torch.float64, device=like.device)


@torch.library.custom_op("probmoe::route_fwd", mutates_args=())
def route_fwd(theta: torch.Tensor, size_logits: Optional[torch.Tensor], k_min: int, k_max: int,
              seed: torch.Tensor, draw: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    T, n = theta.shape
    L = k_max - k_min + 1
    sorted_theta, perm, lam, C = _prepare(theta, size_logits, k_min, k_max)
    KP, BLOCK_T, n_blocks, grid = _launch_shape(T, k_max, theta.device)
    zrel = theta.new_empty(T, dtype=torch.float64)
    m = theta.new_zeros(T, n)
    p = theta.new_zeros(T, L)
    indices = torch.zeros(T, k_max if draw else 0, dtype=torch.long, device=theta.device)
    sizes = torch.zeros(T if draw else 0, dtype=torch.long, device=theta.device)
    if T > 0:
        route_fwd_kernel[(grid,)](
            sorted_theta, perm, lam, seed, zrel, m, p, indices, sizes,
            _scratch(grid, n + 1, BLOCK_T, KP, theta), _scratch(grid, 2, BLOCK_T, KP, theta),
            T, n, L, k_min, k_max, n_blocks, DRAW=draw, BLOCK_T=BLOCK_T, KP=KP, **_LAUNCH)
    log_z = (C + zrel).float()
    return log_z, m, p, indices, sizes


@route_fwd.register_fake
def _(theta, size_logits, k_min, k_max, seed, draw):
    T, n = theta.shape
    L = k_max - k_min + 1
    return (theta.new_empty(T), theta.new_empty(T, n), theta.new_empty(T, L),
            theta.new_empty(T, k_max if draw else 0, dtype=torch.long),
            theta.new_empty(T if draw else 0, dtype=torch.long))


@torch.library.custom_op("probmoe::route_bwd", mutates_args=())
def route_bwd(theta: torch.Tensor, size_logits: Optional[torch.Tensor], k_min: int, k_max: int,
              grad_m: torch.Tensor, grad_p: torch.Tensor, grad_log_z: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    T, n = theta.shape
    L = k_max - k_min + 1
    sorted_theta, perm, lam, _ = _prepare(theta, size_logits, k_min, k_max)
    KP, BLOCK_T, n_blocks, grid = _launch_shape(T, k_max, theta.device)
    grad_theta = theta.new_zeros(T, n)
    grad_lam = theta.new_zeros(T, L)
    if T > 0:
        route_bwd_kernel[(grid,)](
            sorted_theta, perm, lam, grad_m.contiguous(), grad_p.contiguous(),
            grad_log_z.contiguous(), grad_theta, grad_lam,
            _scratch(grid, n + 1, BLOCK_T, KP, theta), _scratch(grid, n + 1, BLOCK_T, KP, theta),
            _scratch(grid, 2, BLOCK_T, KP, theta), _scratch(grid, 2, BLOCK_T, KP, theta),
            T, n, L, k_min, n_blocks, BLOCK_T=BLOCK_T, KP=KP, **_LAUNCH)
    return grad_theta, grad_lam


@route_bwd.register_fake
def _(theta, size_logits, k_min, k_max, grad_m, grad_p, grad_log_z):
    T, n = theta.shape
    return theta.new_empty(T, n), theta.new_empty(T, k_max - k_min + 1)


def _setup_context(ctx, inputs, output):
    theta, size_logits, k_min, k_max, _seed, _draw = inputs
    ctx.save_for_backward(theta, size_logits)
    ctx.band = (k_min, k_max)


def _torch_vjp(theta, size_logits, k_min, k_max, grad_m, grad_p, grad_log_z):
    """The same product through the torch path, recorded for a further backward."""
    with torch.enable_grad():
        log_q, offset, shift, m, _ = esp_forward(theta, k_min, k_max, size_logits)
        outputs = (log_partition(log_q, shift, k_min, size_logits, offset), m,
                   size_probs(log_q, shift, k_min, size_logits, offset))
        inputs = (theta,) if size_logits is None else (theta, size_logits)
        grads = torch.autograd.grad(outputs, inputs, (grad_log_z, grad_m, grad_p),
                                    create_graph=True, allow_unused=True, materialize_grads=True)
    return grads[0], None if size_logits is None else grads[1]


def _backward(ctx, grad_log_z, grad_m, grad_p, _grad_indices, _grad_sizes):
    theta, size_logits = ctx.saved_tensors
    k_min, k_max = ctx.band
    T, n = theta.shape
    zeros = theta.new_zeros
    cotangents = (zeros(T, n) if grad_m is None else grad_m,
                  zeros(T, k_max - k_min + 1) if grad_p is None else grad_p,
                  zeros(T) if grad_log_z is None else grad_log_z)
    if torch.is_grad_enabled():
        grad_theta, grad_lam = _torch_vjp(theta, size_logits, k_min, k_max, *cotangents)
    else:
        grad_theta, grad_lam = route_bwd(theta, size_logits, k_min, k_max, *cotangents)
    return grad_theta, None if size_logits is None else grad_lam, None, None, None, None


route_fwd.register_autograd(_backward, setup_context=_setup_context)
