#include "trainer/hf/hf_rope.h"

#include <cmath>
#include <set>

#include "configs/user_error.h"
#include "trainer/model/rope.h"

namespace sparsering::trainer {
namespace {

bool same_number(double a, double b) { return std::abs(a - b) <= 1e-9 * std::abs(b); }

const char* hf_type_name(config::RopeType type) {
  switch (type) {
    case config::RopeType::kDefault:
      return "default";
    case config::RopeType::kLinear:
      return "linear";
    case config::RopeType::kLlama3:
      return "llama3";
    case config::RopeType::kYarn:
      return "yarn";
  }
  return "?";
}

}  // namespace

std::string rope_type_name(config::RopeType type) {
  switch (type) {
    case config::RopeType::kDefault:
      return "DEFAULT";
    case config::RopeType::kLinear:
      return "LINEAR";
    case config::RopeType::kLlama3:
      return "LLAMA3";
    case config::RopeType::kYarn:
      return "YARN";
  }
  return "?";
}

config::ModelConfig hf_rope(const JsonValue& hf, const std::string& path,
                            const config::ModelConfig& model) {
  const auto refuse = [&](const std::string& what) {
    throw UserError(path + ": " + what + "; this trainer cannot load it");
  };
  config::ModelConfig rope = model;
  rope.rope_theta = 10000.0;
  rope.rope_type = config::RopeType::kDefault;
  rope.rope_scaling_factor = 1.0;
  rope.rope_original_max_context = 0;
  rope.rope_low_freq_factor = 1.0;
  rope.rope_high_freq_factor = 4.0;
  rope.rope_beta_fast = 32.0;
  rope.rope_beta_slow = 1.0;
  rope.rope_attention_factor = 0.0;
  rope.rope_truncate = true;
  if (const JsonValue* theta = hf.find("rope_theta"); theta && theta->is_number()) {
    rope.rope_theta = theta->number();
  }
  if (const JsonValue* partial = hf.find("partial_rotary_factor");
      partial && partial->is_number() && partial->number() != 1.0) {
    refuse("partial_rotary_factor " + partial->text + " (RoPE covers the whole head here)");
  }
  const JsonValue* max_positions = hf.find("max_position_embeddings");
  const double max_position_embeddings =
      max_positions && max_positions->is_number() ? max_positions->number() : model.max_context;

  // transformers 5 writes rope_parameters, 4 writes rope_scaling (null without scaling).
  const JsonValue* params = hf.find("rope_parameters");
  std::string key = "rope_parameters";
  if (!params || params->kind != JsonValue::Kind::kObject) {
    params = hf.find("rope_scaling");
    key = "rope_scaling";
  }
  if (!params || params->kind == JsonValue::Kind::kNull) {
    rope.rope_original_max_context = static_cast<int>(max_position_embeddings);
    return rope;
  }
  if (params->kind != JsonValue::Kind::kObject) refuse(key + " is not an object");
  if (params->find("full_attention") || params->find("sliding_attention")) {
    refuse(key + " per layer type (sliding-window attention)");
  }
  const JsonValue* type = params->find("rope_type");
  if (!type) type = params->find("type");
  const std::string type_text = type ? type->text : "default";
  static const std::set<std::string> kCommon = {"rope_type", "type", "rope_theta", "factor"};
  std::set<std::string> allowed = kCommon;
  if (type_text == "default") {
    rope.rope_type = config::RopeType::kDefault;
  } else if (type_text == "linear") {
    rope.rope_type = config::RopeType::kLinear;
  } else if (type_text == "llama3") {
    rope.rope_type = config::RopeType::kLlama3;
    allowed.insert({"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
  } else if (type_text == "yarn") {
    rope.rope_type = config::RopeType::kYarn;
    allowed.insert({"original_max_position_embeddings", "beta_fast", "beta_slow",
                    "attention_factor", "mscale", "mscale_all_dim", "truncate"});
  } else {
    refuse(key + ".rope_type \"" + type_text + "\" (supported: default, linear, llama3, yarn)");
  }
  for (const auto& [name, value] : params->members) {
    if (!allowed.count(name) && value.kind != JsonValue::Kind::kNull) {
      refuse(key + "." + name + " (not part of rope type " + type_text + " here)");
    }
  }
  const auto number = [&](const char* name, double fallback) {
    const JsonValue* value = params->find(name);
    if (!value || value->kind == JsonValue::Kind::kNull) return fallback;
    if (!value->is_number()) refuse(key + "." + name + " is not a number");
    return value->number();
  };
  rope.rope_theta = number("rope_theta", rope.rope_theta);
  rope.rope_original_max_context =
      static_cast<int>(number("original_max_position_embeddings", max_position_embeddings));
  const double factor_given = number("factor", 0.0);
  if (rope.rope_type == config::RopeType::kDefault) return rope;
  if (factor_given > 0) {
    rope.rope_scaling_factor = factor_given;
  } else if (rope.rope_type == config::RopeType::kYarn) {
    rope.rope_scaling_factor = max_position_embeddings / rope.rope_original_max_context;
  } else {
    refuse(key + " of type " + type_text + " without a factor");
  }
  if (rope.rope_type == config::RopeType::kLlama3) {
    rope.rope_low_freq_factor = number("low_freq_factor", NAN);
    rope.rope_high_freq_factor = number("high_freq_factor", NAN);
    if (std::isnan(rope.rope_low_freq_factor) || std::isnan(rope.rope_high_freq_factor)) {
      refuse(key + " of type llama3 needs low_freq_factor and high_freq_factor");
    }
  }
  if (rope.rope_type == config::RopeType::kYarn) {
    // transformers: `beta_fast or 32`, so 0 means the default too.
    const double fast = number("beta_fast", 0), slow = number("beta_slow", 0);
    rope.rope_beta_fast = fast != 0 ? fast : 32.0;
    rope.rope_beta_slow = slow != 0 ? slow : 1.0;
    const JsonValue* truncate = params->find("truncate");
    if (truncate && truncate->kind == JsonValue::Kind::kBool)
      rope.rope_truncate = truncate->boolean;
    const double factor = rope.rope_scaling_factor;
    const auto mscale_of = [&](double m) {
      return factor <= 1 ? 1.0 : 0.1 * m * std::log(factor) + 1;
    };
    const double attention = number("attention_factor", 0), mscale = number("mscale", 0),
                 mscale_all_dim = number("mscale_all_dim", 0);
    rope.rope_attention_factor = attention != 0 ? attention
                                 : mscale != 0 && mscale_all_dim != 0
                                     ? mscale_of(mscale) / mscale_of(mscale_all_dim)
                                     : mscale_of(1);
  }
  return rope;
}

std::vector<RopeField> compare_rope(const config::ModelConfig& c, const config::ModelConfig& m) {
  std::vector<RopeField> fields;
  const auto add_number = [&](const char* hf_key, const char* ours, double theirs, double mine) {
    fields.push_back(
        {hf_key, ours, json_number(theirs), json_number(mine), same_number(mine, theirs)});
  };
  fields.push_back({"rope type", "model.rope_type", rope_type_name(c.rope_type),
                    rope_type_name(m.rope_type), c.rope_type == m.rope_type});
  add_number("rope_theta", "model.rope_theta", c.rope_theta, m.rope_theta);
  if (c.rope_type == config::RopeType::kDefault) {
    add_number("rope factor", "model.rope_scaling_factor", 1.0, m.rope_scaling_factor);
    return fields;
  }
  add_number("factor", "model.rope_scaling_factor", c.rope_scaling_factor, m.rope_scaling_factor);
  if (c.rope_type == config::RopeType::kLinear) return fields;
  add_number("original_max_position_embeddings", "model.rope_original_max_context",
             rope_original_context(c), rope_original_context(m));
  if (c.rope_type == config::RopeType::kLlama3) {
    add_number("low_freq_factor", "model.rope_low_freq_factor", c.rope_low_freq_factor,
               m.rope_low_freq_factor);
    add_number("high_freq_factor", "model.rope_high_freq_factor", c.rope_high_freq_factor,
               m.rope_high_freq_factor);
    return fields;
  }
  add_number("beta_fast", "model.rope_beta_fast", c.rope_beta_fast, m.rope_beta_fast);
  add_number("beta_slow", "model.rope_beta_slow", c.rope_beta_slow, m.rope_beta_slow);
  add_number("attention_factor", "model.rope_attention_factor", yarn_attention_factor(c),
             yarn_attention_factor(m));
  fields.push_back({"truncate", "model.rope_truncate", c.rope_truncate ? "true" : "false",
                    m.rope_truncate ? "true" : "false", c.rope_truncate == m.rope_truncate});
  return fields;
}

std::string rope_config_json(const config::ModelConfig& m) {
  std::string json = "  \"rope_theta\": " + json_number(m.rope_theta) + ",\n  \"rope_scaling\": ";
  if (m.rope_type == config::RopeType::kDefault) return json + "null,\n";
  json += std::string("{\"rope_type\": \"") + hf_type_name(m.rope_type) +
          "\", \"factor\": " + json_number(m.rope_scaling_factor);
  if (m.rope_type != config::RopeType::kLinear) {
    json += ", \"original_max_position_embeddings\": " + std::to_string(rope_original_context(m));
  }
  if (m.rope_type == config::RopeType::kLlama3) {
    json += ", \"low_freq_factor\": " + json_number(m.rope_low_freq_factor) +
            ", \"high_freq_factor\": " + json_number(m.rope_high_freq_factor);
  }
  if (m.rope_type == config::RopeType::kYarn) {
    json += ", \"beta_fast\": " + json_number(m.rope_beta_fast) +
            ", \"beta_slow\": " + json_number(m.rope_beta_slow) +
            ", \"attention_factor\": " + json_number(yarn_attention_factor(m)) +
            ", \"truncate\": " + (m.rope_truncate ? "true" : "false");
  }
  return json + "},\n";
}

}  // namespace sparsering::trainer
