"""The Triton backend (``probmoe::route_fwd`` / ``route_bwd``) against probmoe_ref and the
torch path: values, every gradient, the sampler, reproducibility, errors, torch.compile.

Without CUDA the kernels run under ``TRITON_INTERPRET=1`` (tests/conftest.py) at small sizes;
with CUDA the same tests run the compiled kernels. Tolerances: DESIGN.md §6 via
verify.tolerances.
"""

import numpy as np
import probmoe_ref as pr
import pytest
import torch
from hypothesis import given, settings

import probmoe_fast as pf
from probmoe_fast.ops import backend as backend_module
from probmoe_ref import gradients as rg
from verify import strategies as vs
from verify.stats import binomial_family, chi_square_gof, chi_square_samples
from verify.tolerances import log_partition_tol, marginal_tol, vjp_tol

pytest.importorskip("triton")
from probmoe_fast.ops.triton_route import draw_seed, route_fwd  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NEG_INF = float("-inf")
ALPHA = 1e-4   # per-test false-alarm rate of each statistical test
TV = 0.03      # smallest total-variation defect the chi-square must catch ...
POWER = 0.99   # ... with this probability (sample size from verify.stats.chi_square_samples)


def _reference(theta, k_min, k_max, phi):
    if k_min == k_max and phi is None:
        return pr.ExactK(theta, k_min)
    return pr.DynamicK(theta, k_min, k_max, size_logits=phi)


def _triton_outputs(theta, k_min, k_max, phi):
    """``(log Z, m, p)`` of one row through the op, with a graph to differentiate."""
    t = torch.tensor(theta, dtype=torch.float32, device=DEVICE)[None].requires_grad_()
    s = None if phi is None else torch.tensor(phi, dtype=torch.float32,
                                              device=DEVICE)[None].requires_grad_()
    log_z, m, p, _, _ = route_fwd(t, s, k_min, k_max, draw_seed(None, t.device), False)
    return t, s, log_z, m, p


def _check_against_reference(theta, k_min, k_max, phi):
    seen = torch.tensor(theta, dtype=torch.float32).double().numpy()
    ref = _reference(seen, k_min, k_max, phi)
    t, s, log_z, m, p = _triton_outputs(theta, k_min, k_max, phi)
    tol_m = marginal_tol(seen[None], k_max, torch.float32)[0]
    np.testing.assert_allclose(m[0].detach().double().cpu().numpy(), ref.marginals, atol=tol_m, rtol=0)
    ref_log_z = float(ref.log_partition)
    assert abs(float(log_z.detach()) - ref_log_z) <= log_partition_tol(np.array([ref_log_z]),
                                                              torch.float32)[0]
    ref_p = np.asarray(ref.size_probs, float) if k_min != k_max or phi is not None else [1.0]
    np.testing.assert_allclose(p[0].detach().double().cpu().numpy(), ref_p, atol=tol_m, rtol=0)
    assert (m[0][torch.as_tensor(np.isneginf(theta))] == 0).all()
    # every gradient: the VJP of (log Z, m, p) with cotangents (g, v, w) is
    # d/dtheta E[f] + g m and d/dphi E[f] + g p, f(S) = v . z + w_{|S| - k_min}
    rng = np.random.default_rng(len(theta) + 7 * k_max)
    v, w, g = rng.normal(size=len(theta)), rng.normal(size=k_max - k_min + 1), rng.normal()
    inputs = (t,) if s is None else (t, s)
    grads = torch.autograd.grad(
        (log_z, m, p), inputs,
        (torch.tensor([g], dtype=torch.float32, device=DEVICE),
         torch.tensor(v[None], dtype=torch.float32, device=DEVICE),
         torch.tensor(w[None], dtype=torch.float32, device=DEVICE)))

    def f(mask):
        return float(v @ mask + w[int(mask.sum()) - k_min])

    want = rg.expectation_grad(ref, f) + g * np.asarray(ref.marginals)
    tol = vjp_tol(seen[None], k_max, torch.float32, np.r_[v, w, g][None], want[None])[0]
    np.testing.assert_allclose(grads[0][0].double().cpu().numpy(), want, atol=tol, rtol=0)
    if s is not None:
        want_phi = rg.expectation_grad_size_logits(ref, f) + g * np.asarray(ref.size_probs)
        np.testing.assert_allclose(grads[1][0].double().cpu().numpy(), want_phi, atol=tol,
                                   rtol=0)
    assert all(torch.isfinite(x).all() for x in grads)


@settings(max_examples=25)
@given(vs.exact_k_cases(min_n=1, max_n=7))
def test_exact_k_values_and_gradients_match_reference(case):
    theta, k = case
    _check_against_reference(theta, k, k, None)


@settings(max_examples=25)
@given(vs.band_cases(min_n=1, max_n=7))
def test_band_values_and_gradients_match_reference(case):
    theta, k_min, k_max, phi = case
    _check_against_reference(theta, k_min, k_max, phi)


@pytest.mark.parametrize("theta,k_min,k_max,phi", [
    ([0.0, 0.0, 0.0, 0.0, 375.0], 1, 4, None),        # the float32 band case of issue 3
    ([1e4, 0.0, -1e4, 5.0, NEG_INF], 2, 2, None),     # spread 2e4 with a mask
    ([2.0, 2.0, 2.0, 2.0, 2.0, 2.0], 3, 3, None),     # all tied
    ([0.5, NEG_INF, NEG_INF, 1.0], 1, 4, [0.0, 1.0, -2.0, 3.0]),  # band past the finite count
    ([0.3, -0.2, 1.0], 0, 0, None),                   # k = 0: the empty subset
    ([0.3, -0.2, 1.0], 3, 3, None),                   # k = n: the full subset
])
def test_edge_rows_match_reference(theta, k_min, k_max, phi):
    _check_against_reference(np.asarray(theta, float), k_min, k_max,
                             None if phi is None else np.asarray(phi, float))


@pytest.mark.parametrize("n,k,scale", [
    (64, 8, 3.0),     # the MoE size
    (64, 8, 30.0),    # wide logits (spread ~ 200)
    (130, 17, 3.0),   # n and k past a power of two (padding of both axes)
])
def test_matches_torch_path_in_a_batch(n, k, scale):
    """Several rows in one launch, values and the Cov(z) v backward vs the torch backend."""
    g = torch.Generator().manual_seed(n + k)
    theta = (torch.randn(5, n, generator=g) * scale).to(DEVICE)
    theta[1, :: 3] = NEG_INF
    cot = torch.randn(5, n, generator=g).to(DEVICE)
    out = {}
    for backend in ("torch", "triton"):
        t = theta.clone().requires_grad_()
        d = pf.DynamicK(t, 1, k, backend=backend)
        (grad,) = torch.autograd.grad((d.marginals * cot).sum() + d.log_partition.sum(), t)
        out[backend] = (d.marginals, d.log_partition, d.size_probs, grad)
    tol = 1e-5 + 1e-8 * 6 * scale * 10
    for a, b in zip(out["torch"], out["triton"]):
        torch.testing.assert_close(b, a, atol=tol, rtol=1e-5)


CASES = [
    # (logits, k_min, k_max, size_logits): the edge case each row covers
    ([0.3, -1.2, 2.0, NEG_INF, 0.0, 0.7], 3, 3, None),         # Exact-k, one masked expert
    ([50.0, 0.0, 0.5, -1.0, 1.0, 0.2], 3, 3, None),            # one dominant expert
    ([1.0, 1.0, 1.0, -2.0, 0.5], 2, 2, None),                  # ties
    ([0.4, NEG_INF, -0.3, 1.1, 0.0], 1, 3, [0.5, -0.2, 1.0]),  # band, size logits, mask
]


@pytest.mark.parametrize("logits,k_min,k_max,phi", CASES)
def test_sampler_chi_square_over_all_subsets(logits, k_min, k_max, phi):
    theta = np.asarray(logits)
    ref = _reference(theta, k_min, k_max, None if phi is None else np.asarray(phi))
    masks, probs = (np.asarray(a, float) for a in ref.enumerate_support())
    n_draws = chi_square_samples(len(probs), ALPHA, TV, POWER)
    t = torch.tensor(logits, dtype=torch.float32, device=DEVICE)
    s = None if phi is None else torch.tensor(phi, dtype=torch.float32, device=DEVICE)
    z = pf.sample_and_marginals(t, k_min, k_max, s, (n_draws,),
                                torch.Generator(DEVICE).manual_seed(3), backend="triton")[0]
    codes = z.cpu().numpy().astype(np.int64) @ (1 << np.arange(len(logits)))
    cells = masks.astype(np.int64) @ (1 << np.arange(len(logits)))
    assert np.isin(codes, cells).all(), "a sample outside the support (or a masked expert)"
    counts = np.array([(codes == c).sum() for c in cells])
    assert chi_square_gof(counts, probs, ALPHA).p_value > ALPHA


def test_inclusion_frequencies_n64_band():
    """Per-expert inclusion counts at n = 64 against the exact marginals (binomial family,
    Bonferroni over the 64 experts at ALPHA; 4000 draws detect a 0.035 shift at m = 0.5)."""
    g = torch.Generator().manual_seed(5)
    theta = (torch.randn(64, generator=g) * 2.0).to(DEVICE)
    z, m = pf.sample_and_marginals(theta, 2, 8, None, (4000,),
                                   torch.Generator(DEVICE).manual_seed(9), backend="triton")
    ref = pr.DynamicK(theta.double().cpu().numpy(), 2, 8)
    counts = z.sum(0).cpu().numpy()
    assert binomial_family(counts, 4000, np.asarray(ref.marginals), ALPHA).p_value > ALPHA
    assert ((z.sum(-1) >= 2) & (z.sum(-1) <= 8)).all()


def test_route_same_generator_same_routing_and_weights_match_torch_rule():
    theta = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    runs = [pf.route(theta, k_min=1, k_max=4, backend="triton",
                     generator=torch.Generator(DEVICE).manual_seed(1)) for _ in range(2)]
    other = pf.route(theta, k_min=1, k_max=4, backend="triton",
                     generator=torch.Generator(DEVICE).manual_seed(2))
    assert torch.equal(runs[0].indices, runs[1].indices)
    assert not torch.equal(runs[0].indices, other.indices)
    r = runs[0]
    # selected slots carry softmax(theta) at the selected experts (value z = 1)
    want = torch.softmax(theta, -1).gather(-1, r.indices) * r.valid
    torch.testing.assert_close(r.weights, want)
    assert torch.isfinite(r.marginals).all()


def test_route_backward_is_cov_times_v():
    """The training gradient through the weights is Cov(z)(v * s) + J_gate^T(v * z), with the
    sample fixed (the torch backend gives the same from the same z)."""
    theta = torch.randn(4, 8, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    cot = torch.randn(4, 3, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    grads = []
    for backend in ("triton", "torch"):
        t = theta.clone().requires_grad_()
        r = pf.route(t, k=3, backend=backend, generator=torch.Generator(DEVICE).manual_seed(1))
        (grad,) = torch.autograd.grad((r.weights * cot.gather(-1, r.indices.argsort(-1)
                                                                .argsort(-1))).sum(), t)
        grads.append((r.indices.sort(-1).values, grad))
    if torch.equal(grads[0][0], grads[1][0]):  # same subsets drawn: same gradient
        torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(grads[0][1]).all()


def test_double_backward_goes_through_the_torch_path():
    t = torch.randn(3, 6, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    v = torch.randn(3, 6, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    results = []
    for backend in ("triton", "torch"):
        x = t.clone().requires_grad_()
        (g,) = torch.autograd.grad((pf.ExactK(x, 2, backend=backend).marginals * v).sum(), x,
                                   create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        results.append((g, gg))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-5)


def test_opcheck_and_compile_trace_the_custom_op():
    theta = torch.randn(5, 7, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    phi = torch.randn(5, 3, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    seed = draw_seed(torch.Generator(DEVICE).manual_seed(0), theta.device)
    torch.library.opcheck(route_fwd, (theta.requires_grad_(), phi, 2, 4, seed, True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))

    def step(x, s):
        log_z, m, p, idx, sizes = route_fwd(x, s, 2, 4, seed, True)
        return log_z.sum() + (m * m).sum() + p[:, 0].sum(), idx, sizes

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager_out, compiled_out = step(theta, phi), compiled(theta, phi)
    for a, b in zip(eager_out, compiled_out):
        torch.testing.assert_close(b, a)
    (g_eager,) = torch.autograd.grad(eager_out[0], theta)
    (g_compiled,) = torch.autograd.grad(compiled(theta, phi)[0], theta)
    torch.testing.assert_close(g_compiled, g_eager)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_run_in_float32(dtype):
    theta = torch.randn(3, 9, generator=torch.Generator().manual_seed(8)).to(dtype).to(DEVICE)
    d = pf.DynamicK(theta, 2, 5, backend="triton")
    assert d.marginals.dtype == torch.float32
    ref = pr.DynamicK(theta.double().cpu().numpy(), 2, 5)
    np.testing.assert_allclose(d.marginals.detach().double().cpu().numpy(), ref.marginals, atol=2e-6,
                               rtol=0)


def test_backend_errors_name_the_problem(monkeypatch):
    with pytest.raises(ValueError, match="float64"):
        pf.ExactK(torch.randn(2, 4, dtype=torch.float64), 2, backend="triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            pf.route(torch.randn(2, 4), k=2, backend="triton")
        # "auto" never picks Triton on the CPU
        assert backend_module.resolve_backend("auto", torch.randn(2, 4)) == "torch"
    else:
        assert backend_module.resolve_backend("auto", torch.randn(2, 4, device=DEVICE)) == "triton"


def test_many_blocks_per_program_and_padding_rows(monkeypatch):
    """Tiny tiles and two persistent programs: every program loops over several token blocks
    and the last block is mostly padding; results equal the default launch."""
    from probmoe_fast.ops import triton_route

    theta = torch.randn(13, 9, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    theta[4, 2:5] = NEG_INF
    phi = torch.randn(13, 4, generator=torch.Generator().manual_seed(11)).to(DEVICE)
    cot = torch.randn(13, 9, generator=torch.Generator().manual_seed(12)).to(DEVICE)

    def run():
        t = theta.clone().requires_grad_()
        seed = draw_seed(torch.Generator(DEVICE).manual_seed(0), t.device)
        log_z, m, p, idx, sizes = route_fwd(t, phi, 2, 5, seed, True)
        (grad,) = torch.autograd.grad((m * cot).sum() + log_z.sum() + p.sum(), t)
        return log_z, m, p, idx, sizes, grad

    default = run()
    original = triton_route._launch_shape

    def tiny(T, k_max, device):
        KP = original(T, k_max, device)[0]
        return KP, 4, -(-T // 4), 2

    monkeypatch.setattr(triton_route, "_launch_shape", tiny)
    for a, b in zip(default, run()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


def test_route_compiles_as_one_graph_without_validation():
    """``torch.compile(fullgraph=True)`` traces a whole Triton routing step (validation off,
    the default generator: an explicit ``torch.Generator`` is a graph break in dynamo)."""
    theta = torch.randn(6, 8, generator=torch.Generator().manual_seed(13)).to(DEVICE)

    def step(x):
        r = pf.route(x, k_min=1, k_max=3, backend="triton", validate_args=False)
        return (r.weights * torch.arange(3, device=x.device)).sum(), r.valid.sum(-1)

    x = theta.clone().requires_grad_()
    loss, sizes = torch.compile(step, backend="aot_eager", fullgraph=True)(x)
    loss.backward()
    assert ((sizes >= 1) & (sizes <= 3)).all()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_statistics_without_a_draw_leave_the_generators_alone():
    """``marginals``/``log_partition`` on the Triton backend draw no seed: the default
    generator's state is the same before and after (as on the torch backend)."""
    theta = torch.randn(4, 6, generator=torch.Generator().manual_seed(14)).to(DEVICE)
    default = torch.cuda if DEVICE == "cuda" else torch
    before = default.get_rng_state()
    d = pf.DynamicK(theta, 1, 3, backend="triton")
    d.marginals, d.log_partition, d.size_probs
    assert torch.equal(default.get_rng_state(), before)


def test_moe_layer_on_the_triton_backend_dispatches_only_the_drawn_pairs():
    """ProbMoE with backend="triton", Dynamic-k 1..4: the experts see exactly the valid
    (token, expert) pairs, the same generator gives the same output, every gradient is finite."""
    layer = pf.ProbMoE(16, 8, 6, k_min=1, k_max=4, backend="triton", expert_path="loop").to(DEVICE)
    seen = []
    layer.experts.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(15)).to(DEVICE)
    y, aux = layer(x, generator=torch.Generator(DEVICE).manual_seed(1))
    y_again, _ = layer(x, generator=torch.Generator(DEVICE).manual_seed(1))
    torch.testing.assert_close(y_again, y, rtol=0, atol=0)
    assert seen[0] == int(aux["routing"].valid.sum()) and aux["routing"].valid.sum(-1).min() >= 1
    y.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert layer.router.gate.weight.grad.abs().sum() > 0
