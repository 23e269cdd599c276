r"""``torch.distributions`` front end: :class:`ExactK` and :class:`DynamicK` (DESIGN.md §1, §4;
the model of :cite:`zhao2026probmoe`).

For logits :math:`\theta \in (\mathbb R \cup \{-\infty\})^n` per batch element:

.. math::

    \text{Exact-k:}\;\; P(S) = \frac{\prod_{i \in S} e^{\theta_i}}{e_k(e^{\theta})},\; |S| = k;
    \qquad
    \text{band:}\;\; P(S) \propto e^{\phi_{|S|}} \prod_{i \in S} e^{\theta_i},\;
    k_{\min} \le |S| \le k_{\max}.

Samples are 0/1 float masks of shape ``(*sample_shape, *batch_shape, n)``.

=========================  ==========================  ===========================================
member                     shape                       meaning / cost per row
=========================  ==========================  ===========================================
``log_partition``          ``batch_shape``             :math:`\log Z`; :math:`O(nK)`
``marginals`` / ``mean``   ``batch_shape + (n,)``      :math:`m = \nabla_\theta \log Z`;
                                                       backward :math:`\mathrm{Cov}(z)v` in
                                                       :math:`O(nK)`, twice differentiable
``variance``               ``batch_shape + (n,)``      :math:`m(1-m)`
``size_probs``             ``batch_shape + (L,)``      :math:`P(|S| = j)`, DynamicK only
``entropy()``              ``batch_shape``             :math:`H(|S|) + \sum_j p_j \ell_j -
                                                       \sum_i m_i (\theta_i - c)`; :math:`O(nK)`
``log_prob(mask)``         ``sample_shape+batch``      :math:`\sum_{i\in S}\theta_i +
                                                       \phi_{|S|} - \log Z`; :math:`O(n)`
``sample(shape, gen)``     ``shape+batch+(n,)``        exact; :math:`O(nK + K\log n)` per draw
``rsample(shape, gen)``    ``shape+batch+(n,)``        :math:`z + m - \mathrm{sg}(m)`
``mode``                   ``batch_shape + (n,)``      MAP mask (§1 tie-breaks); :math:`O(n\log n)`
``pairwise_marginals()``   ``batch_shape + (n, n)``    :math:`P(i, j \in S)`; :math:`O(n^2 K)`
``covariance_matrix``      ``batch_shape + (n, n)``    :math:`\pi - m m^\top`; :math:`O(n^2 K)`
=========================  ==========================  ===========================================

:math:`\ell_j = \log e_j(e^{\theta - c})` with :math:`c` the row's largest finite logit, and
:math:`K = k` (Exact-k) or :math:`k_{\max}`. Half/bfloat16 logits are accepted; the math runs in
float32 (float64 stays float64) and results come back in that dtype. ``validate_args`` follows
``torch.distributions`` (default: ``Distribution._validate_args``); DESIGN.md §5 errors are
``ValueError`` naming the offending batch index. ``backend``: "auto" | "torch" | "triton"
(:mod:`probmoe_fast.ops.backend`): with Triton, ``log_partition``, ``marginals``,
``size_probs``, ``sample`` and ``rsample`` run in the fused kernels; the other members use the
torch path.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, constraints

from ._core import validation
from ._core.mode import mode_mask
from ._core.partition import log_partition, size_scores
from .ops.backend import resolve_backend
from .ops.batched import esp_stats, math_dtype, partition_stats, sample, sample_and_marginals
from .ops.pairwise import pairwise_marginals as _pairwise

__all__ = ["ExactK", "DynamicK"]


class _Subsets(constraints.Constraint):
    r"""0/1 vectors of length ``n`` with ``k_min <= sum <= k_max``."""

    is_discrete = True
    event_dim = 1

    def __init__(self, n: int, k_min: int, k_max: int):
        self.n, self.k_min, self.k_max = n, k_min, k_max
        super().__init__()

    def check(self, value):
        binary = ((value == 0) | (value == 1)).all(dim=-1)
        count = value.sum(dim=-1)
        return binary & (count >= self.k_min) & (count <= self.k_max) & (value.shape[-1] == self.n)


class _SubsetDistribution(Distribution):
    r"""Shared implementation; a band ``k_min..k_max`` (Exact-k: ``k_min == k_max``)."""

    has_rsample = True

    def __init__(self, logits, k_min, k_max, size_logits, validate_args, backend):
        self.backend = backend
        validate = Distribution._validate_args if validate_args is None else validate_args
        if validate:
            validation.check_logits(logits)
            validation.check_enough_finite(logits, k_min, "k" if k_min == k_max else "k_min")
        self.logits = logits.to(math_dtype(logits.dtype))
        self._triton = resolve_backend(backend, self.logits) == "triton"
        self.k_min, self.k_max = k_min, k_max
        batch_shape = self.logits.shape[:-1]
        if size_logits is not None:
            validation.check_size_logits(size_logits, batch_shape, k_max - k_min + 1, validate)
            size_logits = size_logits.to(self.logits.dtype).expand(*batch_shape, k_max - k_min + 1)
        self.size_logits = size_logits
        self._cache = {}
        # the checks above cover arg_constraints; torch's own pass would repeat them (and its
        # real_vector check cannot reshape an empty batch)
        super().__init__(batch_shape, self.logits.shape[-1:], validate_args=False)
        self._validate_args = validate

    @property
    def arg_constraints(self):
        args = {"logits": constraints.real_vector}
        if self.size_logits is not None:
            args["size_logits"] = constraints.real_vector
        return args

    @property
    def support(self):
        return _Subsets(self.logits.shape[-1], self.k_min, self.k_max)

    # --- exact statistics (one DP, cached per instance) -------------------------------------
    def _stats(self):
        if "stats" not in self._cache:
            self._cache["stats"] = esp_stats(self.logits, self.k_min, self.k_max,
                                             self.size_logits, self.backend)
        return self._cache["stats"]

    def _partition(self):
        """``(log Z, m, size_probs)`` from the Triton kernels (one launch, cached)."""
        if "partition" not in self._cache:
            self._cache["partition"] = partition_stats(self.logits, self.k_min, self.k_max,
                                                       self.size_logits, "triton")
        return self._cache["partition"]

    def _scores(self):
        log_q, offset, shift, _ = self._stats()
        return size_scores(log_q, shift, self.k_min, self.size_logits, offset)

    @property
    def log_partition(self) -> torch.Tensor:
        if self._triton:
            return self._partition()[0]
        log_q, offset, shift, _ = self._stats()
        return log_partition(log_q, shift, self.k_min, self.size_logits, offset)

    @property
    def marginals(self) -> torch.Tensor:
        return self._partition()[1] if self._triton else self._stats()[3]

    @property
    def mean(self) -> torch.Tensor:
        return self.marginals

    @property
    def variance(self) -> torch.Tensor:
        m = self.marginals
        return m * (1 - m)

    @property
    def mode(self) -> torch.Tensor:
        return mode_mask(self.logits, self.k_min, self.k_max, self.size_logits)

    def entropy(self) -> torch.Tensor:
        r""":math:`H = -\sum_j p_j \log p_j + \sum_j p_j \ell_j - \sum_i m_i (\theta_i - c)`,
        always from the float64 DP: the last two sums are each about :math:`k` × spread and cancel
        to :math:`H \le \log \binom{n}{k}`, and float32 marginals carry
        :math:`\varepsilon_{32} |\theta_i - c|` each into the difference (2e-3 off, and negative
        on near-certain rows, at spread 1e4). float32 logits get a float32 result, differentiable
        through the cast."""
        if self.logits.dtype == torch.float64:
            stats, logits, phi = self._stats(), self.logits, self.size_logits
        else:
            logits = self.logits.double()
            phi = None if self.size_logits is None else self.size_logits.double()
            stats = self._stats64(logits, phi)
        entropy = _entropy(stats, logits, phi, self.k_min)
        # H >= 0 exactly; a point mass (or a near-certain row) leaves a rounding of either sign,
        # ~1e-12 at spread 1e3: the value is rounded up to 0, the gradient stays the formula's
        entropy = entropy + (entropy.clamp_min(0.0) - entropy).detach()
        return entropy.to(self.logits.dtype)

    def _stats64(self, logits, size_logits):
        """The float64 DP's ``(log_q, offset, shift, m)`` for the float32 entropy (cached)."""
        if "stats64" not in self._cache:
            self._cache["stats64"] = esp_stats(logits, self.k_min, self.k_max, size_logits,
                                               "torch")
        return self._cache["stats64"]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            validation.check_mask(value, self.batch_shape, self.logits.shape[-1], self.k_min,
                                  self.k_max)
        log_q, level_offset, shift, _ = self._stats()
        value = value.to(self.logits.dtype)
        selected = torch.where(value > 0, self.logits.double() - shift.double().unsqueeze(-1),
                               torch.zeros_like(self.logits, dtype=torch.float64)).sum(-1)
        count = value.sum(-1)
        # log P(S) = sum_S (theta_i - c) - logsumexp_j(phi_j - phi_|S| + (j - |S|) c + l_j): the
        # offsets (and the levels' o_j) are summed in float64, as in size_scores (phi may
        # balance a large c)
        sizes = torch.arange(self.k_min, self.k_max + 1, device=value.device,
                             dtype=torch.float64)
        offset = ((sizes - count.double().unsqueeze(-1)) * shift.double().unsqueeze(-1)
                  + level_offset)
        if self.size_logits is not None:
            index = (count.long() - self.k_min).clamp(0, self.k_max - self.k_min)
            phi = self.size_logits.double().expand(*count.shape, self.k_max - self.k_min + 1)
            offset = offset + phi - phi.gather(-1, index.unsqueeze(-1))
        top = (log_q.detach().double() + offset).amax(-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        log_p = ((selected - top.squeeze(-1)).to(log_q.dtype)
                 - torch.logsumexp(log_q + (offset - top).to(log_q.dtype), dim=-1))
        in_band = (count >= self.k_min) & (count <= self.k_max)
        return torch.where(in_band, log_p, torch.full_like(log_p, float("-inf")))

    # --- sampling ----------------------------------------------------------------------------
    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None):
        return sample(self.logits.detach(), self.k_min, self.k_max,
                      None if self.size_logits is None else self.size_logits.detach(),
                      sample_shape, generator, self.backend)

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None):
        r"""Straight-through sample :math:`z + m - \mathrm{sg}(m)`: value ``z``, gradient
        through the exact marginals."""
        z, m = sample_and_marginals(self.logits, self.k_min, self.k_max, self.size_logits,
                                    sample_shape, generator, self.backend)
        return z + (m - m.detach())

    # --- second moments ----------------------------------------------------------------------
    def pairwise_marginals(self) -> torch.Tensor:
        n = self.logits.shape[-1]
        theta = self.logits.reshape(-1, n)
        phi = None if self.size_logits is None else self.size_logits.reshape(
            theta.shape[0], self.k_max - self.k_min + 1)
        pair = _pairwise(theta, self.k_min, self.k_max, phi, self.marginals.reshape(-1, n))
        return pair.reshape(*self.batch_shape, n, n)

    @property
    def covariance_matrix(self) -> torch.Tensor:
        m = self.marginals
        return self.pairwise_marginals() - m.unsqueeze(-1) * m.unsqueeze(-2)

    def _expanded(self, cls, batch_shape, _instance):
        new = self._get_checked_instance(cls, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.logits.shape[-1:])
        new.k_min, new.k_max, new.backend = self.k_min, self.k_max, self.backend
        new._triton = self._triton
        new.size_logits = None if self.size_logits is None else self.size_logits.expand(
            batch_shape + self.size_logits.shape[-1:])
        new._cache = {}
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new



def _entropy(stats, logits, size_logits, k_min):
    r""":math:`H` ``(...,)`` from float64 DP statistics ``(log_q, offset, shift, m)`` on float64
    ``logits`` (``size_logits`` float64 or None); levels with :math:`e_j = 0` (more experts than
    are finite) have :math:`p_j = 0` and contribute nothing."""
    log_q, offset, shift, m = stats
    log_p = torch.log_softmax(size_scores(log_q, shift, k_min, size_logits, offset), dim=-1)
    p = log_p.exp()
    finite_levels = torch.isfinite(log_q) & torch.isfinite(offset)
    zero = torch.zeros_like(log_p)
    size_entropy = -(p * torch.where(finite_levels, log_p, zero)).sum(-1)
    level_term = (p * torch.where(finite_levels, log_q + offset, zero)).sum(-1)
    finite = torch.isfinite(logits)
    x = torch.where(finite, logits - shift.unsqueeze(-1), torch.zeros_like(logits))
    return size_entropy + level_term - (m * x).sum(-1)


class ExactK(_SubsetDistribution):
    r"""Exact-k subsets: :math:`P(S) \propto \prod_{i\in S} e^{\theta_i}`, :math:`|S| = k`.

    ``logits`` ``(..., n)`` (any float dtype, :math:`-\infty` = unavailable expert), ``k`` int in
    ``[0, n]``. See the module docstring for members, shapes and costs.
    """

    def __init__(self, logits: torch.Tensor, k: int, validate_args: bool | None = None,
                 backend: str = "auto"):
        k = validation.check_exact_k(k, validation.n_experts(logits))
        self.k = k
        super().__init__(logits, k, k, None, validate_args, backend)

    def expand(self, batch_shape, _instance=None):
        new = self._expanded(ExactK, batch_shape, _instance)
        new.k = self.k
        return new


class DynamicK(_SubsetDistribution):
    r"""Band subsets: :math:`P(S) \propto e^{\phi_{|S|}}\prod_{i\in S} e^{\theta_i}`,
    :math:`k_{\min} \le |S| \le k_{\max}`.

    ``logits`` ``(..., n)``; ``1 <= k_min <= k_max <= n``; ``size_logits`` ``(..., L)`` with
    :math:`L = k_{\max} - k_{\min} + 1` (broadcast over the batch) or None (:math:`\phi = 0`).
    See the module docstring for members, shapes and costs.
    """

    def __init__(self, logits: torch.Tensor, k_min: int, k_max: int,
                 size_logits: torch.Tensor | None = None, validate_args: bool | None = None,
                 backend: str = "auto"):
        k_min, k_max = validation.check_band(k_min, k_max, validation.n_experts(logits))
        super().__init__(logits, k_min, k_max, size_logits, validate_args, backend)

    @property
    def size_probs(self) -> torch.Tensor:
        if self._triton:
            return self._partition()[2]
        return torch.softmax(self._scores(), dim=-1)

    def expand(self, batch_shape, _instance=None):
        return self._expanded(DynamicK, batch_shape, _instance)
