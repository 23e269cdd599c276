r"""A locally generated language with topics, for the router comparison demo (no downloads).

Each sequence has a hidden topic :math:`c \in \{0, \dots, C-1\}`; tokens follow a topic-specific
first-order Markov chain over a shared vocabulary,

.. math::

    x_1 \sim \mathrm{Uniform}(V), \qquad
    x_{t+1} \mid x_t, c \sim \mathrm{softmax}(\beta A^{(c)}_{x_t}),

where each row of :math:`A^{(c)}` has a few large entries (its likely successors), so the next
token is predictable only once the topic is inferred from the context. A model that routes
tokens of different topics to different experts can specialize; a router that collapses onto
few experts wastes capacity.

=============  ==============  ====================================
name           shape           dtype
=============  ==============  ====================================
tokens         ``(B, L)``      int64 token ids in ``[0, V)``
topics         ``(B,)``        int64 hidden topic of each sequence
=============  ==============  ====================================

Cost: :math:`O(B L V)` time; the tables are :math:`O(C V^2)`.
"""

from __future__ import annotations

import torch


class TopicMarkovLanguage:
    """Topic-conditioned Markov chains; every draw takes an explicit ``torch.Generator``."""

    def __init__(self, vocab: int = 32, topics: int = 4, successors: int = 3,
                 sharpness: float = 5.0, generator: torch.Generator | None = None) -> None:
        self.vocab, self.topics = vocab, topics
        logits = torch.zeros(topics, vocab, vocab)
        for c in range(topics):
            for v in range(vocab):
                likely = torch.randperm(vocab, generator=generator)[:successors]
                logits[c, v, likely] = sharpness
        self.transitions = torch.softmax(logits, dim=-1)  # (C, V, V)

    def sample(self, batch: int, length: int, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (B, L) int64, topics (B,) int64)``."""
        topic = torch.randint(self.topics, (batch,), generator=generator)
        tokens = torch.empty(batch, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(self.vocab, (batch,), generator=generator)
        for t in range(1, length):
            probs = self.transitions[topic, tokens[:, t - 1]]
            tokens[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return tokens, topic

    def reference_losses(self, tokens: torch.Tensor, topics: torch.Tensor) -> dict[str, float]:
        r"""Mean next-token loss (nats) on ``tokens`` of two fixed predictors: the floor
        :math:`-\log P_c(x_{t+1} \mid x_t)` that knows the topic, and the topic-blind mixture
        :math:`-\log \frac1C \sum_c P_c(x_{t+1} \mid x_t)`. A model below the second has
        learned to use the topic."""
        prev, nxt = tokens[:, :-1], tokens[:, 1:]
        known = self.transitions[topics[:, None], prev, nxt]
        blind = self.transitions[:, prev, nxt].mean(0)
        return {"topic known (floor)": -known.log().mean().item(),
                "topic-blind bigram": -blind.log().mean().item()}
