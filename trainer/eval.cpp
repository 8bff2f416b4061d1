#include "trainer/eval.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "configs/user_error.h"
#include "data/batch_source.h"
#include "data/synthetic.h"
#include "trainer/checkpoint/atomic_file.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/logits_dump.h"
#include "trainer/nm/nm_sparsity.h"
#include "trainer/run_paths.h"
#include "trainer/sequence_scorer.h"
#include "trainer/state/optimizer.h"
#include "trainer/watchdog.h"

namespace sparsering::trainer {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> attention_modes(const config::Experiment& e, const EvalOptions& options) {
  if (options.attention == "both") return {"dense", "sparse"};
  if (!options.attention.empty()) return {options.attention};
  return {e.attention.kind == config::AttentionKind::kSparse ? "sparse" : "dense"};
}

// What one attention mode adds up on this rank, summed over the world once at the end.
struct ModeTotals {
  double loss_sum = 0, labels = 0, attended_pairs = 0, dense_pairs = 0;
  double answers_right = 0, answers = 0;                       // held-out sequences
  std::vector<double> passkeys, passkeys_right, digits_right;  // per needle cell

  explicit ModeTotals(size_t cells) : passkeys(cells), passkeys_right(cells), digits_right(cells) {}
  std::vector<double*> fields() {
    std::vector<double*> all = {&loss_sum,    &labels,        &attended_pairs,
                                &dense_pairs, &answers_right, &answers};
    for (auto* cells : {&passkeys, &passkeys_right, &digits_right}) {
      for (double& cell : *cells) all.push_back(&cell);
    }
    return all;
  }
};

void sum_over_world(std::vector<ModeTotals>& totals, parallel::Communicator& world) {
  std::vector<double> flat;
  for (auto& mode : totals) {
    for (const double* field : mode.fields()) flat.push_back(*field);
  }
  auto tensor = at::tensor(flat, at::kDouble);
  world.all_reduce(tensor);
  const double* summed = tensor.data_ptr<double>();
  for (auto& mode : totals) {
    for (double* field : mode.fields()) *field = *summed++;
  }
}

// The indices of `count` items this data-parallel rank takes: every dp-th.
std::vector<int64_t> share_of(int64_t count, int dp_size, int dp_rank) {
  std::vector<int64_t> mine;
  for (int64_t i = dp_rank; i < count; i += dp_size) mine.push_back(i);
  return mine;
}

// What every part of one evaluation shares.
struct EvalRun {
  const config::Experiment& e;
  const EvalOptions& options;
  parallel::ProcessGroups& groups;
  const at::Device& device;
  const std::vector<std::string>& modes;  // attention modes, in the table's order
  Watchdog& watchdog;
};

// Loads the checkpoint `options` names into `model` and, with N:M sparsity, computes the masks
// and beta the next training step's forward would use. Returns the step directory and its step.
// The optimizer is needed only to load: it is freed on return.
std::pair<std::string, int64_t> load_checkpoint(const EvalRun& run, LengthModel& model,
                                                NMSparsity* nm_sparsity) {
  MasterWeightOptimizer optimizer(model.model->parameters(), run.e.optimizer);
  Checkpointer checkpointer(RunPaths::of(run.e, run.options.run_dir).checkpoint_dir, run.e,
                            run.groups.world());
  const auto found = checkpointer.find(run.options.checkpoint, "--checkpoint");
  if (!found) throw UserError("--checkpoint auto: no checkpoint under " + checkpointer.dir());
  run.watchdog.beat("checkpoint load");
  const ResumeState state = checkpointer.load(*found, optimizer);
  if (nm_sparsity) {
    if (!state.nm_state.empty()) {
      nm_sparsity->restore(NMScheduleState::from_string(state.nm_state));
    }
    nm_sparsity->update_masks(nm_sparsity->sparse_weights(model.model->named_parameters().keys(),
                                                          optimizer.master_weights()),
                              state.step + 1);
  }
  return {*found, state.step};
}

// Loss and answers of the held-out sequences at the configured length, micro_batch_size
// sequences at a time, each data-parallel replica its share.
void score_held_out(const EvalRun& run, LengthModel& model, data::SequenceSource& source,
                    std::vector<ModeTotals>& totals) {
  const auto batch_size = static_cast<size_t>(run.e.train.micro_batch_size);
  const std::vector<int64_t> mine =
      share_of(run.options.sequences, run.e.parallel.data_parallel_size, run.groups.dp_rank());
  for (size_t start = 0; start < mine.size(); start += batch_size) {
    std::vector<data::SequenceExample> batch;
    for (size_t i = start; i < std::min(mine.size(), start + batch_size); ++i) {
      batch.push_back(source.example(kHeldOutFirstIndex + mine[i]));
      if (run.e.data.source == config::DataSource::kSyntheticCopy) {
        // The copy task's answers: every token after the first period (the first is noise).
        auto& answers = batch.back().answer_positions;
        for (int64_t p = run.e.data.copy_period; p < run.e.train.sequence_length; ++p) {
          answers.push_back(p);
        }
      }
    }
    for (size_t m = 0; m < run.modes.size(); ++m) {
      run.watchdog.beat("held-out forward");
      const SequenceScores scores =
          score_sequences(model, batch, run.modes[m] == "dense", run.e, run.groups, run.device);
      ModeTotals& t = totals[m];
      t.loss_sum += scores.loss_sum;
      t.labels += scores.labels;
      t.attended_pairs += scores.attended_pairs;
      t.dense_pairs += scores.dense_pairs;
      // Answer counts are the whole ring's: one rank of it adds them.
      if (run.groups.cp_rank() != 0) continue;
      for (size_t i = 0; i < batch.size(); ++i) {
        t.answers_right += static_cast<double>(scores.correct_answers[i]);
        t.answers += static_cast<double>(batch[i].answer_positions.size());
      }
    }
    // A long evaluation is not silent: rank 0 reports its share's progress.
    if (run.groups.world_rank() == 0) {
      std::cout << "sparsering: eval: held-out sequences "
                << std::min(mine.size(), start + batch_size) << "/" << mine.size()
                << " of this replica scored" << std::endl;
    }
  }
}

// Passkeys over the needle grid, one model per context length: `model` at its own, a copy of
// its weights at the others.
void score_needle_grid(const EvalRun& run, LengthModel& model, const NMSparsity* nm_sparsity,
                       const std::vector<int64_t>& lengths, std::vector<ModeTotals>& totals) {
  const config::Experiment& e = run.e;
  const int samples = run.options.sequences;
  const std::vector<data::NeedleCase> cases = data::needle_grid(lengths, kNeedleDepths, samples);
  const std::vector<int64_t> mine = share_of(static_cast<int64_t>(cases.size()),
                                             e.parallel.data_parallel_size, run.groups.dp_rank());
  const auto batch_size = static_cast<size_t>(e.train.micro_batch_size);
  for (const int64_t length : lengths) {
    std::optional<LengthModel> resized;
    if (length != model.sequence_length) {
      resized = make_length_model(e, run.groups, length, nm_sparsity, run.device);
      copy_weights(model.model, resized->model);
    }
    LengthModel& length_model = resized ? *resized : model;
    std::vector<int64_t> here;
    for (const int64_t k : mine) {
      if (cases[k].length == length) here.push_back(k);
    }
    for (size_t start = 0; start < here.size(); start += batch_size) {
      std::vector<data::SequenceExample> batch;
      std::vector<int64_t> cells;
      for (size_t i = start; i < std::min(here.size(), start + batch_size); ++i) {
        const data::NeedleCase& c = cases[here[i]];
        data::LongContextExample example =
            data::passkey_example(e.train.seed, kNeedleFirstIndex + c.index, c.length,
                                  e.model.vocab_size, e.data.passkey_digits, c.depth);
        batch.push_back({std::move(example.tokens), {}, std::move(example.answer_positions)});
        cells.push_back(here[i] / samples);  // needle_grid puts the samples of a cell together
      }
      for (size_t m = 0; m < run.modes.size(); ++m) {
        run.watchdog.beat("needle forward");
        const SequenceScores scores = score_sequences(length_model, batch, run.modes[m] == "dense",
                                                      e, run.groups, run.device);
        if (run.groups.cp_rank() != 0) continue;
        for (size_t i = 0; i < batch.size(); ++i) {
          const auto right = static_cast<double>(scores.correct_answers[i]);
          totals[m].passkeys[cells[i]] += 1;
          totals[m].digits_right[cells[i]] += right;
          totals[m].passkeys_right[cells[i]] += right == e.data.passkey_digits ? 1 : 0;
        }
      }
    }
  }
}

// One mode's results from its totals, summed over the world.
AttentionResult result_of(const EvalRun& run, const std::string& mode, const ModeTotals& t,
                          const std::vector<int64_t>& lengths) {
  AttentionResult result;
  result.attention = mode;
  result.loss = t.loss_sum / t.labels;
  result.perplexity = std::exp(result.loss);
  result.attention_density = t.dense_pairs > 0 ? t.attended_pairs / t.dense_pairs : 0.0;
  if (run.e.data.source == config::DataSource::kAssociativeRecall) {
    result.recall_accuracy = t.answers_right / t.answers;
  }
  if (run.e.data.source == config::DataSource::kSyntheticCopy) {
    result.copy_accuracy = t.answers_right / t.answers;
  }
  if (lengths.empty()) return result;
  NeedleGrid grid;
  grid.lengths = lengths;
  for (const auto& cell : data::needle_grid({lengths[0]}, kNeedleDepths, 1)) {
    grid.depths.push_back(cell.depth);
  }
  const int digits = run.e.data.passkey_digits;
  for (size_t l = 0; l < lengths.size(); ++l) {
    grid.accuracy.emplace_back();
    grid.digit_accuracy.emplace_back();
    for (int d = 0; d < kNeedleDepths; ++d) {
      const size_t cell = l * kNeedleDepths + d;
      grid.accuracy.back().push_back(t.passkeys_right[cell] / t.passkeys[cell]);
      grid.digit_accuracy.back().push_back(t.digits_right[cell] / (t.passkeys[cell] * digits));
    }
  }
  result.needle = std::move(grid);
  return result;
}

}  // namespace

void require_checkpoint(const config::Experiment& e, const EvalOptions& options) {
  if (options.checkpoint != "auto") {
    if (!fs::is_directory(options.checkpoint)) {
      throw UserError("--checkpoint " + options.checkpoint +
                      ": no such checkpoint directory; give a step_* directory or a checkpoint "
                      "directory, or --checkpoint auto with the run's --run-dir");
    }
    return;
  }
  const std::string dir = RunPaths::of(e, options.run_dir).checkpoint_dir;
  if (fs::is_directory(dir)) {
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("step_", 0) == 0 && name.find(".tmp") == std::string::npos) return;
    }
  }
  throw UserError("--checkpoint auto: no checkpoint under " + dir +
                  "; give the training run's --run-dir (it needs checkpoint.every_steps > 0) or "
                  "--checkpoint PATH");
}

std::vector<int64_t> needle_lengths(const config::Experiment& e) {
  const int64_t unit = 2LL * e.parallel.context_parallel_size * e.attention.block_size;
  std::vector<int64_t> lengths;
  for (const int64_t divisor : {4, 2, 1}) {
    const int64_t length = e.train.sequence_length / divisor;
    if (e.train.sequence_length % divisor == 0 && length % unit == 0 &&
        length >= data::passkey_min_length(e.data.passkey_digits)) {
      lengths.push_back(length);
    }
  }
  return lengths;
}

EvalReport evaluate(const config::Experiment& e, parallel::ProcessGroups& groups,
                    const at::Device& device, const EvalOptions& options) {
  const std::string run_dir = RunPaths::of(e, options.run_dir).run_dir;
  if (groups.world_rank() == 0) {
    std::error_code error;
    fs::create_directories(run_dir, error);
    if (error) {
      throw UserError(run_dir + ": cannot create the run directory (" + error.message() + ")");
    }
  }
  groups.world().barrier();
  Watchdog watchdog(groups.world_rank(), e.parallel.collective_timeout_s);
  const std::vector<std::string> modes = attention_modes(e, options);
  const EvalRun run{e, options, groups, device, modes, watchdog};

  std::unique_ptr<NMSparsity> nm_sparsity;
  if (e.nm_sparsity.enabled) nm_sparsity = std::make_unique<NMSparsity>(e.nm_sparsity);
  LengthModel model =
      make_length_model(e, groups, e.train.sequence_length, nm_sparsity.get(), device);
  EvalReport report;
  std::tie(report.checkpoint, report.step) = load_checkpoint(run, model, nm_sparsity.get());
  if (groups.world_rank() == 0) {
    std::cout << "sparsering: evaluating " << report.checkpoint << " on " << groups.world_size()
              << " rank(s) (dp " << e.parallel.data_parallel_size << " x cp "
              << e.parallel.context_parallel_size << "), device " << device.str() << ", attention:";
    for (const auto& mode : modes) std::cout << " " << mode;
    std::cout << std::endl;
  }

  const auto source =
      data::make_sequence_source(e.data, e.train.sequence_length, e.model.vocab_size, e.train.seed);
  const bool passkey = e.data.source == config::DataSource::kPasskey;
  const std::vector<int64_t> lengths = passkey ? needle_lengths(e) : std::vector<int64_t>{};
  std::vector<ModeTotals> totals(modes.size(), ModeTotals(lengths.size() * kNeedleDepths));
  score_held_out(run, model, *source, totals);
  if (!options.logits_path.empty()) {
    watchdog.beat("logits");
    write_held_out_logits(options.logits_path, model, *source, kHeldOutFirstIndex, modes, e, groups,
                          device);
  }
  if (passkey) score_needle_grid(run, model, nm_sparsity.get(), lengths, totals);
  watchdog.beat("results all-reduce");
  sum_over_world(totals, groups.world());

  report.data = source->description();
  report.sequence_length = e.train.sequence_length;
  report.sequences = options.sequences;
  report.first_sequence_index = kHeldOutFirstIndex;
  report.held_out = source->sequences_per_epoch() == 0;
  report.loss_targets =
      e.data.source == config::DataSource::kSyntheticCopy ? "tokens after the first copy period"
      : passkey || e.data.source == config::DataSource::kAssociativeRecall ? "answers"
                                                                           : "next tokens";
  for (size_t m = 0; m < modes.size(); ++m) {
    report.results.push_back(result_of(run, modes[m], totals[m], lengths));
  }
  if (groups.world_rank() == 0) {
    std::cout << format_eval_table(report);
    const std::string json_path = (fs::path(run_dir) / "eval.json").string();
    write_file_atomically(json_path, eval_json(report));
    std::cout << "sparsering: results written to " << json_path;
    if (passkey) {
      const std::string heatmap = (fs::path(run_dir) / "needle_heatmap.ppm").string();
      write_needle_heatmap(report, heatmap);
      std::cout << " and " << heatmap;
    }
    std::cout << std::endl;
  }
  return report;
}

}  // namespace sparsering::trainer
