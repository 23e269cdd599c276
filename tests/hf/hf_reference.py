"""A per-token reference for a ProbMoE-routed transformers model, written without probmoe_fast.hf.

``reference_model(vanilla, **band)`` deep-copies an unpatched model and replaces, on the copy's
instances only, each router's ``forward`` by: the router logits written out, the routing
distribution's logits (DeepSeek-V3: the rescaled logit of sigma(l) + b computed directly, groups
masked), ``probmoe_fast.route`` for the draw, the weights by formula; and each experts module's
``forward`` by a Python loop over tokens and slots on the raw expert weights. Same global RNG state
→ same draws as the patched model.
"""

from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F

import probmoe_fast as pf


def _logits(router, h):
    logits = h @ router.weight.T
    bias = getattr(router, "bias", None)
    return logits if bias is None else logits + bias


def deepseek_theta(router, logits):
    """θ = logit(p), p = (σ(l) + b − min b) / (1 + max b − min b); −∞ outside the kept groups."""
    b = router.e_score_correction_bias.to(logits.dtype)
    p = (torch.sigmoid(logits) + b - b.min()) / (1 + b.max() - b.min())
    theta = torch.log(p) - torch.log1p(-p)
    scores = (torch.sigmoid(logits) + b).detach()
    n_groups, per_group = router.num_group, logits.shape[-1] // router.num_group
    keep = torch.zeros_like(theta, dtype=torch.bool)
    for t in range(logits.shape[0]):
        group_score = [scores[t, g * per_group:(g + 1) * per_group].topk(2).values.sum()
                       for g in range(n_groups)]
        for g in torch.stack(group_score).topk(router.topk_group).indices.tolist():
            keep[t, g * per_group:(g + 1) * per_group] = True
    return theta.masked_fill(~keep, float("-inf"))


def _router_forward(band, normalize, gate, model_type):
    def forward(self, hidden_states):
        h = hidden_states.reshape(-1, self.hidden_dim)
        logits = _logits(self, h)
        theta = deepseek_theta(self, logits) if model_type == "deepseek_v3" else logits
        r = pf.route(theta, **band, size_logits=getattr(self, "ref_size_logits", None),
                     training=self.training, normalize=normalize, gate=gate)
        if model_type != "deepseek_v3":
            weights = r.weights
        else:
            m = r.marginals.gather(-1, r.indices)
            weights = (torch.sigmoid(logits).gather(-1, r.indices) * r.valid
                       * (1 + (m - m.detach())))
            if normalize:
                weights = weights / weights.sum(-1, keepdim=True)
            weights = weights * self.routed_scaling_factor
        indices = torch.where(r.valid, r.indices, torch.full_like(r.indices, -1))
        self.ref_routing = r
        return logits, weights, indices
    return forward


def _expert(module, e, x):
    if getattr(module, "is_transposed", False):   # GPT-OSS: interleaved gate/up, clamped GLU
        gate_up = x @ module.gate_up_proj[e] + module.gate_up_proj_bias[e]
        gate, up = gate_up[::2].clamp(max=module.limit), gate_up[1::2].clamp(-module.limit,
                                                                          module.limit)
        h = (up + 1) * gate * torch.sigmoid(gate * module.alpha)
        return h @ module.down_proj[e] + module.down_proj_bias[e]
    gate_up = module.gate_up_proj[e] @ x
    gate, up = gate_up.chunk(2)
    return module.down_proj[e] @ (module.act_fn(gate) * up)


def _experts_forward(self, hidden_states, top_k_index, top_k_weights):
    rows = []
    for t in range(hidden_states.shape[0]):
        y = torch.zeros_like(hidden_states[t])
        for s in range(top_k_index.shape[1]):
            e = int(top_k_index[t, s])
            if e >= 0:
                y = y + top_k_weights[t, s] * _expert(self, e, hidden_states[t])
        rows.append(y)
    return torch.stack(rows)


def routers_and_experts(model):
    """The routers and experts modules of a model, in module order."""
    routers = [m for n, m in model.named_modules() if n.endswith((".gate", ".router"))
               and hasattr(m, "top_k")]
    experts = [m for n, m in model.named_modules() if n.endswith(".experts")]
    return routers, experts


def reference_model(vanilla, model_type, *, band, normalize, gate, size_logits=None):
    ref = copy.deepcopy(vanilla)
    routers, experts = routers_and_experts(ref)
    forward = _router_forward(band, normalize, gate, model_type)
    for i, router in enumerate(routers):
        router.forward = types.MethodType(forward, router)
        if size_logits is not None:
            router.ref_size_logits = torch.nn.Parameter(size_logits[i].detach().clone())
    for module in experts:
        module.forward = types.MethodType(_experts_forward, module)
    return ref
