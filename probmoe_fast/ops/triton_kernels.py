r"""Triton kernels of the routing DP: one program owns ``BLOCK_T`` tokens and walks their
experts in descending logit order (the host sorts), keeping the level axis
:math:`j = 0..k_{\max}` of the tables in a ``(BLOCK_T, KP)`` register tile.

Normalised tables: every entry that matters is :math:`O(\log\binom{n}{j})` at any logit
spread. They are kept in float64 (inputs and outputs stay float32): each of the :math:`n`
steps rounds an entry of size up to ~20..100 and adds an increment computed with ``exp`` (an
approximate instruction on the GPU), so float32 tables drift by 1e-5 over 256 steps where §6
allows 1e-5 (evenly spaced logits, n = 256, k = 32) and 2.6e-6 at n = 64, k = 8 (bar 2e-6).
With :math:`\rho_j` the j-th largest logit,
:math:`o_j = \rho_1 + \dots + \rho_j`, size weights :math:`\lambda_s = \phi_s + o_s`,
:math:`C = \max_s \lambda_s` and :math:`\delta_{i,j} = \theta_{(i)} - \rho_j`
(:math:`-\infty` when either is):

.. math::

    \tilde P_j(i) &= \tilde P_j(i-1) \oplus \bigl(\delta_{i,j} + \tilde P_{j-1}(i-1)\bigr),
    \qquad \tilde P_j(i) = \log e_j(\theta_{(1..i)}) - o_j, \\
    \tilde H_a(i) &= \tilde H_a(i+1) \oplus \bigl(\delta_{i,a+1} + \tilde H_{a+1}(i+1)\bigr),
    \qquad \tilde H_a(n+1) = \lambda_a - C, \\
    \log Z &= C + \tilde Z, \qquad
    \tilde Z = \operatorname{logsumexp}_s (\lambda_s - C + \tilde P_s(n)), \\
    m_{(i)} &= \sum_a \exp\bigl(\tilde P_a(i-1) + \delta_{i,a+1} + \tilde H_{a+1}(i+1)
              - \tilde Z\bigr),

(:math:`\oplus` = logaddexp). :math:`\tilde H` folds the size weights into the suffix
table, so Exact-k and the band are one kernel. The backward kernel carries, beside each
log entry, the weighted mean of :math:`f(S) = \sum_{l \in S} v_l + \bar p_{|S|}` over the
subsets it counts (a dual number kept as a ratio, so it never cancels), and returns

.. math::

    \bar\theta_{(i)} = m_{(i)}\bigl(\mathbb E[f \mid i \in S] - \mathbb E f\bigr)
                       + \bar\ell\, m_{(i)}, \qquad
    \bar\lambda_s = p_s\bigl(\mathbb E[f \mid |S| = s] - \mathbb E f\bigr) + \bar\ell\, p_s.

The level shifts :math:`\tilde P_{j-1} \to j` and :math:`\tilde H_{a+1} \to a` go through
per-program scratch rows (written, barrier, read back shifted); the prefix rows are kept for
the reverse pass, so scratch is ``(grid, n + 1, BLOCK_T, KP)`` float64 per table, with
``grid`` capped (persistent programs) so that it does not grow with the token count (about
0.3 GB per table at n = 64, k = 8 on an H200, 1.1 GB at n = 256, k = 32, and the backward
keeps two: not L2-resident, a tuning point for the GPU runs).

Cost per token: forward :math:`2nK` logaddexps, backward :math:`4nK`; global memory: the
logits and outputs once, plus the scratch rows.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["route_fwd_kernel", "route_bwd_kernel"]

NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _logaddexp(a, b):
    hi = tl.maximum(a, b)
    lo = tl.minimum(a, b)
    finite = hi > NEG_INF
    base = tl.where(finite, hi, 0.0)
    return tl.where(finite, base + tl.log(1.0 + tl.exp(lo - base)), hi)


@triton.jit
def _weights(old, term, new):
    """``(exp(old - new), exp(term - new))``: the mixing weights of ``new = old (+) term``."""
    finite = new > NEG_INF
    base = tl.where(finite, new, 0.0)
    return (tl.where(finite, tl.exp(old - base), 0.0),
            tl.where(finite, tl.exp(term - base), 0.0))


@triton.jit
def _delta(theta, rho):
    """``theta[:, None] - rho`` with a real -inf where either is -inf (never NaN)."""
    t = theta[:, None]
    ok = (t > NEG_INF) & (rho > NEG_INF)
    return tl.where(ok, t - tl.where(ok, rho, 0.0), NEG_INF)


@triton.jit
def _logsumexp_rows(x):
    top = tl.max(x, axis=1)
    base = tl.where(top > NEG_INF, top, 0.0)
    return base + tl.log(tl.sum(tl.exp(x - base[:, None]), axis=1))


@triton.jit
def _pick(tile, lev, j):
    """``tile[r, j[r]]`` (-inf where j is out of range)."""
    return tl.max(tl.where(lev[None, :] == j[:, None], tile, NEG_INF), axis=1)


@triton.jit
def _block_setup(theta_ptr, lam_ptr, blk, T, n, L, k_min,
                 BLOCK_T: tl.constexpr, KP: tl.constexpr):
    """Row indices, level index, :math:`\\rho_j` and :math:`\\rho_{j+1}` tiles and the
    normalised size weights :math:`\\lambda - C` at their levels."""
    rows = tl.arange(0, BLOCK_T).to(tl.int64) + blk * BLOCK_T
    rmask = rows < T
    lev = tl.arange(0, KP)
    row_off = rows[:, None] * n
    rho = tl.load(theta_ptr + row_off + (lev[None, :] - 1),
                  mask=rmask[:, None] & (lev[None, :] >= 1) & (lev[None, :] <= n),
                  other=NEG_INF).to(tl.float64)
    rho_up = tl.load(theta_ptr + row_off + lev[None, :],
                     mask=rmask[:, None] & (lev[None, :] + 1 <= n), other=NEG_INF).to(tl.float64)
    in_band = (lev[None, :] >= k_min) & (lev[None, :] < k_min + L)
    lam = tl.load(lam_ptr + rows[:, None] * L + (lev[None, :] - k_min),
                  mask=rmask[:, None] & in_band, other=NEG_INF).to(tl.float64)
    return rows, rmask, lev, rho, rho_up, lam, in_band


@triton.jit
def _load_row(base, i, lev, shift, other, BLOCK_T: tl.constexpr, KP: tl.constexpr):
    """Scratch row ``i`` read at level ``lev + shift``, ``other`` outside ``0..KP-1``
    (-inf for a log table, 0 for a ratio table)."""
    src = lev + shift
    ok = (src >= 0) & (src < KP)
    offs = (i * BLOCK_T + tl.arange(0, BLOCK_T))[:, None] * KP + src[None, :]
    return tl.load(base + offs, mask=tl.broadcast_to(ok[None, :], (BLOCK_T, KP)), other=other)


@triton.jit
def _store_row(base, i, tile, BLOCK_T: tl.constexpr, KP: tl.constexpr):
    offs = (i * BLOCK_T + tl.arange(0, BLOCK_T))[:, None] * KP + tl.arange(0, KP)[None, :]
    tl.store(base + offs, tile)


@triton.jit
def route_fwd_kernel(theta_ptr, perm_ptr, lam_ptr, seed_ptr,
                     zrel_ptr, m_ptr, p_ptr, idx_ptr, size_ptr, ptab_ptr, hbuf_ptr,
                     T, n, L, k_min, k_max, n_blocks,
                     DRAW: tl.constexpr, BLOCK_T: tl.constexpr, KP: tl.constexpr):
    r"""Forward for sorted logits ``(T, n)``: :math:`\tilde Z`, the marginals (scattered to
    expert order through ``perm``), the size probabilities and, if ``DRAW``, one exact sample
    per token as slot indices (largest logit first) and its size."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    ptab = ptab_ptr + pid.to(tl.int64) * (n + 1) * BLOCK_T * KP
    hbuf = hbuf_ptr + pid.to(tl.int64) * 2 * BLOCK_T * KP
    seed = tl.load(seed_ptr)
    for blk in range(pid, n_blocks, n_prog):
        tl.debug_barrier()  # the previous block's last reads of the scratch are done
        rows, rmask, lev, rho, rho_up, lam, in_band = _block_setup(
            theta_ptr, lam_ptr, blk, T, n, L, k_min, BLOCK_T, KP)
        # prefix table, rows 0..n of the scratch
        P = tl.where(lev[None, :] == 0, 0.0, NEG_INF) + tl.zeros((BLOCK_T, KP), tl.float64)
        _store_row(ptab, 0, P, BLOCK_T, KP)
        for i in range(n):
            th = tl.load(theta_ptr + rows * n + i, mask=rmask, other=NEG_INF).to(tl.float64)
            tl.debug_barrier()
            below = _load_row(ptab, i, lev, -1, NEG_INF, BLOCK_T, KP)
            P = _logaddexp(P, _delta(th, rho) + below)
            _store_row(ptab, i + 1, P, BLOCK_T, KP)
        score = lam + P
        zrel = _logsumexp_rows(score)
        zbase = tl.where(zrel > NEG_INF, zrel, 0.0)  # -inf only on padding rows
        tl.store(zrel_ptr + rows, zrel, mask=rmask)
        probs = tl.exp(score - zbase[:, None])
        tl.store(p_ptr + rows[:, None] * L + (lev[None, :] - k_min), probs,
                 mask=rmask[:, None] & in_band)
        # size of the sample: inverse CDF with 1 - u in (0, 1]
        remaining = tl.zeros((BLOCK_T,), tl.int32)
        if DRAW:
            u = 1.0 - tl.rand(seed, rows * (n + 1))
            cdf = tl.cumsum(probs, axis=1)
            # the CDF's own last entry (not a separately rounded sum): u * total <= total, so
            # the top level is never "below" and the size stays <= k_max
            total = tl.max(tl.where(in_band, cdf, 0.0), axis=1)
            below_u = (cdf < (u * total)[:, None]) & in_band
            remaining = k_min + tl.sum(below_u.to(tl.int32), axis=1)
        size = remaining
        # reverse pass: suffix table, marginals and the backward sampler
        H = lam
        _store_row(hbuf, 0, H, BLOCK_T, KP)
        P_cur = P
        for r in range(n):
            i = n - 1 - r
            th = tl.load(theta_ptr + rows * n + i, mask=rmask, other=NEG_INF).to(tl.float64)
            expert = tl.load(perm_ptr + rows * n + i, mask=rmask, other=0)
            tl.debug_barrier()
            above = _load_row(hbuf, r % 2, lev, 1, NEG_INF, BLOCK_T, KP)
            P_prev = _load_row(ptab, i, lev, 0, NEG_INF, BLOCK_T, KP)
            if DRAW:
                P_prev_below = _load_row(ptab, i, lev, -1, NEG_INF, BLOCK_T, KP)
            term = _delta(th, rho_up) + above
            m = tl.sum(tl.exp(P_prev + term - zbase[:, None]), axis=1)
            tl.store(m_ptr + rows * n + expert, m, mask=rmask)
            H = _logaddexp(H, term)
            _store_row(hbuf, (r + 1) % 2, H, BLOCK_T, KP)
            if DRAW:
                # P(take i | j left) = w_i e_{j-1}(first i-1) / e_j(first i); forced if j > i-1
                num = _pick(_delta(th, rho) + P_prev_below, lev, remaining)
                den = _pick(P_cur, lev, remaining)
                ok = den > NEG_INF
                log_q = tl.where(ok, num - tl.where(ok, den, 0.0), NEG_INF)
                u_i = tl.rand(seed, rows * (n + 1) + 1 + i)
                take = ((u_i < tl.exp(log_q)) | (remaining > i)) & (remaining > 0)
                tl.store(idx_ptr + rows * k_max + (remaining - 1), expert.to(tl.int64),
                         mask=rmask & take)
                remaining = remaining - take.to(tl.int32)
            P_cur = P_prev
        if DRAW:
            tl.store(size_ptr + rows, size.to(tl.int64), mask=rmask)


@triton.jit
def route_bwd_kernel(theta_ptr, perm_ptr, lam_ptr, gm_ptr, gp_ptr, gz_ptr,
                     gtheta_ptr, glam_ptr, ptab_ptr, rtab_ptr, hbuf_ptr, qbuf_ptr,
                     T, n, L, k_min, n_blocks,
                     BLOCK_T: tl.constexpr, KP: tl.constexpr):
    r"""Backward for sorted logits ``(T, n)``: cotangents ``gm`` ``(T, n)`` (expert order) of
    the marginals, ``gp`` ``(T, L)`` of the size probabilities and ``gz`` ``(T,)`` of
    :math:`\log Z`; writes :math:`\bar\theta` (expert order) and :math:`\bar\lambda`
    (see the module docstring). ``R``/``Q`` are the prefix/suffix ratio tables."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    ptab = ptab_ptr + pid.to(tl.int64) * (n + 1) * BLOCK_T * KP
    rtab = rtab_ptr + pid.to(tl.int64) * (n + 1) * BLOCK_T * KP
    hbuf = hbuf_ptr + pid.to(tl.int64) * 2 * BLOCK_T * KP
    qbuf = qbuf_ptr + pid.to(tl.int64) * 2 * BLOCK_T * KP
    for blk in range(pid, n_blocks, n_prog):
        tl.debug_barrier()  # the previous block's last reads of the scratch are done
        rows, rmask, lev, rho, rho_up, lam, in_band = _block_setup(
            theta_ptr, lam_ptr, blk, T, n, L, k_min, BLOCK_T, KP)
        P = tl.where(lev[None, :] == 0, 0.0, NEG_INF) + tl.zeros((BLOCK_T, KP), tl.float64)
        R = tl.zeros((BLOCK_T, KP), tl.float64)
        _store_row(ptab, 0, P, BLOCK_T, KP)
        _store_row(rtab, 0, R, BLOCK_T, KP)
        for i in range(n):
            th = tl.load(theta_ptr + rows * n + i, mask=rmask, other=NEG_INF).to(tl.float64)
            expert = tl.load(perm_ptr + rows * n + i, mask=rmask, other=0)
            v = tl.load(gm_ptr + rows * n + expert, mask=rmask, other=0.0).to(tl.float64)
            tl.debug_barrier()
            term = _delta(th, rho) + _load_row(ptab, i, lev, -1, NEG_INF, BLOCK_T, KP)
            new = _logaddexp(P, term)
            keep, add = _weights(P, term, new)
            R = keep * R + add * (_load_row(rtab, i, lev, -1, 0.0, BLOCK_T, KP) + v[:, None])
            P = new
            _store_row(ptab, i + 1, P, BLOCK_T, KP)
            _store_row(rtab, i + 1, R, BLOCK_T, KP)
        score = lam + P
        zrel = _logsumexp_rows(score)
        zbase = tl.where(zrel > NEG_INF, zrel, 0.0)  # -inf only on padding rows
        probs = tl.exp(score - zbase[:, None])
        gp = tl.load(gp_ptr + rows[:, None] * L + (lev[None, :] - k_min),
                     mask=rmask[:, None] & in_band, other=0.0).to(tl.float64)
        gz = tl.load(gz_ptr + rows, mask=rmask, other=0.0).to(tl.float64)
        f_size = R + gp  # E[f | |S| = s]
        f_mean = tl.sum(probs * f_size, axis=1)
        tl.store(glam_ptr + rows[:, None] * L + (lev[None, :] - k_min),
                 probs * (f_size - f_mean[:, None] + gz[:, None]),
                 mask=rmask[:, None] & in_band)
        H = lam
        Q = gp
        _store_row(hbuf, 0, H, BLOCK_T, KP)
        _store_row(qbuf, 0, Q, BLOCK_T, KP)
        for r in range(n):
            i = n - 1 - r
            th = tl.load(theta_ptr + rows * n + i, mask=rmask, other=NEG_INF).to(tl.float64)
            expert = tl.load(perm_ptr + rows * n + i, mask=rmask, other=0)
            v = tl.load(gm_ptr + rows * n + expert, mask=rmask, other=0.0).to(tl.float64)
            tl.debug_barrier()
            above = _load_row(hbuf, r % 2, lev, 1, NEG_INF, BLOCK_T, KP)
            q_above = _load_row(qbuf, r % 2, lev, 1, 0.0, BLOCK_T, KP)
            P_prev = _load_row(ptab, i, lev, 0, NEG_INF, BLOCK_T, KP)
            R_prev = _load_row(rtab, i, lev, 0, 0.0, BLOCK_T, KP)
            term = _delta(th, rho_up) + above
            t = tl.exp(P_prev + term - zbase[:, None])
            m = tl.sum(t, axis=1)
            f_in = tl.sum(t * (R_prev + q_above), axis=1) + m * v  # E[f 1(i in S)]
            tl.store(gtheta_ptr + rows * n + expert, f_in - m * (f_mean - gz), mask=rmask)
            new = _logaddexp(H, term)
            keep, add = _weights(H, term, new)
            Q = keep * Q + add * (q_above + v[:, None])
            H = new
            _store_row(hbuf, (r + 1) % 2, H, BLOCK_T, KP)
            _store_row(qbuf, (r + 1) % 2, Q, BLOCK_T, KP)
