"""probmoe_ref.symbolic: every registered identity is proved by sympy, and the check can fail."""

import mpmath
import numpy as np
import pytest
import sympy as sp

import probmoe_ref as pr
from probmoe_ref import symbolic as sym


@pytest.mark.parametrize("identity", sym.REGISTRY, ids=lambda i: i.name)
def test_identity_holds(identity):
    residual = identity.residual()
    assert not any(s.name.startswith("theta") for s in residual.free_symbols)  # fully in weights
    assert sym.check(identity)
    assert identity.statement


@pytest.mark.parametrize("fn, kwargs", [
    (sym.esp_recursion, {"n": 3}),
    (sym.marginal_formula, {"n": 3, "k": 1}),                 # k = 1
    (sym.marginal_formula, {"n": 4, "k": 3}),                 # k = n - 1
    (sym.marginals_sum_to_k, {"n": 3, "k": 3}),               # k = n
    (sym.jacobian_is_covariance, {"n": 3, "k": 1}),
    (sym.band_size_distribution, {"n": 3, "k_min": 2, "k_max": 3}),
    (sym.backward_sampling, {"n": 4, "k": 3}),
    (sym.pairwise_formula, {"n": 4, "k": 2}),
])
def test_identities_hold_at_other_sizes(fn, kwargs):
    assert sym.is_zero(fn(**kwargs))


def test_check_rejects_wrong_identities():
    # Negative controls: plausible mistakes must not simplify to zero.
    w = sp.symbols("w1:5", positive=True)
    wrong_marginal = sym._marginal(w, 0, [2]) - w[0] * sym.esp(w[1:], 2) / sym.esp(w, 2)  # e_k for e_{k-1}
    wrong_recursion = sym.esp(w, 2) - sym.esp(w[:-1], 2) - sym.esp(w[:-1], 1)              # missing w_n
    sig = [x / (1 + x) for x in w]
    wrong_cb = sig[0] * sig[1] / (1 + sig[0]) - w[0] * w[1] / sym.esp(w, 2)
    for expr in (wrong_marginal, wrong_recursion, wrong_cb):
        assert not sym.is_zero(expr)


def test_symbolic_esp_matches_the_numeric_reference():
    # Evaluate the symbolic e_k at rational weights exactly and compare with the reference's log Z.
    theta = np.array([0.5, -1.25, 2.0, 0.0, 0.75])
    ws = [sp.exp(sp.Rational(t)) for t in theta]
    for k in range(6):
        got = pr.ExactK(theta, k, precision=50, algorithm="dp").log_partition_mp.item()
        with mpmath.workdps(50):
            exact = mpmath.mpf(str(sp.log(sym.esp(ws, k)).evalf(60)))
            assert abs(exact - got) <= mpmath.mpf("1e-40")


def test_registry_names_are_unique():
    assert len({i.name for i in sym.REGISTRY}) == len(sym.REGISTRY) >= 13
