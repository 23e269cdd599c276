"""The estimator lab against independent formulas from :mod:`probmoe_ref`.

Exact rows are sums over the support, so they are compared at 1e-12. The Monte-Carlo tests use
fixed seeds (deterministic outcomes); each interval is built at level 1e-3, the declared
false-alarm rate of a correct lab on one such check, and its half-width is asserted small (below
10 % of the gradient norm), so covering is not vacuous; a shifted value must fall outside.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import probmoe_ref as pr
from probmoe_ref import gradients
from verify import estimators as lab
from verify.estimators import catalog, cli, objectives, suite
from verify.estimators.lab import exact_moments, problem_of, rloo_moments, true_gradient

ROOT = Path(__file__).resolve().parents[2]


def _by_name(name):
    return next(e for e in lab.default_estimators() if e.name == name)


def _no_direct_cases():
    rng = np.random.default_rng(3)
    theta = rng.normal(size=6)
    two = objectives.random_objectives(6, rng)[3]
    cases = [(i.dist, i.objective) for i in suite.hand_made()]       # Exact-1, -2, band [1, 3]
    return cases + [(pr.ExactK(theta, 3), two), (pr.DynamicK(theta, 2, 4), two)]


@pytest.mark.parametrize("dist,objective", _no_direct_cases())
def test_marginal_st_mean_is_the_reference_surrogate(dist, objective):
    row = lab.evaluate(_by_name("marginal_st"), dist, objective)[0]
    expected = gradients.surrogate_grad(dist, lambda z: objective.grad_z(z[None], None)[0])
    assert row.method == "exact"
    np.testing.assert_allclose(row.mean, expected, rtol=0, atol=1e-12)
    true = gradients.expectation_grad(dist, lambda z: float(objective.value(z[None], None)[0]))
    np.testing.assert_allclose(row.true_grad, true, rtol=0, atol=1e-12)


def _three_expert_case():
    theta = np.array([0.3, -0.2, 1.0])
    h = np.array([[1.0, -2.0, 0.5], [-2.0, 0.3, 1.0], [0.5, 1.0, -1.5]])
    return pr.ExactK(theta, 1), objectives.quadratic(h, np.array([0.2, -1.0, 0.7]))


def test_score_function_and_rloo_unbiased_with_closed_form_variance():
    dist, objective = _three_expert_case()
    p = dist.marginals                                   # Exact-1: P(z = e_i) = m_i
    f = objective.value(np.eye(3), None)                 # f_i = f(e_i)
    fbar = p @ f
    true = p * (f - fbar)
    # plain score function: g(e_x) = f_x (e_x - p); Var_i = sum_x p_x f_x^2 (d_xi - p_i)^2 - true_i^2
    var_sf = np.array([sum(p[x] * f[x] ** 2 * ((x == i) - p[i]) ** 2 for x in range(3))
                       for i in range(3)]) - true ** 2
    # RLOO, S = 2: g = (f_x - f_y)(e_x - e_y) / 2, Var_i = p_i sum_y p_y (f_i - f_y)^2 / 2 - true_i^2
    var_rloo2 = p * (p @ (f[:, None] - f[None, :]).T ** 2) / 2 - true ** 2
    rows = {r.estimator: r for r in lab.evaluate(
        [_by_name("score_function"), catalog.LabEstimator("rloo2", "rloo", pair=_by_name(
            "rloo S=4").pair, samples=2)], dist, objective)}
    sf, rl = rows["score_function"], rows["rloo2"]
    np.testing.assert_allclose(sf.mean, true, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rl.mean, true, rtol=0, atol=1e-12)
    assert sf.rel_bias < 1e-12 and rl.rel_bias < 1e-12
    problem = problem_of(dist, objective)
    np.testing.assert_allclose(np.diag(exact_moments(_by_name("score_function"), problem)[1]),
                               var_sf, rtol=0, atol=1e-12)
    assert abs(sf.cov_trace - var_sf.sum()) < 1e-12
    assert abs(rl.cov_trace - var_rloo2.sum()) < 1e-12


@pytest.mark.parametrize("samples", [2, 3, 4])
def test_rloo_u_statistic_covariance_matches_enumeration_over_tuples(samples):
    """The U-statistic formula against the brute-force sum over all S-tuples of subsets."""
    dist, objective = _three_expert_case()
    problem = problem_of(dist, objective)
    est = _by_name("rloo S=4")
    mu, cov = rloo_moments(est, problem, samples)
    masks, probs = dist.enumerate_support()
    estimates, weights = [], []
    for tup in itertools.product(range(len(probs)), repeat=samples):
        pairs = list(itertools.combinations(tup, 2))
        x = masks[[a for a, _ in pairs]]
        y = masks[[b for _, b in pairs]]
        estimates.append(est.pair(problem, x, y).mean(0))
        weights.append(np.prod(probs[list(tup)]))
    g, w = np.array(estimates), np.array(weights)
    brute_mu = w @ g
    brute_cov = ((g - brute_mu) * w[:, None]).T @ (g - brute_mu)
    np.testing.assert_allclose(mu, brute_mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, brute_cov, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", [0, 3, 4])   # affine Exact-2; gated sum Exact-2 and band [1, 3]
def test_planted_bias_is_reported(case):
    inst = suite.hand_made()[case]
    dist, objective = inst.dist, inst.objective
    m = dist.marginals
    masks, probs = dist.enumerate_support()
    planted_mean = m * (1 - m) * (probs @ objective.grad_z(masks, None))
    true = gradients.expectation_grad(dist, lambda z: float(objective.value(z[None], None)[0]))
    row = lab.evaluate(catalog.planted_diag(), dist, objective)[0]
    np.testing.assert_allclose(row.mean, planted_mean, rtol=0, atol=1e-12)
    expected_bias = np.linalg.norm(planted_mean - true) / np.linalg.norm(true)
    assert abs(row.rel_bias - expected_bias) < 1e-12
    assert expected_bias > 0.05                         # the plant is visible (not a no-op)


def _cover(row, exact_mean, alpha=1e-3):
    se = np.asarray(row.mean_se)
    half = stats.norm.ppf(1 - alpha / (2 * len(se))) * se
    return bool(np.all(np.abs(np.asarray(row.mean) - exact_mean) <= half)), half


@pytest.mark.parametrize("name", ["marginal_st", "rloo S=4"])
def test_monte_carlo_intervals_cover_the_exact_moments(name):
    inst = suite.hand_made()[4]                           # gated sum, band [1, 3]
    est = _by_name(name)
    exact = lab.evaluate(est, inst.dist, inst.objective)[0]
    mc = lab.evaluate(est, inst.dist, inst.objective, samples=20_000, seed=5)[0]
    assert exact.method == "exact" and mc.method == "mc" and mc.n_samples == 20_000
    covered, half = _cover(mc, np.asarray(exact.mean))
    norm = np.linalg.norm(exact.true_grad)
    assert covered and np.linalg.norm(half) < 0.1 * norm
    lo, hi = mc.rel_bias_ci                                # 95 % interval of the lab itself
    assert lo <= exact.rel_bias <= hi
    # tr Cov within 5 standard errors (normal approximation; false-alarm rate ~6e-7)
    assert abs(mc.cov_trace - exact.cov_trace) <= 5 * mc.cov_trace_se
    # power: the planted estimator's exact mean differs from this one's and is not covered
    planted = lab.evaluate(catalog.planted_diag(), inst.dist, inst.objective)[0]
    if name == "marginal_st":
        assert not _cover(mc, np.asarray(planted.mean))[0]


def test_monte_carlo_is_reproducible_by_seed():
    inst = suite.hand_made()[3]
    est = _by_name("gumbel_st t=1")
    a, b = (lab.evaluate(est, inst.dist, inst.objective, samples=500, seed=2)[0] for _ in range(2))
    c = lab.evaluate(est, inst.dist, inst.objective, samples=500, seed=3)[0]
    assert a.mean == b.mean and a.mean != c.mean


def test_fixed_size_rules_skip_band_rows_and_topk_is_deterministic():
    inst = suite.hand_made()[4]
    names = {r.estimator for r in lab.evaluate(lab.default_estimators(), inst.dist, inst.objective)}
    assert "topk" not in names and "gumbel_st t=1" not in names and "marginal_st" in names
    row = lab.evaluate(_by_name("topk"), suite.hand_made()[3].dist, suite.hand_made()[3].objective)[0]
    assert row.cov_trace == 0 and np.allclose(row.mean, 0) and abs(row.rel_bias - 1) < 1e-15


def test_moe_regression_total_gradient_matches_finite_differences():
    """true_gradient (score part + direct part) against central differences of E[f] in theta."""
    rng = np.random.default_rng(0)
    theta = rng.normal(size=5)
    objective = objectives.random_objectives(5, rng)[2]

    def expected(t):
        d = pr.DynamicK(t, 1, 3)
        masks, probs = d.enumerate_support()
        return probs @ objective.value(masks, t)

    step = 1e-6
    fd = np.array([(expected(theta + step * e) - expected(theta - step * e)) / (2 * step)
                   for e in np.eye(5)])
    got = true_gradient(problem_of(pr.DynamicK(theta, 1, 3), objective))
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_objective_gradients_match_finite_differences(index):
    rng = np.random.default_rng(index)
    objective = objectives.random_objectives(5, rng)[index]
    z, theta, step = rng.uniform(size=(3, 5)), rng.normal(size=5), 1e-6
    fd_z = np.stack([(objective.value(z + step * e, theta) - objective.value(z - step * e, theta))
                     / (2 * step) for e in np.eye(5)], axis=1)
    fd_t = np.stack([(objective.value(z, theta + step * e) - objective.value(z, theta - step * e))
                     / (2 * step) for e in np.eye(5)], axis=1)
    np.testing.assert_allclose(objective.grad_z(z, theta), fd_z, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(objective.grad_theta(z, theta), fd_t, rtol=1e-6, atol=1e-7)


def test_hand_made_cases_are_those_of_the_docs_script():
    path = ROOT / "docs" / "scripts" / "straight_through_bias.py"
    spec = importlib.util.spec_from_file_location("straight_through_bias", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name in ("THETA", "EXPERTS", "TARGET", "AFFINE"):
        np.testing.assert_array_equal(getattr(suite, name), getattr(script, name))
    # and they give the script's straight-through numbers
    for (_, _, _, dist, f, _), inst in zip(script._cases(), suite.hand_made()):
        true = gradients.expectation_grad(dist, f)
        row = lab.evaluate(_by_name("marginal_st"), inst.dist, inst.objective)[0]
        np.testing.assert_allclose(row.true_grad, true, rtol=0, atol=1e-12)


def test_cli_runs_on_a_small_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "grid", lambda quick: suite.hand_made()[3:5])
    out_json, out_png = tmp_path / "lab.json", tmp_path / "lab.png"
    assert cli.main(["--quick", "--mc-samples", "300", "--json", str(out_json),
                     "--plot", str(out_png)]) == 0
    text = capsys.readouterr()
    assert "summary" in text.out and "marginal_st" in text.out and "MC N=300" in text.out
    assert "[  2/2]" in text.err                      # progress
    import json
    data = json.loads(out_json.read_text())
    assert len(data["results"]) == 2 and data["mc_samples"] == 300
    assert out_png.exists() or "matplotlib is not installed" in text.out


def test_committed_docs_outputs_match_the_lab():
    """docs/_generated/estimators_quick.json (behind the docs tables) is regenerated, not edited:
    its exact rows for the hand-made instances equal a fresh evaluation."""
    import json
    data = json.loads((ROOT / "docs" / "_generated" / "estimators_quick.json").read_text())
    exact = [e for e in lab.default_estimators() if e.kind != "noise"]
    for inst in suite.hand_made():
        stored = {r["estimator"]: r for r in data["results"][inst.label]}
        for row in lab.evaluate(exact, inst.dist, inst.objective):
            assert stored[row.estimator]["method"] == "exact"
            np.testing.assert_allclose(stored[row.estimator]["mean"], row.mean, rtol=0, atol=1e-9)
            assert abs(stored[row.estimator]["cov_trace"] - row.cov_trace) < 1e-9
    text = (ROOT / "docs" / "_generated" / "estimators_summary.rst.inc").read_text()
    assert f"N = {data['mc_samples']}" in text and data["quick"]
