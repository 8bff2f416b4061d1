// RoPE between a Hugging Face config.json and model.rope_*: reads rope_theta and rope_scaling
// (transformers 4) or rope_parameters (transformers 5), resolves the defaults transformers fills
// in (YaRN's beta_fast / beta_slow / attention factor, the original context), and writes them
// back for export. Types other than default, linear, llama3 and yarn are refused by name.
#pragma once

#include <string>
#include <vector>

#include "configs/config.h"
#include "trainer/hf/json.h"

namespace sparsering::trainer {

// One RoPE value of a checkpoint against the model config: the config.json key, our field, and
// both values as text (the --set value when they differ).
struct RopeField {
  std::string hf_key, ours, theirs_text, mine_text;
  bool equal;
};

// The checkpoint's RoPE, resolved as transformers resolves it, as a model config would hold it.
// Throws UserError naming `path` and the field for an unsupported type or key.
config::ModelConfig hf_rope(const JsonValue& hf, const std::string& path,
                            const config::ModelConfig& model);

// The RoPE fields that define `checkpoint`'s rope type, compared with `model`'s.
std::vector<RopeField> compare_rope(const config::ModelConfig& checkpoint,
                                    const config::ModelConfig& model);

// "rope_theta": ..., "rope_scaling": {...} or null, as config.json lines (2-space indent, each
// ending ",\n"), with every resolved value written out.
std::string rope_config_json(const config::ModelConfig& model);

// DEFAULT / LINEAR / LLAMA3 / YARN.
std::string rope_type_name(config::RopeType type);

}  // namespace sparsering::trainer
