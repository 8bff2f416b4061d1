// Experiment loading: the embedded default and every shipped config load; overrides apply by
// field path; each validation rule rejects a bad value with a message naming the field.
#include "configs/config.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "configs/user_error.h"

namespace sparsering {
namespace {

config::Experiment tiny(const std::vector<std::string>& overrides = {}) {
  return config::load_experiment(config::embedded_tiny_config(), "tiny", overrides);
}

std::string error_of(const std::vector<std::string>& overrides, const std::string& text = "") {
  try {
    config::load_experiment(text.empty() ? config::embedded_tiny_config() : text, "test.pbtxt",
                            overrides);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, EmbeddedTinyLoadsWithItsValues) {
  const auto e = tiny();
  EXPECT_EQ(e.name, "tiny");
  EXPECT_EQ(e.model.num_layers, 2);
  EXPECT_EQ(e.parallel.context_parallel_size, 2);
  EXPECT_EQ(e.parallel.layout, config::LayoutKind::kBalanced);
  EXPECT_EQ(e.train.steps, 150);
  EXPECT_EQ(e.train.sequence_length, 1024);
  EXPECT_EQ(e.attention.kind, config::AttentionKind::kSparse);
  EXPECT_EQ(e.attention.dense_warmup_steps, 20);
  EXPECT_NE(e.resolved_text.find("rope_theta: 10000"), std::string::npos);  // defaults shown
}

TEST(Config, ShippedConfigsLoad) {
  for (const auto& entry : std::filesystem::directory_iterator(SPARSERING_SOURCE_DIR "/configs")) {
    if (entry.path().extension() != ".pbtxt") continue;
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW(config::load_experiment_file(entry.path().string(), {}));
  }
}

TEST(Config, ResolvedTextReloadsToTheSameExperiment) {
  const auto e = tiny({"train.steps=7", "attention.kind=SPARSE"});
  const auto again = config::load_experiment(e.resolved_text, "resolved", {});
  EXPECT_EQ(again.resolved_text, e.resolved_text);
  EXPECT_EQ(again.train.steps, 7);
}

TEST(Config, OverridesSetFieldsByPath) {
  const auto e = tiny({"train.steps=5", "optimizer.lr=0.01", "parallel.layout=ZIGZAG", "name=other",
                       "attention.kind=SPARSE", "nm_sparsity.layers=q_proj,k_proj"});
  EXPECT_EQ(e.train.steps, 5);
  EXPECT_DOUBLE_EQ(e.optimizer.lr, 0.01);
  EXPECT_EQ(e.parallel.layout, config::LayoutKind::kZigzag);
  EXPECT_EQ(e.name, "other");
  EXPECT_EQ(e.attention.kind, config::AttentionKind::kSparse);
  EXPECT_EQ(e.nm_sparsity.layers, (std::vector<std::string>{"q_proj", "k_proj"}));
  EXPECT_TRUE(tiny({"nm_sparsity.enabled=true", "nm_sparsity.layers=up_proj"}).nm_sparsity.enabled);
}

TEST(Config, BadOverridesNameTheProblem) {
  EXPECT_NE(error_of({"train.stepz=5"}).find("has no field 'stepz'"), std::string::npos);
  EXPECT_NE(error_of({"train.steps=five"}).find("train.steps"), std::string::npos);
  EXPECT_NE(error_of({"train=5"}).find("is a message"), std::string::npos);
  EXPECT_NE(error_of({"train.steps"}).find("path.to.field=value"), std::string::npos);
}

TEST(Config, SyntaxErrorsNameLineAndColumn) {
  const auto message = error_of({}, "model {\n  num_layers: 2\n  bogus: 1\n}\n");
  EXPECT_NE(message.find("test.pbtxt: line 3"), std::string::npos) << message;
}

struct Rule {
  std::string override_text, field, phrase;
};

TEST(Config, ValidationRulesNameFieldValueAndRule) {
  const std::vector<Rule> rules = {
      {"model.num_heads=3", "model.hidden_size", "multiple of model.num_heads"},
      {"model.num_kv_heads=3", "model.num_kv_heads", "divide model.num_heads"},
      {"attention.block_size=32", "attention.block_size", "64 or 128"},
      {"train.sequence_length=320", "train.sequence_length", "multiple of 2 x"},
      {"train.sequence_length=8192", "train.sequence_length", "max_context"},
      {"parallel.intra_node_ring_size=3", "parallel.intra_node_ring_size", "divide"},
      // tiny: cp 2, 4 heads: u must divide both.
      {"parallel.head_parallel_size=3", "parallel.head_parallel_size", "must divide"},
      {"parallel.head_parallel_size=0", "parallel.head_parallel_size", "must divide"},
      {"parallel.head_parallel_size=4", "parallel.head_parallel_size", "context_parallel_size (2)"},
      {"optimizer.lr=0", "optimizer.lr", "in (0, 1]"},
      {"optimizer.beta2=1", "optimizer.beta2", "[0, 1)"},
      {"schedule.min_lr_ratio=2", "schedule.min_lr_ratio", "[0, 1]"},
      {"nm_sparsity.n=4", "nm_sparsity.n", "nm_sparsity.n < nm_sparsity.m"},
      {"nm_sparsity.layers=qkv", "nm_sparsity.layers", "unknown layer"},
      {"nm_sparsity.enabled=true", "nm_sparsity.layers", "at least one layer"},
      {"nm_sparsity.kappa=-0.1", "nm_sparsity.kappa", ">= 0"},
      {"nm_sparsity.sdgf_interval=0", "nm_sparsity.sdgf_interval", ">= 1"},
      {"nm_sparsity.sdgf_step=0", "nm_sparsity.sdgf_step", "(0, 1]"},
      {"nm_sparsity.sdgf_factor=1.5", "nm_sparsity.sdgf_factor", "(0, 1]"},
      {"nm_sparsity.hard_prune_step=-2", "nm_sparsity.hard_prune_step", "-1 for never"},
      {"attention.vertical_fraction=1.5", "attention.vertical_fraction", "[0, 1]"},
      {"attention.estimation_queries=0", "attention.estimation_queries", "[1,"},
      {"train.steps=0", "train.steps", "> 0"},
      {"data.copy_period=1024", "data.copy_period", "[1, train.sequence_length)"},
      {"name=a/b", "name", "directory name"},
      {"model.rope_scaling_factor=2", "model.rope_scaling_factor", "model.rope_type=LINEAR"},
      {"model.rope_attention_factor=-1", "model.rope_attention_factor", ">= 0"},
  };
  for (const Rule& rule : rules) {
    const auto message = error_of({rule.override_text});
    EXPECT_NE(message.find(rule.field), std::string::npos) << rule.override_text << ": " << message;
    EXPECT_NE(message.find(rule.phrase), std::string::npos)
        << rule.override_text << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
  }
  // With head parallelism the inner ring counts ring ranks: cp 2 = 2 x ring 1 has no inner 2.
  const auto ring = error_of({"parallel.head_parallel_size=2", "parallel.intra_node_ring_size=2"});
  EXPECT_NE(ring.find("parallel.intra_node_ring_size"), std::string::npos) << ring;
  EXPECT_NE(ring.find("the ring's ranks"), std::string::npos) << ring;
}

TEST(Config, RopeScalingAndBiasesAreModelFields) {
  const auto e = tiny({"model.rope_type=YARN", "model.rope_scaling_factor=4",
                       "model.rope_original_max_context=1024", "model.attention_bias=true"});
  EXPECT_EQ(e.model.rope_type, config::RopeType::kYarn);
  EXPECT_EQ(e.model.rope_scaling_factor, 4);
  EXPECT_EQ(e.model.rope_original_max_context, 1024);
  EXPECT_EQ(e.model.rope_beta_fast, 32);  // transformers' defaults
  EXPECT_TRUE(e.model.rope_truncate);
  EXPECT_TRUE(e.model.attention_bias);
  EXPECT_NE(e.resolved_text.find("rope_type: YARN"), std::string::npos);
  EXPECT_FALSE(tiny().model.attention_bias);
  EXPECT_EQ(tiny().model.rope_type, config::RopeType::kDefault);
}

TEST(Config, DocumentMaskIsAccepted) {
  EXPECT_FALSE(tiny().data.document_mask);
  // Token shards carry document ids; the synthetic sources are one document per sequence.
  EXPECT_TRUE(tiny({"data.document_mask=true"}).data.document_mask);
  EXPECT_TRUE(tiny({"data.document_mask=true", "data.source=PASSKEY"}).data.document_mask);
  EXPECT_EQ(error_of({"data.document_mask=true"}), "");
}

TEST(Config, WorldSizeMustMatchTheMesh) {
  const auto e = tiny();
  EXPECT_NO_THROW(config::validate_world(e, 2));
  try {
    config::validate_world(e, 3);
    FAIL() << "expected an error";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("launch 2 ranks"), std::string::npos);
  }
}

TEST(Config, MissingFileIsAUserError) {
  EXPECT_THROW(config::load_experiment_file("/nonexistent/x.pbtxt", {}), UserError);
}

}  // namespace
}  // namespace sparsering
