// The rules a config must meet before it becomes plain structs (configs/config.h loads it).
#include "configs/config_validation.h"

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "configs/field_limits.h"
#include "configs/user_error.h"

namespace sparsering::config {
namespace {

// A validation failure names the input, the field, its value and the rule.
class Validator {
 public:
  explicit Validator(std::string source) : source_(std::move(source)) {}

  template <typename T>
  void require(bool ok, const std::string& field, const T& value, const std::string& rule) const {
    if (ok) return;
    std::ostringstream message;
    message << source_ << ": " << field << " = " << value << ": " << rule;
    throw UserError(message.str());
  }

 private:
  std::string source_;
};

}  // namespace

void validate_experiment(const proto::Experiment& e, const std::string& source) {
  const Validator v(source);
  // Finite reals, integers <= 2^30, bounded strings: every field, then the products of sizes, so
  // the rules below compute without overflow.
  validate_every_field(e, source);
  validate_size_products(e, source);
  const auto& model = e.model();
  v.require(!e.name().empty() && e.name().find('/') == std::string::npos && e.name() != "." &&
                e.name() != ".." && e.name().size() <= 255,
            "name", e.name(),
            "must be a directory name (not empty, '.' or '..', no '/', at most 255 bytes): the "
            "run directory is <train.runs_root>/<name>");
  v.require(model.num_layers() > 0, "model.num_layers", model.num_layers(), "must be > 0");
  v.require(model.num_heads() > 0, "model.num_heads", model.num_heads(), "must be > 0");
  v.require(
      model.hidden_size() > 0 && model.hidden_size() % model.num_heads() == 0, "model.hidden_size",
      model.hidden_size(),
      "must be a positive multiple of model.num_heads (" + std::to_string(model.num_heads()) + ")");
  v.require((model.hidden_size() / model.num_heads()) % 2 == 0, "model.hidden_size",
            model.hidden_size(),
            "model.hidden_size / model.num_heads (head dim) must be even for RoPE");
  v.require(model.num_kv_heads() > 0 && model.num_heads() % model.num_kv_heads() == 0,
            "model.num_kv_heads", model.num_kv_heads(), "must divide model.num_heads");
  v.require(model.ffn_hidden_size() > 0, "model.ffn_hidden_size", model.ffn_hidden_size(),
            "must be > 0");
  v.require(model.vocab_size() > 1, "model.vocab_size", model.vocab_size(), "must be > 1");
  v.require(model.rope_theta() > 0, "model.rope_theta", model.rope_theta(), "must be > 0");
  v.require(model.max_context() >= 1, "model.max_context", model.max_context(), "must be >= 1");
  v.require(model.rope_scaling_factor() >= 1, "model.rope_scaling_factor",
            model.rope_scaling_factor(), "must be >= 1 (1 = no scaling)");
  v.require(model.rope_type() != proto::Model::DEFAULT || model.rope_scaling_factor() == 1,
            "model.rope_scaling_factor", model.rope_scaling_factor(),
            "scales nothing with model.rope_type DEFAULT; set model.rope_type=LINEAR (positions / "
            "factor), LLAMA3 or YARN, or the factor to 1");
  v.require(model.rope_original_max_context() >= 0, "model.rope_original_max_context",
            model.rope_original_max_context(), "must be >= 0 (0 = derived)");
  v.require(model.rope_type() != proto::Model::LLAMA3 ||
                model.rope_high_freq_factor() > model.rope_low_freq_factor(),
            "model.rope_high_freq_factor", model.rope_high_freq_factor(),
            "must be > model.rope_low_freq_factor for LLAMA3");
  v.require(model.rope_beta_fast() > 0, "model.rope_beta_fast", model.rope_beta_fast(),
            "must be > 0 (YaRN's beta_fast)");
  v.require(model.rope_beta_slow() > 0, "model.rope_beta_slow", model.rope_beta_slow(),
            "must be > 0 (YaRN's beta_slow)");
  v.require(model.rope_attention_factor() >= 0, "model.rope_attention_factor",
            model.rope_attention_factor(), "must be >= 0 (0 = 0.1 ln(factor) + 1)");
  v.require(model.rms_norm_eps() > 0 && model.rms_norm_eps() <= 1, "model.rms_norm_eps",
            model.rms_norm_eps(), "must be in (0, 1]");
  // Larger weights overflow in the first forward pass.
  v.require(model.init_std() > 0 && model.init_std() <= 1, "model.init_std", model.init_std(),
            "must be in (0, 1]");
  v.require(model.loss_chunk_tokens() >= 0, "model.loss_chunk_tokens", model.loss_chunk_tokens(),
            "must be >= 0 (0 = whole shard)");

  const auto& attention = e.attention();
  v.require(attention.block_size() == 64 || attention.block_size() == 128, "attention.block_size",
            attention.block_size(), "must be 64 or 128");
  v.require(attention.vertical_budget() >= 0, "attention.vertical_budget",
            attention.vertical_budget(), "must be >= 0");
  v.require(attention.slash_budget() >= 0, "attention.slash_budget", attention.slash_budget(),
            "must be >= 0");
  v.require(attention.vertical_fraction() >= 0 && attention.vertical_fraction() <= 1,
            "attention.vertical_fraction", attention.vertical_fraction(), "must be in [0, 1]");
  v.require(attention.slash_fraction() >= 0 && attention.slash_fraction() <= 1,
            "attention.slash_fraction", attention.slash_fraction(), "must be in [0, 1]");
  v.require(attention.sink_tokens() >= 0, "attention.sink_tokens", attention.sink_tokens(),
            "must be >= 0");
  v.require(attention.local_tokens() >= 1, "attention.local_tokens", attention.local_tokens(),
            "must be >= 1 (the main diagonal is always kept)");
  v.require(attention.estimation_queries() > 0 &&
                attention.estimation_queries() <= e.train().sequence_length(),
            "attention.estimation_queries", attention.estimation_queries(),
            "must be in [1, train.sequence_length]");
  v.require(attention.reestimate_every() >= 1, "attention.reestimate_every",
            attention.reestimate_every(), "must be >= 1");
  v.require(attention.dense_warmup_steps() >= 0, "attention.dense_warmup_steps",
            attention.dense_warmup_steps(), "must be >= 0");

  const auto& parallel = e.parallel();
  const int cp = parallel.context_parallel_size();
  v.require(parallel.data_parallel_size() >= 1, "parallel.data_parallel_size",
            parallel.data_parallel_size(), "must be >= 1");
  v.require(cp >= 1, "parallel.context_parallel_size", cp, "must be >= 1");
  const int u = parallel.head_parallel_size();
  v.require(u >= 1 && cp % u == 0 && e.model().num_heads() % u == 0, "parallel.head_parallel_size",
            u,
            "must divide parallel.context_parallel_size (" + std::to_string(cp) +
                ") and model.num_heads (" + std::to_string(e.model().num_heads()) + ")");
  const int ring = u >= 1 && cp % u == 0 ? cp / u : cp;
  v.require(parallel.intra_node_ring_size() == 0 || (parallel.intra_node_ring_size() >= 1 &&
                                                     ring % parallel.intra_node_ring_size() == 0),
            "parallel.intra_node_ring_size", parallel.intra_node_ring_size(),
            "must be 0 (flat ring) or divide the ring's ranks, parallel.context_parallel_size / "
            "parallel.head_parallel_size (" +
                std::to_string(ring) + ")");
  v.require(parallel.grad_bucket_mb() >= 1, "parallel.grad_bucket_mb", parallel.grad_bucket_mb(),
            "must be >= 1");
  v.require(parallel.collective_timeout_s() >= 1, "parallel.collective_timeout_s",
            parallel.collective_timeout_s(), "must be >= 1");
  v.require(parallel.zero_stage() >= 0 && parallel.zero_stage() <= 3, "parallel.zero_stage",
            parallel.zero_stage(), "must be 0, 1, 2 or 3");
  v.require(parallel.zero_stage() < 3 || model.activation_checkpointing(), "parallel.zero_stage",
            parallel.zero_stage(),
            "3 gathers each layer again in the backward to recompute it; set "
            "model.activation_checkpointing=true");
  v.require(e.optimizer().offload() == proto::Optimizer::NONE || parallel.zero_stage() >= 1,
            "optimizer.offload", "CPU",
            "needs parallel.zero_stage >= 1 (on one rank stage 1 shards nothing, so offload costs "
            "no memory there)");

  const auto& train = e.train();
  const int64_t chunk = int64_t{2} * cp * attention.block_size();
  v.require(train.sequence_length() > 0 && train.sequence_length() % chunk == 0,
            "train.sequence_length", train.sequence_length(),
            "must be a multiple of 2 x parallel.context_parallel_size x attention.block_size (" +
                std::to_string(chunk) + ")");
  v.require(train.sequence_length() <= model.max_context(), "train.sequence_length",
            train.sequence_length(),
            "must be <= model.max_context (" + std::to_string(model.max_context()) + ")");
  v.require(train.steps() > 0, "train.steps", train.steps(), "must be > 0");
  v.require(train.micro_batch_size() >= 1, "train.micro_batch_size", train.micro_batch_size(),
            "must be >= 1");

  const auto& nm = e.nm_sparsity();
  v.require(nm.m() >= 2 && nm.n() >= 1 && nm.n() < nm.m(), "nm_sparsity.n", nm.n(),
            "needs 1 <= nm_sparsity.n < nm_sparsity.m (m = " + std::to_string(nm.m()) + ")");
  v.require(model.hidden_size() % nm.m() == 0 && model.ffn_hidden_size() % nm.m() == 0,
            "nm_sparsity.m", nm.m(), "must divide model.hidden_size and model.ffn_hidden_size");
  for (const std::string& layer : nm.layers()) {
    static const std::vector<std::string> kLayers = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};
    v.require(std::find(kLayers.begin(), kLayers.end(), layer) != kLayers.end(),
              "nm_sparsity.layers", layer,
              "unknown layer; use q_proj k_proj v_proj o_proj gate_proj up_proj down_proj");
  }
  v.require(!nm.enabled() || nm.layers_size() > 0, "nm_sparsity.layers", "(none)",
            "list at least one layer when nm_sparsity.enabled (e.g. up_proj,gate_proj,down_proj)");
  v.require(nm.sr_ste_lambda() >= 0 && nm.sr_ste_lambda() <= 1, "nm_sparsity.sr_ste_lambda",
            nm.sr_ste_lambda(), "must be in [0, 1]");
  v.require(nm.kappa() >= 0, "nm_sparsity.kappa", nm.kappa(), "must be >= 0");
  v.require(nm.sdgf_interval() >= 1, "nm_sparsity.sdgf_interval", nm.sdgf_interval(),
            "must be >= 1");
  v.require(nm.sdgf_step() > 0 && nm.sdgf_step() <= 1, "nm_sparsity.sdgf_step", nm.sdgf_step(),
            "must be in (0, 1]");
  v.require(nm.sdgf_factor() > 0 && nm.sdgf_factor() <= 1, "nm_sparsity.sdgf_factor",
            nm.sdgf_factor(), "must be in (0, 1]");
  v.require(nm.hard_prune_step() >= -1, "nm_sparsity.hard_prune_step", nm.hard_prune_step(),
            "must be >= 0, or -1 for never");

  const auto& optimizer = e.optimizer();
  // AdamW moves a weight by about lr per step: beyond 1 every step overshoots.
  v.require(optimizer.lr() > 0 && optimizer.lr() <= 1, "optimizer.lr", optimizer.lr(),
            "must be in (0, 1]");
  v.require(optimizer.beta1() >= 0 && optimizer.beta1() < 1, "optimizer.beta1", optimizer.beta1(),
            "must be in [0, 1)");
  v.require(optimizer.beta2() >= 0 && optimizer.beta2() < 1, "optimizer.beta2", optimizer.beta2(),
            "must be in [0, 1)");
  v.require(optimizer.eps() > 0 && optimizer.eps() <= 1, "optimizer.eps", optimizer.eps(),
            "must be in (0, 1]");
  // Decoupled decay multiplies weights by 1 - lr x weight_decay each step: it must stay >= 0.
  v.require(optimizer.weight_decay() >= 0 && optimizer.weight_decay() * optimizer.lr() <= 1,
            "optimizer.weight_decay", optimizer.weight_decay(),
            "must be >= 0 with optimizer.weight_decay x optimizer.lr <= 1");
  v.require(optimizer.grad_clip() >= 0, "optimizer.grad_clip", optimizer.grad_clip(),
            "must be >= 0 (0 = off)");
  v.require(optimizer.grad_accumulation_steps() >= 1, "optimizer.grad_accumulation_steps",
            optimizer.grad_accumulation_steps(), "must be >= 1");

  const auto& schedule = e.schedule();
  v.require(schedule.warmup_steps() >= 0, "schedule.warmup_steps", schedule.warmup_steps(),
            "must be >= 0");
  v.require(schedule.min_lr_ratio() >= 0 && schedule.min_lr_ratio() <= 1, "schedule.min_lr_ratio",
            schedule.min_lr_ratio(), "must be in [0, 1]");

  const auto& data = e.data();
  // The task sizes mirror data/synthetic.h (passkey_min_length, *_min_vocab_size); the data
  // tests check that both agree. Token 0, 16 filler tokens, 10 digits and 6 words come first.
  const int length = train.sequence_length(), vocab = model.vocab_size();
  switch (data.source()) {
    case proto::Data::SYNTHETIC_COPY:
      v.require(data.copy_period() >= 1 && data.copy_period() < length, "data.copy_period",
                data.copy_period(), "must be in [1, train.sequence_length)");
      break;
    case proto::Data::PASSKEY: {
      const int64_t digits = data.passkey_digits();
      v.require(digits >= 1 && digits <= 18, "data.passkey_digits", digits, "must be in [1, 18]");
      v.require(length >= 2 * digits + 12, "data.passkey_digits", digits,
                "needs train.sequence_length >= 2 x passkey_digits + 12");
      v.require(vocab >= 33, "model.vocab_size", vocab, "the PASSKEY task needs >= 33 tokens");
      v.require(data.needle_depth() <= 1, "data.needle_depth", data.needle_depth(),
                "must be in [0, 1], or < 0 for a random depth");
      break;
    }
    case proto::Data::ASSOCIATIVE_RECALL: {
      const int64_t pairs = data.recall_pairs(), queries = data.recall_queries();
      v.require(pairs >= 1, "data.recall_pairs", pairs, "must be >= 1");
      v.require(queries >= 1 && queries <= pairs, "data.recall_queries", queries,
                "must be in [1, data.recall_pairs]");
      v.require(length >= 2 * (pairs + queries), "data.recall_pairs", pairs,
                "needs train.sequence_length >= 2 x (recall_pairs + recall_queries)");
      v.require(vocab >= 17 + 2 * pairs, "model.vocab_size", vocab,
                "ASSOCIATIVE_RECALL needs >= 17 + 2 x data.recall_pairs tokens (" +
                    std::to_string(17 + 2 * pairs) + ")");
      break;
    }
    case proto::Data::TOKEN_SHARDS: {
      std::error_code error;
      v.require(!data.path().empty() && std::filesystem::exists(data.path(), error), "data.path",
                "\"" + data.path() + "\"",
                "does not exist; give the directory of *.srtok shards that "
                "launch/prepare_data.py wrote");
      break;
    }
  }

  v.require(e.checkpoint().every_steps() >= 0, "checkpoint.every_steps",
            e.checkpoint().every_steps(), "must be >= 0 (0 = never)");
  v.require(e.checkpoint().keep_last() >= 1, "checkpoint.keep_last", e.checkpoint().keep_last(),
            "must be >= 1");
  v.require(e.logging().log_every() >= 1, "logging.log_every", e.logging().log_every(),
            "must be >= 1");
  v.require(e.profiling().start_step() >= 1, "profiling.start_step", e.profiling().start_step(),
            "must be >= 1");
  v.require(e.profiling().num_steps() >= 1, "profiling.num_steps", e.profiling().num_steps(),
            "must be >= 1");
}

}  // namespace sparsering::config
