// safetensors reading/writing and the Hugging Face name, shape and config.json mapping.
#include "trainer/hf/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>

#include "configs/config.h"
#include "configs/user_error.h"
#include "data_test_util.h"
#include "trainer/hf/hf_weights.h"

namespace sparsering {
namespace {

using testing::ScopedTempDir;
using trainer::NamedTensors;

NamedTensors sample_tensors(at::ScalarType dtype) {
  return {{"model.embed_tokens.weight", at::randn({5, 3}).to(dtype)},
          {"scalar", at::randn({}).to(dtype)},
          {"empty", at::empty({0, 4}, at::TensorOptions().dtype(dtype))},
          {"model.norm.weight", at::randn({7}).to(dtype)}};
}

void expect_same(const NamedTensors& a, const NamedTensors& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second.scalar_type(), b[i].second.scalar_type()) << a[i].first;
    EXPECT_EQ(a[i].second.sizes(), b[i].second.sizes()) << a[i].first;
    EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
  }
}

void expect_user_error(const std::string& path, const std::string& fragment) {
  try {
    trainer::read_safetensors(path);
    ADD_FAILURE() << "no error for " << fragment;
  } catch (const UserError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST(Safetensors, RoundTripsEachDtype) {
  ScopedTempDir dir;
  for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    const auto tensors = sample_tensors(dtype);
    const std::string path = dir.file("t.safetensors");
    trainer::write_safetensors(path, tensors, {{"format", "pt"}});
    const std::string bytes = testing::read_bytes(path);
    uint64_t header = 0;
    std::memcpy(&header, bytes.data(), 8);
    EXPECT_EQ((8 + header) % 8, 0u) << "tensor data must start 8-byte aligned";
    expect_same(trainer::read_safetensors(path), tensors);
  }
}

TEST(Safetensors, ShardedDirectoryRoundTrips) {
  ScopedTempDir dir;
  const auto tensors = sample_tensors(at::kFloat);
  const auto files = trainer::write_safetensors_dir(dir.path(), tensors, /*max_shard_bytes=*/40);
  EXPECT_EQ(files.size(), 3u);  // two shards (60 bytes, then 32) and the index
  EXPECT_EQ(files.back(), dir.file("model.safetensors.index.json"));
  expect_same(trainer::read_safetensors_dir(dir.path()), tensors);
  // Everything in one file replaces the sharded layout.
  EXPECT_EQ(trainer::write_safetensors_dir(dir.path(), tensors, 1 << 20).size(), 1u);
  expect_same(trainer::read_safetensors_dir(dir.path()), tensors);
  ScopedTempDir empty;
  EXPECT_THROW(trainer::read_safetensors_dir(empty.path()), UserError);
}

TEST(Safetensors, RejectsTruncatedAndCorruptFiles) {
  ScopedTempDir dir;
  const std::string good = dir.file("good.safetensors");
  trainer::write_safetensors(good, sample_tensors(at::kFloat));
  const std::string bytes = testing::read_bytes(good);
  const std::string path = dir.file("bad.safetensors");

  testing::write_bytes(path, bytes.substr(0, 5));
  expect_user_error(path, "truncated");
  testing::write_bytes(path, bytes.substr(0, 40));  // inside the header
  expect_user_error(path, "header length");
  testing::write_bytes(path, bytes.substr(0, bytes.size() - 4));  // the last tensor is cut
  expect_user_error(path, "truncated: tensor model.norm.weight");
  std::string garbage = bytes;
  garbage[8] = '[';  // the header is no longer an object
  testing::write_bytes(path, garbage);
  expect_user_error(path, "malformed JSON");
  garbage = bytes;
  garbage.replace(garbage.find("\"F32\""), 5, "\"I64\"");
  testing::write_bytes(path, garbage);
  expect_user_error(path, "dtype I64");
  garbage = bytes;
  garbage.replace(garbage.find("[5, 3]"), 6, "[5, 4]");  // shape no longer fits its offsets
  testing::write_bytes(path, garbage);
  expect_user_error(path, "data_offsets");
  garbage = bytes;
  garbage[7] = 1;  // a header length of 2^56
  testing::write_bytes(path, garbage);
  expect_user_error(path, "header length");
}

TEST(HfWeights, NamesMapBothWays) {
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"embedding.weight", "model.embed_tokens.weight"},
      {"block0.attention_norm.weight", "model.layers.0.input_layernorm.weight"},
      {"block12.attention.k_proj.weight", "model.layers.12.self_attn.k_proj.weight"},
      {"block1.mlp_norm.weight", "model.layers.1.post_attention_layernorm.weight"},
      {"block3.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"},
      {"final_norm.weight", "model.norm.weight"},
      {"lm_head.weight", "lm_head.weight"}};
  for (const auto& [ours, hf] : pairs) {
    EXPECT_EQ(trainer::hf_name(ours), hf);
    EXPECT_EQ(trainer::our_name(hf), ours);
  }
  for (const char* q : {"q", "k", "v", "o"}) {
    const std::string ours = std::string("block7.attention.") + q + "_proj.weight";
    EXPECT_EQ(trainer::our_name(trainer::hf_name(ours)), ours);
  }
  // Qwen2's q/k/v biases map; o_proj and the MLP have none.
  EXPECT_EQ(trainer::our_name("model.layers.0.self_attn.q_proj.bias"),
            "block0.attention.q_proj.bias");
  EXPECT_EQ(trainer::hf_name("block2.attention.v_proj.bias"),
            "model.layers.2.self_attn.v_proj.bias");
  EXPECT_FALSE(trainer::our_name("model.layers.0.self_attn.o_proj.bias"));
  EXPECT_FALSE(trainer::our_name("model.layers.x.mlp.up_proj.weight"));
  EXPECT_THROW(trainer::hf_name("block0.attention.o_proj.bias"), std::invalid_argument);
}

TEST(HfWeights, MatchesTensorsAndRefusesMismatches) {
  const std::vector<std::string> names = {"embedding.weight", "block0.attention.q_proj.weight"};
  const std::vector<at::Tensor> ours = {at::zeros({8, 4}), at::zeros({4, 4})};
  const NamedTensors hf = {
      {"model.layers.0.self_attn.q_proj.weight", at::randn({4, 4}).to(at::kHalf)},
      {"model.embed_tokens.weight", at::randn({8, 4}).to(at::kBFloat16)},
      {"model.layers.0.self_attn.rotary_emb.inv_freq", at::randn({2})}};
  ScopedTempDir dir;
  const auto entries_of = [&](const NamedTensors& tensors) {
    trainer::write_safetensors(dir.file("model.safetensors"), tensors);
    return trainer::list_safetensors_dir(dir.path());
  };
  const auto matched = trainer::match_hf_entries(entries_of(hf), names, ours, "dir");
  ASSERT_EQ(matched.size(), 2u);
  EXPECT_EQ(matched[0].name, "model.embed_tokens.weight");
  EXPECT_TRUE(at::equal(trainer::read_safetensors_entry(matched[0]), hf[1].second));
  EXPECT_TRUE(at::equal(trainer::read_safetensors_entry(matched[1]), hf[0].second));

  const auto message_of = [&](const NamedTensors& tensors) {
    try {
      trainer::match_hf_entries(entries_of(tensors), names, ours, "dir");
    } catch (const UserError& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  NamedTensors wrong_shape = hf;
  wrong_shape[1].second = at::randn({9, 4});
  EXPECT_NE(message_of(wrong_shape)
                .find("model.embed_tokens.weight has shape [9, 4], our "
                      "embedding.weight expects [8, 4]"),
            std::string::npos)
      << message_of(wrong_shape);
  NamedTensors with_bias = hf;
  with_bias.emplace_back("model.layers.0.self_attn.q_proj.bias", at::randn({4}));
  EXPECT_NE(message_of(with_bias).find("model.attention_bias"), std::string::npos);
  EXPECT_NE(message_of({hf[0]}).find("no tensor model.embed_tokens.weight"), std::string::npos);
  NamedTensors extra = hf;
  extra.emplace_back("model.layers.1.mlp.up_proj.weight", at::randn({4, 4}));
  EXPECT_NE(message_of(extra).find("unexpected tensor model.layers.1"), std::string::npos);
}

TEST(HfWeights, ConfigMismatchNamesFieldsAndOverrides) {
  const auto e = config::load_experiment(config::embedded_tiny_config(), "tiny", {});
  ScopedTempDir dir;
  const std::string ours = trainer::hf_config_json(e, at::kFloat);
  testing::write_bytes(dir.file("config.json"), ours);
  trainer::check_hf_config(dir.path(), e.model, /*lm_head_stored=*/!e.model.tie_embeddings);

  std::string other = ours;
  other.replace(other.find("\"hidden_size\": 128"), 18, "\"hidden_size\": 256");
  other.replace(other.find("\"head_dim\": 32"), 14, "\"head_dim\": 64");
  other.replace(other.find("\"rope_theta\": 10000"), 19, "\"rope_theta\": 5e+05");
  testing::write_bytes(dir.file("config.json"), other);
  try {
    trainer::check_hf_config(dir.path(), e.model, true);
    ADD_FAILURE() << "no error";
  } catch (const UserError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("hidden_size 256 vs model.hidden_size 128"), std::string::npos)
        << message;
    EXPECT_NE(message.find("--set model.hidden_size=256 --set model.rope_theta=500000"),
              std::string::npos)
        << message;
  }
  // No lm_head tensor means tied embeddings.
  testing::write_bytes(dir.file("config.json"), ours);
  EXPECT_THROW(trainer::check_hf_config(dir.path(), e.model, false), UserError);
  other = ours;
  other.replace(other.find("\"attention_bias\": false"), 23, "\"attention_bias\": true");
  testing::write_bytes(dir.file("config.json"), other);
  EXPECT_THROW(trainer::check_hf_config(dir.path(), e.model, true), UserError);

  // RoPE: a scaled checkpoint names the model.rope_* overrides; unknown types are refused.
  const auto message_with_rope = [&](const std::string& scaling) {
    std::string text = ours;
    text.replace(text.find("\"rope_scaling\": null"), 20, "\"rope_scaling\": " + scaling);
    testing::write_bytes(dir.file("config.json"), text);
    try {
      trainer::check_hf_config(dir.path(), e.model, true);
    } catch (const UserError& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  const std::string llama3 = message_with_rope(
      "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
      "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}");
  EXPECT_NE(llama3.find("--set model.rope_type=LLAMA3 --set model.rope_scaling_factor=8 --set "
                        "model.rope_original_max_context=8192"),
            std::string::npos)
      << llama3;
  EXPECT_NE(message_with_rope("{\"rope_type\": \"dynamic\", \"factor\": 2.0}").find("\"dynamic\""),
            std::string::npos);
  EXPECT_NE(message_with_rope("{\"type\": \"yarn\", \"factor\": 2.0, \"mrope\": 1}").find("mrope"),
            std::string::npos);
  auto extension = e.model;
  extension.rope_override = true;
  extension.rope_theta = 5e6;
  testing::write_bytes(dir.file("config.json"), ours);
  EXPECT_NE(trainer::check_hf_config(dir.path(), extension, true).find("model.rope_theta 5000000"),
            std::string::npos);
}

}  // namespace
}  // namespace sparsering
