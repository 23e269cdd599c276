r"""Exact subset sampling by backward sampling over prefix tables (the conditional-Bernoulli
draw of :cite:`chen1994weighted`, one inverse-CDF jump per member).

The largest position :math:`i^*` of a size-:math:`j` subset drawn from the first :math:`b`
positions of a table has

.. math::

    P(i^* = i) = \frac{w_i\, E_{j-1}(i-1)}{E_j(b)}, \qquad i \le b,

and these numerators are exactly the increments of level :math:`j`'s cumulative sum, so
:math:`P(i^* \le i) = Q_j(i) / Q_j(b)` (any normaliser of the level cancels). Given
:math:`i^*`, the rest is a size-:math:`(j-1)` subset of the first :math:`i^* - 1` positions. A draw
is therefore :math:`j` inverse-CDF steps: :math:`u \sim U(0, 1]`, :math:`i^*` = the first position
with :math:`Q_j(i) \ge u\, Q_j(b)`, found as the number of positions whose CDF is below
the target.

The fast path's tables are split (:mod:`probmoe_fast._core.split`): a draw of size :math:`j`
first draws its tail count :math:`a` from :math:`P(a \mid j) = H_{j,a}\tau_a / R_j`, then an
:math:`a`-subset of the tail (tail table, expert order) and a :math:`(j-a)`-subset of the top
block (top table, top order) by the steps above: the two factors of
:math:`e_j(w) = \sum_a e_{j-a}(w_{\mathrm{top}}) e_a(w_{\mathrm{tail}})`.

Why a zero-weight (masked) expert is never chosen: its increment is exactly 0, so the first
position reaching the target never sits on it unless the target is :math:`\le 0`; :math:`u > 0`
(``1 - rand``) and :math:`u\,Q_j(b) \le Q_j(b)` in floating point (:math:`u \le 1`), so the found
position is :math:`\le b` and has a positive increment. A count of probability 0 is never drawn
for the same reason, so every level read has :math:`Q_j(b) > 0`.

=============  ============================  ==============================================
name           shape                         meaning
=============  ============================  ==============================================
``table``      ``(m+1, K+1, T)``             a prefix table, position-major
``counts``     ``(R,)`` int64                subset size per draw (draw r uses row
                                             ``rows[r]``)
``u``          ``(K, R)``                    uniforms on (0, 1], one per step
returns        ``(R, c)`` int64, ``(R, c)``  positions and which are members,
               bool                          :math:`c = \max` ``counts``
=============  ============================  ==============================================

Cost: :math:`O(R\,K m)` time after the tables, :math:`O(Rm)` memory; at most ``K`` Python-level
steps per table (as many as the largest count). Randomness only from ``generator``.
"""

from __future__ import annotations

import torch

__all__ = ["uniform_open_closed", "inverse_cdf", "draw_members"]


def uniform_open_closed(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform on (0, 1]: ``1 - U[0, 1)`` never returns 0."""
    return 1.0 - torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


def inverse_cdf(cumulative: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r"""First index ``i`` with ``cumulative[r, i] >= u[r] * cumulative[r, -1]`` for ``u`` in
    (0, 1]; never an index whose increment is 0. ``cumulative`` ``(R, m)`` nondecreasing."""
    target = (u * cumulative[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cumulative, target).squeeze(-1)


def draw_members(table: torch.Tensor, counts: torch.Tensor, rows: torch.Tensor | None,
                 u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One exact ``counts[r]``-subset of the positions of ``table`` per draw; see the module
    docstring (``rows`` None: draw r uses row r). The levels are visited from the top down: a
    draw of count :math:`a` takes its members at levels :math:`a, a-1, \dots, 1`, so every
    step reads one level slice for all draws (no per-draw gather of the table), and a draw's
    member at level :math:`j` uses ``u[j - 1]``."""
    n_pos = table.shape[0] - 1
    top = int(counts.max()) if counts.numel() else 0
    bound = torch.full_like(counts, n_pos)  # the next member sits at a position < bound
    positions, members = [], []
    work = table.new_empty(n_pos, counts.shape[0])
    for level in range(top, 0, -1):
        active = counts >= level
        cdf = table[1:, level] if rows is None else table[1:, level][:, rows]      # (m, R)
        last = (bound - 1).clamp(min=0)
        # the first position whose CDF reaches the target is the number of positions below it
        # (the CDF is nondecreasing, so none at or past `bound` is counted); t - c > 0 exactly
        # when c < t (IEEE subtraction), formed as floats: 1.0 below the target, else 0.0
        target = u[level - 1] * cdf.gather(0, last.unsqueeze(0))
        below = torch.sub(target, cdf, out=work).gt_(0)
        found = below.sum(0).clamp_(max=n_pos - 1).long()
        positions.append(found)
        members.append(active)
        bound = torch.where(active, found, bound)
    if not positions:
        empty = counts.new_zeros(counts.shape[0], 0)
        return empty, empty.bool()
    return torch.stack(positions, -1), torch.stack(members, -1)
