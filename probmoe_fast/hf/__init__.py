r"""ProbMoE routing inside Hugging Face transformers MoE models (the optional extra ``hf``).

.. code-block:: python

    import probmoe_fast.hf as pfh
    model = AutoModelForCausalLM.from_pretrained(...)        # or from_config(...)
    pfh.apply_probmoe(model, k=8)                             # Exact-k, in place
    pfh.apply_probmoe(model, k_min=2, k_max=8, learn_size_logits=True)   # Dynamic-k
    model.save_pretrained(d)
    model = pfh.from_pretrained(d)                            # the saved routing restored

Supported families (``config.model_type``): OLMoE, Qwen2-MoE, Qwen3-MoE, Mixtral, GPT-OSS and
DeepSeek-V3 (:mod:`probmoe_fast.hf._families` has what each router computes). Training routes
with an exact sample and straight-through weights, eval with the mode (:func:`probmoe_fast.route`);
with ``k = num_experts_per_tok`` and the model's normalisation, eval reproduces the unpatched
model. The experts implementation ``"probmoe"`` (registered in transformers'
``ExpertsInterface`` on import, selected per model) computes only the selected (token, expert)
pairs. Nothing outside the patched model instance changes. See the "Hugging Face models" page
of the docs for the recipe and the caveats.

Importing this module without transformers 5.x raises ``ImportError`` naming the extra.
"""

from __future__ import annotations

try:
    import transformers
    from transformers.integrations.moe import ExpertsInterface
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError("probmoe_fast.hf needs transformers 5.x: pip install 'probmoe[hf]'") from err

if int(transformers.__version__.split(".")[0]) != 5:
    raise ImportError(f"probmoe_fast.hf needs transformers 5.x, found {transformers.__version__}: "
                      f"pip install 'probmoe[hf]'")

from ._checkpoint import from_pretrained  # noqa: E402
from ._experts import probmoe_experts_forward  # noqa: E402
from ._families import FAMILIES  # noqa: E402
from ._model import apply_probmoe, routing_stats  # noqa: E402
from ._router import EXPERTS_IMPLEMENTATION  # noqa: E402

ExpertsInterface.register(EXPERTS_IMPLEMENTATION, probmoe_experts_forward)

SUPPORTED_MODEL_TYPES = tuple(FAMILIES)

__all__ = ["apply_probmoe", "from_pretrained", "routing_stats", "EXPERTS_IMPLEMENTATION",
           "SUPPORTED_MODEL_TYPES"]
