r"""Train the same small MoE language model with each routing-gradient estimator and compare.

Estimators (:mod:`probmoe_fast.ops.estimators`), all Exact-k with k = 2 of 8 experts, through
``ProbRouter(estimator=...)``: the paper's marginal straight-through (``marginal_st``), the
deterministic ``topk`` rule (gradient only through the selected softmax weights), the
``mixed_marginal`` variant (α = 0.5), I-MLE with the exact Exact-k target (``imle_exact``) and
perturb-and-MAP I-MLE (``imle``), straight-through Gumbel top-k (``gumbel_st``, τ = 1), and the
score function with the leave-one-out baseline over S = 2 draws per token (``rloo``: two forward
passes per step, so **twice the expert compute in training**, and the REINFORCE term needs the
per-token loss, which this model has because a token's routing only changes its own prediction).
Model, data, optimizer, Switch aux loss (0.01) and seeds as in :mod:`compare_routers`; every model
is evaluated with the same MAP (top-2) routing.

I-MLE's λ is a step on the *per-token* loss: the training loss is a mean over the T tokens of a
step, so the script passes λ = λ₀ · T (λ₀ = 1), which makes the per-token finite difference the
one the estimator's definition intends. ``gumbel_soft`` is not trained: its forward pass weights
every expert (dense), which the sparse layer does not compute.

Printed: validation loss, load entropy, load CV, MaxVio and mean active experts, mean ± std over
seeds, then what the numbers show (which estimator is lowest and whether each gap exceeds twice
the seed-to-seed spread). A toy: 400 steps of a 32-token vocabulary; it ranks estimators on this
task only, and says nothing about large models or longer training.

A recorded run of the defaults (3 seeds × 400 steps, CPU, torch 2.13), validation loss in nats
(topic-known floor 1.486, topic-blind bigram 2.547): rloo S=2 2.018 ± 0.012, topk 2.023 ± 0.013,
gumbel_st 2.059 ± 0.035, marginal_st 2.060 ± 0.032, mixed_marginal 2.064 ± 0.021, imle_exact
2.074 ± 0.026, imle 2.121 ± 0.028, all at 2 active experts at inference. RLOO (at twice the
training compute) and top-k are lowest and within each other's spread; marginal_st, gumbel_st and
mixed_marginal are about 0.04 nats behind, within twice the seed spread of the best for the first
two; perturb-and-MAP I-MLE is clearly last. RLOO also has the least even load (load CV 0.34
against 0.17–0.25). Three seeds resolve only gaps of a few hundredths of a nat.

Run: ``python examples/estimators_train.py`` (3 seeds x 400 steps; the recorded run took 21
minutes on 2 CPU cores shared with other jobs); ``--steps``/``--seeds`` change the budget.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import probmoe_fast as pf
from compare_routers import TinyMoELM, evaluate
from probmoe_fast.ops.estimators import Estimator, rloo_surrogate
from run_report import loss_verdicts, make_progress, mean_std, print_findings, print_table
from synthetic_topics import TopicMarkovLanguage

K = 2
RLOO = "rloo S=2"


def estimators(tokens_per_step: int) -> dict[str, Estimator]:
    lam = 1.0 * tokens_per_step
    return {
        "marginal_st": Estimator("marginal_st"),
        "topk": Estimator("topk"),
        "mixed_marginal a=0.5": Estimator("mixed_marginal", alpha=0.5),
        "imle_exact l0=1": Estimator("imle_exact", lam=lam),
        "imle l0=1": Estimator("imle", lam=lam),
        "gumbel_st t=1": Estimator("gumbel_st", tau=1.0),
        RLOO: Estimator("score_function"),
    }


def _log_prob_of_routes(routing, k: int) -> torch.Tensor:
    mask = torch.zeros_like(routing.logits, dtype=torch.float32).scatter_(
        -1, routing.indices, routing.valid.float())
    return pf.ExactK(routing.logits.float(), k).log_prob(mask)


def _step_loss(model, batch, route_gen, name):
    """Training loss of one batch: CE + 0.01 Switch loss (+ the RLOO surrogate over 2 draws)."""
    draws = 2 if name == RLOO else 1
    ces, log_probs, balance = [], [], 0.0
    for _ in range(draws):
        logits, aux = model(batch[:, :-1], generator=route_gen)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                             reduction="none")
        ces.append(ce)
        balance = balance + aux["load_balance_loss"] / draws
        if name == RLOO:
            log_probs.append(_log_prob_of_routes(aux["routing"], K))
    ce = torch.stack(ces)
    loss = ce.mean() + 0.01 * balance
    if name == RLOO:
        loss = loss + rloo_surrogate(ce, torch.stack(log_probs)).mean()
    return loss, ce.mean().item()


def train_one(name, spec, seed, args, language, val, progress):
    torch.manual_seed(seed)
    router = pf.ProbRouter(args.d_model, args.experts, k=K, estimator=spec)
    model = TinyMoELM(language.vocab, args.d_model, args.d_ff, args.experts, k=K, router=router)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    data_gen = torch.Generator().manual_seed(1000 + seed)
    route_gen = torch.Generator().manual_seed(2000 + seed)
    for step in range(args.steps):
        batch, _ = language.sample(args.batch, args.length + 1, data_gen)
        loss, ce = _step_loss(model, batch, route_gen, name)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(f"{name} seed {seed}", step + 1, args.steps, ce)
    return evaluate(model, val)


def conclusions(results) -> list[str]:
    loss = {n: mean_std([r["loss"] for r in rs]) for n, rs in results.items()}
    best = min(loss, key=lambda n: loss[n][0])
    lines = [f"lowest validation loss: {best} ({loss[best][0]:.4f})"]
    lines += loss_verdicts(loss, best, len(next(iter(results.values()))))
    lines.append(f"{RLOO} trains with two forward passes per step (2x expert compute); the others "
                 "with one")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--d-model", dest="d_model", type=int, default=64)
    parser.add_argument("--d-ff", dest="d_ff", type=int, default=64)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    language = TopicMarkovLanguage(generator=torch.Generator().manual_seed(0))
    val, val_topics = language.sample(64, args.length + 1, torch.Generator().manual_seed(1))
    specs = estimators(args.batch * args.length)
    progress, close = make_progress()
    results = {name: [] for name in specs}
    for seed in range(args.seeds):
        for name, spec in specs.items():
            results[name].append(train_one(name, spec, seed, args, language, val, progress))
    close()
    cols = [("loss", "val loss"), ("entropy", "load ent"), ("cv", "load CV"),
            ("maxvio", "MaxVio"), ("active", "active")]
    print(f"\n{args.seeds} seeds x {args.steps} steps, {args.batch}x{args.length} tokens/step, "
          f"{args.experts} experts, Exact-{K}; mean ± std over seeds (validation, MAP routing)")
    print_table(results, cols, "estimator", width=22)
    print_findings(language.reference_losses(val, val_topics), conclusions(results), time.time() - start)


if __name__ == "__main__":
    main()
