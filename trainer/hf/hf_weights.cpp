#include "trainer/hf/hf_weights.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include "configs/user_error.h"
#include "trainer/hf/hf_rope.h"
#include "trainer/hf/json.h"

namespace sparsering::trainer {
namespace {

// Per-layer parameters: our name after "block{i}." and transformers' after "model.layers.{i}.".
const std::pair<const char*, const char*> kLayerNames[] = {
    {"attention_norm.weight", "input_layernorm.weight"},
    {"attention.q_proj.weight", "self_attn.q_proj.weight"},
    {"attention.q_proj.bias", "self_attn.q_proj.bias"},
    {"attention.k_proj.weight", "self_attn.k_proj.weight"},
    {"attention.k_proj.bias", "self_attn.k_proj.bias"},
    {"attention.v_proj.weight", "self_attn.v_proj.weight"},
    {"attention.v_proj.bias", "self_attn.v_proj.bias"},
    {"attention.o_proj.weight", "self_attn.o_proj.weight"},
    {"mlp_norm.weight", "post_attention_layernorm.weight"},
    {"mlp.gate_proj.weight", "mlp.gate_proj.weight"},
    {"mlp.up_proj.weight", "mlp.up_proj.weight"},
    {"mlp.down_proj.weight", "mlp.down_proj.weight"}};
const std::pair<const char*, const char*> kModelNames[] = {
    {"embedding.weight", "model.embed_tokens.weight"},
    {"final_norm.weight", "model.norm.weight"},
    {"lm_head.weight", "lm_head.weight"}};

// Splits "<prefix><digits>.<rest>" into the layer and rest.
std::optional<std::pair<int, std::string>> split_layer(const std::string& name,
                                                       const std::string& prefix) {
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  const size_t dot = name.find('.', prefix.size());
  const std::string digits = name.substr(prefix.size(), dot - prefix.size());
  if (dot == std::string::npos || digits.empty() || digits.size() > 6 ||
      digits.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  return std::make_pair(std::stoi(digits), name.substr(dot + 1));
}

std::string shape_text(at::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

std::string read_text(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw UserError(path + ": cannot read (a Hugging Face model directory has one)");
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

bool same_number(double a, double b) { return std::abs(a - b) <= 1e-9 * std::abs(b); }

}  // namespace

std::string hf_name(const std::string& ours) {
  for (const auto& [mine, theirs] : kModelNames) {
    if (ours == mine) return theirs;
  }
  if (const auto split = split_layer(ours, "block")) {
    for (const auto& [mine, theirs] : kLayerNames) {
      if (split->second == mine) {
        return "model.layers." + std::to_string(split->first) + "." + theirs;
      }
    }
  }
  throw std::invalid_argument("no Hugging Face name for parameter " + ours);
}

std::optional<std::string> our_name(const std::string& hf) {
  for (const auto& [mine, theirs] : kModelNames) {
    if (hf == theirs) return std::string(mine);
  }
  if (const auto split = split_layer(hf, "model.layers.")) {
    for (const auto& [mine, theirs] : kLayerNames) {
      if (split->second == theirs) return "block" + std::to_string(split->first) + "." + mine;
    }
  }
  return std::nullopt;
}

std::string check_hf_config(const std::string& dir, const config::ModelConfig& model,
                            bool lm_head_stored) {
  const std::string path = dir + "/config.json";
  const JsonValue hf = parse_json(read_text(path), path);
  const auto refuse = [&](const std::string& what) {
    throw UserError(path + ": " + what + "; this trainer cannot load it");
  };
  const auto number = [&](const char* key, std::optional<double> fallback) -> double {
    const JsonValue* value = hf.find(key);
    if (value && value->is_number()) return value->number();
    if (fallback && (!value || value->kind == JsonValue::Kind::kNull)) return *fallback;
    throw UserError(path + ": field " + key + " is missing or not a number");
  };
  const auto flag = [&](const char* key) {
    const JsonValue* value = hf.find(key);
    return value && value->kind == JsonValue::Kind::kBool && value->boolean;
  };

  const JsonValue* type = hf.find("model_type");
  if (!type || (type->text != "llama" && type->text != "qwen2")) {
    refuse("model_type \"" + (type ? type->text : std::string("(none)")) +
           "\" (llama and qwen2 are supported)");
  }
  const bool qwen2 = type->text == "qwen2";
  if (const JsonValue* architectures = hf.find("architectures")) {
    for (const auto& name : architectures->items) {
      if (name.text != "LlamaForCausalLM" && name.text != "Qwen2ForCausalLM") {
        refuse("architecture " + name.text + " (LlamaForCausalLM and Qwen2ForCausalLM are)");
      }
    }
  }
  if (const JsonValue* act = hf.find("hidden_act"); act && act->text != "silu") {
    refuse("hidden_act \"" + act->text + "\" (the MLP is SwiGLU: silu)");
  }
  // Llama's attention_bias adds an o_proj bias too; Qwen2's q/k/v biases are implied.
  if (!qwen2 && flag("attention_bias")) refuse("attention_bias is true for llama (o_proj bias)");
  if (flag("mlp_bias")) refuse("mlp_bias is true (no MLP biases here)");
  if (flag("use_sliding_window")) refuse("use_sliding_window is true (sliding-window attention)");
  if (const JsonValue* layer_types = hf.find("layer_types")) {
    for (const auto& layer_type : layer_types->items) {
      if (layer_type.text != "full_attention") {
        refuse("layer_types has \"" + layer_type.text + "\" (only full_attention layers)");
      }
    }
  }
  const double heads = number("num_attention_heads", std::nullopt);
  const double hidden = number("hidden_size", std::nullopt);
  if (const JsonValue* head_dim = hf.find("head_dim"); head_dim && head_dim->is_number()) {
    if (head_dim->number() * heads != hidden) {
      refuse("head_dim " + head_dim->text + " is not hidden_size / num_attention_heads (" +
             json_number(hidden / heads) + ")");
    }
  }
  const bool tied = flag("tie_word_embeddings") || !lm_head_stored;
  struct Field {
    const char* hf_key;
    const char* ours;
    double theirs, mine;
    bool is_bool;
  };
  const Field fields[] = {
      {"hidden_size", "model.hidden_size", hidden, double(model.hidden_size), false},
      {"num_hidden_layers", "model.num_layers", number("num_hidden_layers", std::nullopt),
       double(model.num_layers), false},
      {"num_attention_heads", "model.num_heads", heads, double(model.num_heads), false},
      {"num_key_value_heads", "model.num_kv_heads", number("num_key_value_heads", heads),
       double(model.num_kv_heads), false},
      {"intermediate_size", "model.ffn_hidden_size", number("intermediate_size", std::nullopt),
       double(model.ffn_hidden_size), false},
      {"vocab_size", "model.vocab_size", number("vocab_size", std::nullopt),
       double(model.vocab_size), false},
      {"rms_norm_eps", "model.rms_norm_eps", number("rms_norm_eps", 1e-6), model.rms_norm_eps,
       false},
      {"tie_word_embeddings", "model.tie_embeddings", tied ? 1.0 : 0.0,
       model.tie_embeddings ? 1.0 : 0.0, true},
      {"model_type (q/k/v biases)", "model.attention_bias", qwen2 ? 1.0 : 0.0,
       model.attention_bias ? 1.0 : 0.0, true}};
  std::string mismatches, overrides;
  const auto add = [&](const std::string& hf_key, const std::string& ours,
                       const std::string& theirs, const std::string& mine) {
    mismatches +=
        (mismatches.empty() ? "" : ", ") + hf_key + " " + theirs + " vs " + ours + " " + mine;
    overrides += " --set " + ours + "=" + theirs;
  };
  for (const auto& field : fields) {
    if (same_number(field.mine, field.theirs)) continue;
    const auto text = [&](double v) {
      return field.is_bool ? std::string(v != 0 ? "true" : "false") : json_number(v);
    };
    add(field.hf_key, field.ours, text(field.theirs), text(field.mine));
  }
  // RoPE: equal to the checkpoint's unless model.rope_override extends the context on purpose.
  std::string rope_changes;
  for (const auto& field : compare_rope(hf_rope(hf, path, model), model)) {
    if (field.equal) continue;
    if (model.rope_override) {
      rope_changes += (rope_changes.empty() ? "" : ", ") + field.ours + " " + field.mine_text +
                      " (checkpoint " + field.hf_key + " " + field.theirs_text + ")";
    } else {
      add(field.hf_key, field.ours, field.theirs_text, field.mine_text);
    }
  }
  if (!mismatches.empty()) {
    throw UserError(path + " does not match the model config: " + mismatches +
                    "; to match it, add:" + overrides);
  }
  return rope_changes;
}

std::vector<SafetensorsEntry> match_hf_entries(const std::vector<SafetensorsEntry>& hf,
                                               const std::vector<std::string>& names,
                                               const std::vector<at::Tensor>& ours,
                                               const std::string& source) {
  std::map<std::string, const SafetensorsEntry*> by_name;
  for (const auto& entry : hf) by_name[entry.name] = &entry;
  std::vector<SafetensorsEntry> matched;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string theirs = hf_name(names[i]);
    const auto found = by_name.find(theirs);
    if (found == by_name.end()) {
      throw UserError(source + ": no tensor " + theirs + " (for our " + names[i] + ")");
    }
    const SafetensorsEntry& entry = *found->second;
    if (at::IntArrayRef(entry.shape) != ours[i].sizes()) {
      throw UserError(source + ": tensor " + theirs + " has shape " + shape_text(entry.shape) +
                      ", our " + names[i] + " expects " + shape_text(ours[i].sizes()));
    }
    matched.push_back(entry);
    by_name.erase(found);
  }
  for (const auto& [name, entry] : by_name) {
    // RoPE tables some exports store, and lm_head when both sides tie it to the embedding.
    if (name.find("rotary_emb.inv_freq") != std::string::npos || name == "lm_head.weight") {
      continue;
    }
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    throw UserError(source + ": unexpected tensor " + name + " " + shape_text(entry->shape) +
                    (bias ? ": a bias, and the model config has none (model.attention_bias gives "
                            "q/k/v biases only)"
                          : ": not part of the configured model"));
  }
  return matched;
}

std::string hf_config_json(const config::Experiment& experiment, at::ScalarType dtype) {
  const config::ModelConfig& m = experiment.model;
  // Qwen2's q/k/v biases are its architecture; Llama without biases otherwise.
  const bool qwen2 = m.attention_bias;
  std::ostringstream json;
  json << "{\n"
       << "  \"architectures\": [\"" << (qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM")
       << "\"],\n"
       << "  \"model_type\": \"" << (qwen2 ? "qwen2" : "llama") << "\",\n"
       << "  \"hidden_size\": " << m.hidden_size << ",\n"
       << "  \"intermediate_size\": " << m.ffn_hidden_size << ",\n"
       << "  \"num_hidden_layers\": " << m.num_layers << ",\n"
       << "  \"num_attention_heads\": " << m.num_heads << ",\n"
       << "  \"num_key_value_heads\": " << m.num_kv_heads << ",\n"
       << "  \"head_dim\": " << m.head_dim() << ",\n"
       << "  \"vocab_size\": " << m.vocab_size << ",\n"
       << "  \"max_position_embeddings\": " << m.max_context << ",\n"
       << rope_config_json(m) << "  \"rms_norm_eps\": " << json_number(m.rms_norm_eps) << ",\n"
       << "  \"hidden_act\": \"silu\",\n";
  if (qwen2) {
    json << "  \"use_sliding_window\": false,\n"
         << "  \"sliding_window\": null,\n"
         << "  \"max_window_layers\": " << m.num_layers << ",\n";
  } else {
    json << "  \"attention_bias\": false,\n"
         << "  \"mlp_bias\": false,\n";
  }
  json << "  \"tie_word_embeddings\": " << (m.tie_embeddings ? "true" : "false") << ",\n"
       << "  \"initializer_range\": " << json_number(m.init_std) << ",\n"
       << "  \"torch_dtype\": \"" << (dtype == at::kBFloat16 ? "bfloat16" : "float32") << "\",\n"
       << "  \"use_cache\": true\n"
       << "}\n";
  return json.str();
}

}  // namespace sparsering::trainer
