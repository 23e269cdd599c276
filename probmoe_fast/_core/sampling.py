r"""Exact subset sampling by backward sampling over the prefix table (the conditional-Bernoulli
draw of :cite:`chen1994weighted`, one inverse-CDF jump per member).

In table order, the largest position :math:`i^*` of a size-:math:`j` subset drawn from the first
:math:`b` experts has

.. math::

    P(i^* = i) = \frac{w_i\, E_{j-1}(i-1)}{E_j(b)}, \qquad i \le b,

and these numerators are exactly the increments of level :math:`j`'s cumulative sum, so
:math:`P(i^* \le i) = Q_j(i) / Q_j(b)` (the normaliser :math:`e^{R_j}` cancels). Given
:math:`i^*`, the rest is a size-:math:`(j-1)` subset of the first :math:`i^* - 1` experts. A draw
is therefore :math:`j` inverse-CDF steps: :math:`u \sim U(0, 1]`, :math:`i^*` = the first position
with :math:`Q_j(i) \ge u\, Q_j(b)`, found as the number of positions whose CDF is below
the target (no copy of a strided table level is needed for the count).

Why a zero-weight (masked) expert is never chosen: its increment is exactly 0, so the first
position reaching the target never sits on it unless the target is :math:`\le 0`; :math:`u > 0`
(``1 - rand``) and :math:`u\,Q_j(b) \le Q_j(b)` in floating point (:math:`u \le 1`), so the found
position is :math:`\le b` and has a positive increment.

=============  =========================  ==================================================
name           shape                      meaning
=============  =========================  ==================================================
``tables``     ``K+1`` × ``(n, T)``       prefix levels :math:`Q_0..Q_K`, position-major
``order``      ``(T, n)`` int64 or None   table position -> expert index (None: identity)
``sizes``      ``(R,)`` int64             subset size per draw, :math:`R = S\,T`
                                          (draw r uses row r mod T)
returns        ``(R, n)``                 0/1 masks in expert order, the tables' dtype
=============  =========================  ==================================================

Cost: :math:`O(R\,K n)` time after the :math:`O(TnK)` table, :math:`O(Rn)` memory;
``K`` Python-level steps. Randomness only from ``generator``.
"""

from __future__ import annotations

import torch

__all__ = ["sample_subsets", "inverse_cdf"]


def _uniform_open_closed(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform on (0, 1]: ``1 - U[0, 1)`` never returns 0."""
    return 1.0 - torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def inverse_cdf(cumulative: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r"""First index ``i`` with ``cumulative[r, i] >= u[r] * cumulative[r, -1]`` for ``u`` in
    (0, 1]; never an index whose increment is 0. ``cumulative`` ``(R, m)`` nondecreasing."""
    target = (u * cumulative[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cumulative, target).squeeze(-1)


def sample_subsets(tables: list[torch.Tensor], order: torch.Tensor | None, sizes: torch.Tensor,
                   generator: torch.Generator | None) -> torch.Tensor:
    r"""One exact subset per entry of ``sizes``; see the module docstring."""
    n, n_rows = tables[0].shape
    n_draws = sizes.shape[0]
    n_steps = len(tables) - 1
    same_size = n_draws == n_rows and bool((sizes == n_steps).all())
    if same_size:  # Exact-k, one draw per row: every draw reads the same level at each step
        source = None
    else:
        stacked = torch.stack(tables, dim=0)  # (K+1, n, T)
        source = torch.arange(n_draws, device=tables[0].device) % n_rows
    remaining = sizes.clone()
    bound = torch.full_like(sizes, n)  # the next member sits at a position < bound
    chosen = torch.zeros(n_draws, n, dtype=tables[0].dtype, device=tables[0].device)
    u = _uniform_open_closed((n_steps, n_draws), generator, tables[0])
    members = []  # same-size draws: one position per step, written at the end in one scatter
    for step in range(n_steps):
        # Each row reads its CDF up to position `bound` - 1; the first position whose CDF
        # reaches the target is the number of positions below it (the CDF is nondecreasing).
        last = (bound - 1).clamp(min=0)
        if source is None:
            level = tables[n_steps - step]  # (n, T): reduce over positions, vectorised over rows
            below = level < u[step] * level.gather(0, last.unsqueeze(0))
            # an int32 count is half the traffic of the default int64 one
            bound = below.sum(0, dtype=torch.int32).clamp_(max=n - 1).long()
            members.append(bound)
            continue
        active = remaining > 0
        if not bool(active.any()):
            break
        level = stacked[remaining.clamp(min=0), :, source]  # (R, n)
        below = level < (u[step] * level.gather(-1, last.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)
        position = below.sum(-1).clamp(max=n - 1)
        chosen.scatter_add_(-1, position.unsqueeze(-1), active.to(chosen.dtype).unsqueeze(-1))
        bound = torch.where(active, position, bound)
        remaining = remaining - active.long()
    if members:  # same-size draws: the members' experts straight into expert order
        positions = torch.stack(members, dim=-1)
        return chosen.scatter_(-1, positions if order is None else order.gather(-1, positions),
                               1.0)
    if order is None:  # tables in expert order
        return chosen
    return torch.zeros_like(chosen).scatter_(-1, order if source is None else order[source], chosen)
