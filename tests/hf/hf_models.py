"""Tiny random configs of the six supported families (hidden 64, 2 layers, 8 experts, vocab 61)."""

from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, DeepseekV3Config, GptOssConfig, MixtralConfig,
                          OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig)

VOCAB = 61
_COMMON = dict(hidden_size=64, num_hidden_layers=2, vocab_size=VOCAB, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, num_experts_per_tok=2,
               pad_token_id=0, bos_token_id=1, eos_token_id=2)


def config(model_type: str, **overrides):
    """The tiny config of a family (expert width 24: its GEMM shapes are unique in the model)."""
    common = {**_COMMON, **overrides}
    if model_type == "olmoe":
        return OlmoeConfig(**common, intermediate_size=24, num_experts=8)
    if model_type == "qwen2_moe":
        return Qwen2MoeConfig(**common, intermediate_size=40, moe_intermediate_size=24,
                              shared_expert_intermediate_size=32, num_experts=8,
                              norm_topk_prob=True)
    if model_type == "qwen3_moe":
        return Qwen3MoeConfig(**common, intermediate_size=40, moe_intermediate_size=24,
                              num_experts=8, head_dim=16)
    if model_type == "mixtral":
        return MixtralConfig(**common, intermediate_size=24, num_local_experts=8)
    if model_type == "deepseek_v3":
        # MLA with fewer kv heads than heads breaks transformers' padded-mask path (vanilla too)
        common["num_key_value_heads"] = common["num_attention_heads"]
        return DeepseekV3Config(**common, intermediate_size=40, moe_intermediate_size=24,
                                n_routed_experts=8, n_group=2, topk_group=1,
                                first_k_dense_replace=0, n_shared_experts=1, q_lora_rank=None,
                                kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                                v_head_dim=16, routed_scaling_factor=2.5,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if model_type == "gpt_oss":
        return GptOssConfig(**common, intermediate_size=24, num_local_experts=8, head_dim=16,
                            layer_types=["full_attention"] * 2)
    raise KeyError(model_type)


MODEL_TYPES = ("olmoe", "qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v3", "gpt_oss")


def model(model_type: str, seed: int = 0, dtype=torch.float64, **overrides):
    """A randomly initialised tiny causal LM (eager experts: valid for any dtype), in eval mode;
    DeepSeek-V3 gets a non-zero correction bias and GPT-OSS non-zero expert biases, so that the
    tests see them."""
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config(model_type, **overrides),
                                         experts_implementation="eager").to(dtype)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("_proj_bias"):
                p.normal_(0.0, 0.05)
        for name, b in m.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, dtype=b.dtype) * 0.1)
    return m.eval()


def tokens(seed: int, batch: int = 2, length: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)
