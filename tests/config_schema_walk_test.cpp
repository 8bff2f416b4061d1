// Validation of every field, by walking the schema (configs/schema_fields.h): for each numeric
// field 0, -1, the type's maximum, inf, -inf and nan; for each string field "", "..", "/" and a
// very long value. Each is accepted, or refused with one line naming the field. Fields added to
// configs/sparsering.proto are walked without changing this test. Every base config below is
// tried, so the rules that apply to one data source or feature only are reached too.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "configs/config.h"
#include "configs/schema_fields.h"
#include "configs/user_error.h"
#include "trainer/train.h"

namespace sparsering {
namespace {

struct Base {
  std::string name;
  std::vector<std::string> overrides;
};

const std::vector<Base> kBases = {
    {"tiny", {}},
    {"passkey", {"data.source=PASSKEY"}},
    {"recall", {"data.source=ASSOCIATIVE_RECALL"}},
    {"sparse nm",
     {"attention.kind=SPARSE", "nm_sparsity.enabled=true", "nm_sparsity.layers=up_proj",
      "nm_sparsity.mode=SDGF_GEOMETRIC", "schedule.kind=LINEAR", "profiling.enabled=true",
      "checkpoint.every_steps=10", "train.nan_policy=SKIP_STEP"}},
};

std::vector<std::string> tried_values(const config::SchemaField& field) {
  switch (field.kind) {
    case config::FieldKind::kReal:
    case config::FieldKind::kSignedInteger:
    case config::FieldKind::kUnsignedInteger:
      return {"0", "-1", field.max_value, "inf", "-inf", "nan"};
    case config::FieldKind::kString:
      return {"", "..", "/", std::string(5000, 'x')};
    default:
      return {};  // bools and enums: every value their type allows is a choice, not a size
  }
}

// What an accepted experiment must satisfy to be trainable whatever the field: finite reals,
// a world and a model within the caps that keep every size product in 64 bits.
void expect_trainable_shape(const config::Experiment& e, const std::string& what) {
  for (double value :
       {e.model.rope_theta, e.model.rope_scaling_factor, e.model.rms_norm_eps, e.model.init_std,
        e.optimizer.lr, e.optimizer.eps, e.optimizer.weight_decay, e.optimizer.grad_clip,
        e.schedule.min_lr_ratio, e.attention.vertical_fraction, e.attention.slash_fraction,
        e.data.needle_depth, e.nm_sparsity.kappa, e.nm_sparsity.sr_ste_lambda}) {
    EXPECT_TRUE(std::isfinite(value)) << what;
  }
  EXPECT_GT(e.optimizer.lr, 0) << what;
  EXPECT_LE(int64_t{e.parallel.data_parallel_size} * e.parallel.context_parallel_size, 1 << 16)
      << what;
  EXPECT_GT(trainer::matmul_parameters(e.model), 0) << what;
  EXPECT_LE(trainer::matmul_parameters(e.model), int64_t{1} << 41) << what;
  EXPECT_FALSE(e.name.empty() || e.name == "." || e.name == ".." ||
               e.name.find('/') != std::string::npos)
      << what;
}

TEST(ConfigSchemaWalk, EveryFieldIsAcceptedOrRefusedByName) {
  const auto fields = config::schema_fields();
  // The schema has dozens of leaf fields; far fewer means the walk itself is broken.
  ASSERT_GT(fields.size(), 60u);
  int tried = 0, refused = 0;
  for (const Base& base : kBases) {
    for (const auto& field : fields) {
      for (const std::string& value : tried_values(field)) {
        std::vector<std::string> overrides = base.overrides;
        overrides.push_back(field.path + "=" + value);
        const std::string what = base.name + ": --set " + field.path + "=" + value.substr(0, 40);
        ++tried;
        try {
          const auto e =
              config::load_experiment(config::embedded_tiny_config(), "walk.pbtxt", overrides);
          const bool real_not_finite = field.kind == config::FieldKind::kReal &&
                                       (value == "inf" || value == "-inf" || value == "nan");
          EXPECT_FALSE(real_not_finite) << what << " was accepted";
          expect_trainable_shape(e, what);
        } catch (const UserError& error) {
          ++refused;
          const std::string message = error.what();
          EXPECT_EQ(message.find('\n'), std::string::npos) << what << ": " << message;
          EXPECT_NE(message.find(field.path), std::string::npos)
              << what << ": the refusal does not name the field: " << message;
        }
      }
    }
  }
  EXPECT_GT(tried, 4 * 200);
  EXPECT_GT(refused, tried / 4);  // most extreme values cannot train
}

TEST(ConfigSchemaWalk, RunNamesStayInsideTheRunsRoot) {
  for (const std::string name : {"..", ".", "a/b", "/", ""}) {
    EXPECT_THROW(
        config::load_experiment(config::embedded_tiny_config(), "walk.pbtxt", {"name=" + name}),
        UserError)
        << name;
  }
  EXPECT_NO_THROW(
      config::load_experiment(config::embedded_tiny_config(), "walk.pbtxt", {"name=run-1.b"}));
}

TEST(ConfigSchemaWalk, SizeProductsAreCappedWithoutOverflow) {
  // Each factor is within the per-field cap; their product is not.
  for (const std::vector<std::string>& overrides : std::vector<std::vector<std::string>>{
           {"parallel.data_parallel_size=65536", "parallel.context_parallel_size=2"},
           {"model.num_layers=1073741824", "model.hidden_size=65536", "model.num_heads=512"},
           {"train.micro_batch_size=1073741824", "optimizer.grad_accumulation_steps=1073741824"},
           {"data.source=ASSOCIATIVE_RECALL", "data.recall_pairs=1073741824",
            "data.recall_queries=1073741824"}}) {
    try {
      config::load_experiment(config::embedded_tiny_config(), "walk.pbtxt", overrides);
      ADD_FAILURE() << overrides[0] << " ... was accepted";
    } catch (const UserError& error) {
      // The refusal names one of the fields of the product.
      const std::string message = error.what();
      bool named = false;
      for (const std::string& override_text : overrides) {
        named |=
            message.find(override_text.substr(0, override_text.find('='))) != std::string::npos;
      }
      EXPECT_TRUE(named) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
  }
}

}  // namespace
}  // namespace sparsering
