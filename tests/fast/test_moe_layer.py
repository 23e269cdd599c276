"""ProbMoE equals a naive per-token loop (float64): output and every gradient; dispatch count,
grouped-GEMM vs loop path, determinism, dtypes (bf16 parameters, autocast), module conventions."""

import pytest
import torch
import torch.nn.functional as F

from probmoe_fast.nn import ExpertBank, ProbMoE, TopKRouter

T, D_MODEL, D_FF, E = 12, 8, 6, 5
_ACT = {"swiglu": F.silu, "geglu": F.gelu}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def naive_moe(layer, x, routing, activation):
    """The oracle: loop over tokens and their valid slots, one expert matrix-vector at a time."""
    act = _ACT[activation]
    gate_up, down = layer.experts.gate_up, layer.experts.down
    rows = []
    for t in range(x.shape[0]):
        y = torch.zeros(D_MODEL, dtype=x.dtype)
        for s in range(routing.indices.shape[1]):
            if routing.valid[t, s]:
                e = int(routing.indices[t, s])
                h = gate_up[e] @ x[t]
                y = y + routing.weights[t, s] * (down[e] @ (act(h[:D_FF]) * h[D_FF:]))
        if layer.shared is not None:
            width = layer.shared.width
            h = layer.shared.gate_up @ x[t]
            y = y + layer.shared.down @ (act(h[:width]) * h[width:])
        rows.append(y)
    return torch.stack(rows)


def grads(layer, x, y, cotangent):
    params = [x] + [p for p in layer.parameters()]
    return torch.autograd.grad((y * cotangent).sum(), params, allow_unused=True)


CASES = [
    # Exact-k training: sampled subset, straight-through weights.
    dict(k=2),
    # Dynamic-k training with learned size logits, GeGLU, shared experts: invalid slots skipped.
    dict(k_min=1, k_max=3, learn_size_logits=True, activation="geglu", n_shared_experts=2),
    # Exact-k with normalized sigmoid gate weights.
    dict(k=3, normalize=True, gate="sigmoid"),
    # k = n: every expert, a single subset (marginals all 1, zero router gradient through m).
    dict(k=E),
    # k = 0: no routed expert at all; only the shared expert contributes.
    dict(k=0, n_shared_experts=1),
    # Dynamic-k over the full band [1, n].
    dict(k_min=1, k_max=E, normalize=True),
    # The top-k baseline router, normalized.
    dict(k=2, router="topk", normalize=True),
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kwargs", CASES)
def test_layer_equals_naive_loop_float64(kwargs, training):
    torch.manual_seed(0)
    layer = ProbMoE(D_MODEL, D_FF, E, expert_path="loop", dtype=torch.float64, **kwargs)
    if kwargs.get("learn_size_logits"):
        with torch.no_grad():
            layer.router.size_logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    layer.train(training)
    x = torch.randn(T, D_MODEL, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(T, D_MODEL, dtype=torch.float64)

    y, aux = layer(x, generator=gen(7))
    routing = layer.router(x, generator=gen(7))
    y_ref = naive_moe(layer, x, routing, kwargs.get("activation", "swiglu"))
    assert torch.equal(aux["routing"].indices, routing.indices)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)

    names = ["x"] + [n for n, _ in layer.named_parameters()]
    got, want = grads(layer, x, y, cot), grads(layer, x, y_ref, cot)
    for name, g, w in zip(names, got, want):
        if w is None:  # e.g. k = 0: no expert weight is used; the layer must not invent a grad
            assert g is None or torch.count_nonzero(g) == 0, name
            continue
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize("band", [(2, 2), (1, 4)])  # Exact-k (all valid) and Dynamic-k
def test_experts_see_exactly_the_valid_pairs(band):
    layer = ProbMoE(16, 8, 6, k_min=band[0], k_max=band[1], expert_path="loop")
    if band[0] == band[1]:
        layer = ProbMoE(16, 8, 6, k=band[0], expert_path="loop")
    seen = []
    layer.experts.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    x = torch.randn(64, 16)
    _, aux = layer(x, generator=gen(1))
    valid = aux["routing"].valid
    assert seen == [int(valid.sum())]
    sizes = valid.sum(-1)
    assert int(aux["tokens_per_expert"].sum()) == int(sizes.sum())
    selected = aux["routing"].indices[valid]
    assert torch.equal(aux["tokens_per_expert"], torch.bincount(selected, minlength=6))
    assert torch.equal(aux["size_histogram"], torch.bincount(sizes, minlength=band[1] + 1))
    assert aux["active_experts"].item() == pytest.approx(sizes.double().mean().item())
    if band[0] < band[1]:  # the band really varies the size, so padding would have been visible
        assert sizes.min() < band[1]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_grouped_gemm_path_equals_loop(dtype, tol):
    torch.manual_seed(0)
    loop = ProbMoE(16, 8, 6, k_min=1, k_max=3, expert_path="loop", dtype=dtype)
    grouped = ProbMoE(16, 8, 6, k_min=1, k_max=3, expert_path="grouped", dtype=dtype)
    grouped.load_state_dict(loop.state_dict())
    assert grouped.experts.uses_grouped_mm(torch.zeros(1, 16, dtype=dtype))
    outs = []
    for layer in (loop, grouped):
        x = torch.randn(40, 16, generator=gen(3)).to(dtype).requires_grad_()
        y, _ = layer(x, generator=gen(4))
        y.float().square().sum().backward()
        outs.append([y.float(), x.grad.float(), layer.experts.gate_up.grad.float(),
                     layer.experts.down.grad.float(), layer.router.gate.weight.grad.float()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_auto_path_choice():
    layer = ProbMoE(16, 8, 4, k=2)
    assert layer.experts.uses_grouped_mm(torch.zeros(1, 16))  # float32, 16-byte rows, CPU
    assert not layer.experts.uses_grouped_mm(torch.zeros(1, 16, dtype=torch.float64))
    odd = ProbMoE(6, 3, 4, k=2)  # 24-byte / 12-byte rows: not 16-byte aligned
    assert not odd.experts.uses_grouped_mm(torch.zeros(1, 6))


def test_same_generator_same_routing_and_eval_is_deterministic_top_k():
    layer = ProbMoE(16, 8, 6, k=2)
    x = torch.randn(2, 10, 16)  # leading batch dims are flattened and restored
    y1, a1 = layer(x, generator=gen(5))
    y2, a2 = layer(x, generator=gen(5))
    assert y1.shape == x.shape
    assert torch.equal(y1, y2) and torch.equal(a1["routing"].indices, a2["routing"].indices)
    _, a3 = layer(x, generator=gen(6))
    assert not torch.equal(a1["routing"].indices, a3["routing"].indices)  # 20 tokens, 15 subsets

    layer.eval()
    y4, a4 = layer(x, generator=gen(5))
    y5, a5 = layer(x, generator=gen(6))
    assert torch.equal(y4, y5)
    logits = a4["routing"].logits
    top2 = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :2]
    assert torch.equal(a4["routing"].indices.sort(-1).values, top2.sort(-1).values)
    assert a4["routing"].marginals is None and "expected_load_loss" not in a4


def test_bf16_parameters_and_autocast():
    torch.manual_seed(0)
    ref = ProbMoE(16, 8, 6, k=2, n_shared_experts=1).eval()
    x = torch.randn(32, 16)
    y_ref, a_ref = ref(x)

    bf16 = ProbMoE(16, 8, 6, k=2, n_shared_experts=1, dtype=torch.bfloat16).eval()
    bf16.load_state_dict(ref.state_dict())
    xb = x.bfloat16().requires_grad_()
    yb, ab = bf16(xb)
    assert yb.dtype == torch.bfloat16 and ab["routing"].weights.dtype == torch.float32
    yb.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in bf16.parameters())

    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya, aa = ref(x)
    assert ya.dtype == torch.bfloat16

    # Training under autocast: the sampled routing and its straight-through gradient still work.
    band = ProbMoE(16, 8, 6, k_min=1, k_max=3, learn_size_logits=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yt, at = band(x, generator=gen(0))
        loss = yt.float().square().mean() + at["expected_load_loss"]
    assert at["routing"].logits.dtype == torch.bfloat16
    assert at["routing"].marginals.dtype == torch.float32
    loss.backward()
    for name, p in band.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name
    assert torch.count_nonzero(band.router.size_logits.grad) > 0

    # Where bf16 rounding did not flip the routing, the outputs agree to bf16 precision.
    for y, a in ((yb, ab), (ya, aa)):
        same = (a["routing"].indices == a_ref["routing"].indices).all(-1)
        assert same.sum() >= 16  # most tokens keep their routing (random logits, few near-ties)
        torch.testing.assert_close(y.float()[same], y_ref[same], rtol=5e-2, atol=5e-2)


def test_module_conventions():
    layer = ProbMoE(8, 4, 5, k_min=1, k_max=3, learn_size_logits=True, n_shared_experts=1,
                       dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer.experts.gate_up.shape == (5, 8, 8) and layer.experts.down.shape == (5, 8, 4)
    assert layer.shared.gate_up.shape == (8, 8) and layer.shared.down.shape == (8, 4)
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(7.0)
    layer.reset_parameters()
    assert torch.count_nonzero(layer.router.size_logits) == 0
    assert layer.experts.gate_up.abs().max() <= 8 ** -0.5
    assert layer.experts.down.abs().max() <= 4 ** -0.5
    assert (layer.experts.gate_up != 7.0).all() and (layer.router.gate.weight != 7.0).all()
    text = repr(layer)
    for part in ("k_min=1, k_max=3", "n_experts=5", "activation='swiglu'", "n_shared_experts=1"):
        assert part in text
    meta = ProbMoE(8, 4, 5, k=2, device="meta")
    assert all(p.device.type == "meta" for p in meta.parameters())


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=2, k_min=1, k_max=2), "either k"),            # both forms given
    (dict(), "k"),                                        # neither given
    (dict(k=6), "k must satisfy"),                        # k > n
    (dict(k_min=0, k_max=2), "k_min"),                    # band starts at 0
    (dict(k=2, router="topk", k_max=3), "topk"),          # top-k has no band
    (dict(k=2, router="hash"), "router must be"),         # unknown router
    (dict(k=2, activation="relu"), "activation"),         # unknown activation
])
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProbMoE(8, 4, 5, **kwargs)


@pytest.mark.parametrize("counts", [
    [10, 0, 15, 5],   # an expert with no tokens in the middle
    [0, 0, 0, 0],     # nothing dispatched at all
    [0, 0, 0, 30],    # everything on the last expert
])
def test_expert_bank_paths_agree_under_an_expanded_gradient(counts):
    # y.sum().backward() sends a stride-0 gradient, which grouped_mm's CPU backward rejects raw.
    torch.manual_seed(0)
    grouped = ExpertBank(4, 16, 8, path="grouped")
    loop = ExpertBank(4, 16, 8, path="loop")
    loop.load_state_dict(grouped.state_dict())
    x = torch.randn(sum(counts), 16, requires_grad=True)
    results = []
    for bank in (grouped, loop):
        y = bank(x, torch.tensor(counts))
        assert y.shape == (sum(counts), 16)
        if y.requires_grad:
            y.sum().backward()
        results.append((y.detach(), None if x.grad is None else x.grad.clone(),
                        bank.gate_up.grad, bank.down.grad))
        x.grad = None
    for a, b in zip(*results):
        if a is None or b is None:
            assert a is None or torch.count_nonzero(a) == 0
            assert b is None or torch.count_nonzero(b) == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_router_module_instance_and_input_width_check():
    router = TopKRouter(8, 5, 1)
    layer = ProbMoE(8, 4, 5, router=router)
    assert layer.router is router
    _, aux = layer(torch.randn(3, 8))
    assert aux["routing"].indices.shape == (3, 1) and int(aux["tokens_per_expert"].sum()) == 3
    with pytest.raises(ValueError, match="d_model = 8"):
        layer(torch.randn(3, 7))


@pytest.mark.parametrize("counts", [[3, 3], [3, 3, 3, 3], [3, 3, 3]])  # E = 2, E = 4, 9 != 10 rows
def test_expert_bank_rejects_counts_that_do_not_cover_the_rows(counts):
    with pytest.raises(ValueError, match="counts"):
        ExpertBank(3, 16, 8)(torch.randn(10, 16), torch.tensor(counts))
