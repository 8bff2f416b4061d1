"""Random tiny models of the two Hugging Face families SparseRing imports, made by transformers,
and the `--set` overrides that give SparseRing the same architecture. Shared by hf_logits.py,
hf_roundtrip.py and bench/hf_family_gpu.py (which passes larger shapes)."""
import torch
import transformers

FAMILIES = ("llama", "qwen2")
# Each type in all its regimes for head dim 32 at an original context of 512: llama3 keeps high
# frequencies, smooths two and divides the rest; yarn ramps over dimensions 1..8 (theta 1e4) or
# 1..6 (theta 1e6) and scales cos/sin by 0.1 ln 8 + 1.
ROPE_TYPES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 512},
    "yarn": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512,
             "beta_fast": 32.0, "beta_slow": 1.0},
}
ROPE_OVERRIDES = {
    "default": ["model.rope_type=DEFAULT"],
    "linear": ["model.rope_type=LINEAR", "model.rope_scaling_factor=2"],
    "llama3": ["model.rope_type=LLAMA3", "model.rope_scaling_factor=8",
               "model.rope_original_max_context=512", "model.rope_low_freq_factor=1",
               "model.rope_high_freq_factor=4"],
    "yarn": ["model.rope_type=YARN", "model.rope_scaling_factor=8",
             "model.rope_original_max_context=512"],
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=256, max_position_embeddings=4096)


def family_config(family, rope, shape=None):
    """transformers config: Llama (theta 1e4, untied) or Qwen2 (theta 1e6, tied, q/k/v biases)."""
    shape = dict(TINY if shape is None else shape)
    theta = 10000.0 if family == "llama" else 1000000.0
    rope_parameters = dict(ROPE_TYPES[rope] or {"rope_type": "default"}, rope_theta=theta)
    # A wide init (0.2) makes the tiny models' logits far from uniform; shapes may set their own.
    common = dict({"initializer_range": 0.2, **shape}, rms_norm_eps=1e-6,
                  rope_parameters=rope_parameters)
    if family == "llama":
        return transformers.LlamaConfig(**common, tie_word_embeddings=False,
                                        attention_bias=False, mlp_bias=False)
    return transformers.Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False)


def random_model(family, rope, seed, shape=None):
    """A random fp32 model, every parameter exercised: norms away from 1, biases non-zero."""
    torch.manual_seed(seed)
    cls = transformers.LlamaForCausalLM if family == "llama" else transformers.Qwen2ForCausalLM
    model = cls(family_config(family, rope, shape)).to(torch.float32).eval()
    model.set_attn_implementation("eager")  # plain fp32 math on the CPU
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                parameter.uniform_(-0.5, 0.5)
    return model


def sparsering_overrides(family, rope, shape=None):
    """--set values for the model of family_config (our defaults differ in eps, theta, ...)."""
    shape = dict(TINY if shape is None else shape)
    theta = 10000.0 if family == "llama" else 1000000.0
    sets = [f"model.hidden_size={shape['hidden_size']}",
            f"model.ffn_hidden_size={shape['intermediate_size']}",
            f"model.num_layers={shape['num_hidden_layers']}",
            f"model.num_heads={shape['num_attention_heads']}",
            f"model.num_kv_heads={shape['num_key_value_heads']}",
            f"model.vocab_size={shape['vocab_size']}",
            f"model.max_context={shape['max_position_embeddings']}",
            "model.rms_norm_eps=1e-6", f"model.rope_theta={theta:g}",
            f"model.tie_embeddings={'true' if family == 'qwen2' else 'false'}",
            f"model.attention_bias={'true' if family == 'qwen2' else 'false'}"]
    sets += ROPE_OVERRIDES[rope]
    return [item for value in sets for item in ("--set", value)]


def per_document_logits(model, tokens, document_lengths):
    """transformers on each document alone, at its global positions (RoPE positions stay global
    under SparseRing's document mask), concatenated: [tokens, vocab]."""
    logits, start = [], 0
    with torch.no_grad():
        for length in document_lengths:
            document = tokens[start:start + length]
            positions = torch.arange(start, start + length)[None]
            logits.append(model(document[None], position_ids=positions).logits[0])
            start += length
    return torch.cat(logits)
