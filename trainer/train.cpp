#include "trainer/train.h"

#include <torch/cuda.h>
#ifdef SPARSERING_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>

#include "configs/user_error.h"
#include "data/batch_source.h"
#include "parallel/head_all_to_all.h"
#include "trainer/checkpoint/atomic_file.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/checkpoint/resume_compatibility.h"
#include "trainer/fault_injection.h"
#include "trainer/metrics.h"
#include "trainer/micro_batch.h"
#include "trainer/model/chunked_loss.h"
#include "trainer/model/model.h"
#include "trainer/model/model_setup.h"
#include "trainer/nm/nm_sparsity.h"
#include "trainer/profiling/profiler.h"
#include "trainer/run_directory.h"
#include "trainer/run_outputs.h"
#include "trainer/run_paths.h"
#include "trainer/schedule.h"
#include "trainer/state/memory_plan.h"
#include "trainer/state/training_optimizer.h"
#include "trainer/tensorboard/tensorboard_writer.h"
#include "trainer/watchdog.h"

namespace sparsering::trainer {
namespace {

namespace fs = std::filesystem;

// bf16 dense tensor-core peak of one H100/H200 SXM, for MFU.
constexpr double kHopperPeakTflops = 989.0;

// FLOPs of one training step: 6 x matmul parameters per token, plus causal attention
// 2 x S^2 x hidden per layer and sequence forward, backward counted as 2.5 x forward (five matmuls
// against the forward's two, as FlashAttention's benchmarks count it). `executed` scales the
// attention term by the density of attended (query, key) pairs; `dense` is the dense-equivalent
// figure, as if every causal pair were computed.
struct StepFlops {
  double dense = 0, executed = 0;
};
StepFlops step_flops(const config::Experiment& e, double density) {
  const double sequences = static_cast<double>(e.train.micro_batch_size) *
                           e.parallel.data_parallel_size * e.optimizer.grad_accumulation_steps;
  const double length = e.train.sequence_length;
  const double matmul = 6.0 * matmul_parameters(e.model) * sequences * length;
  const double attention =
      3.5 * 2.0 * length * length * e.model.hidden_size * e.model.num_layers * sequences;
  return {matmul + attention, matmul + attention * density};
}

}  // namespace

at::Device select_device(const config::Experiment& e) {
  const bool has_gpu = torch::cuda::is_available();
  if (e.train.device == config::Device::kCuda && !has_gpu) {
    throw UserError("train.device = CUDA but no GPU is visible; use AUTO or CPU");
  }
  if (e.train.device == config::Device::kCpu || !has_gpu) return at::Device(at::kCPU);
  // What the CUDA attention kernels take (kernels/sparse_attention_params.h).
  if (e.train.dtype != config::DType::kBFloat16) {
    throw UserError(
        "train.dtype = FLOAT32 on a GPU: the CUDA attention kernels take bf16; set "
        "train.dtype=BFLOAT16 (or train.device=CPU)");
  }
  if (e.model.head_dim() != 64 && e.model.head_dim() != 128) {
    throw UserError("model.hidden_size / model.num_heads = " + std::to_string(e.model.head_dim()) +
                    ": the CUDA attention kernels take head dim 64 or 128; change the sizes (or "
                    "set train.device=CPU)");
  }
  const auto index = static_cast<c10::DeviceIndex>(parallel::ProcessGroups::local_rank() %
                                                   torch::cuda::device_count());
#ifdef SPARSERING_WITH_CUDA
  c10::cuda::set_device(index);
#endif
  return at::Device(at::kCUDA, index);
}

int64_t matmul_parameters(const config::ModelConfig& m) {
  const int64_t attention =
      static_cast<int64_t>(m.hidden_size) * m.head_dim() * (2 * m.num_heads + 2 * m.num_kv_heads);
  const int64_t mlp = 3LL * m.hidden_size * m.ffn_hidden_size;
  return m.num_layers * (attention + mlp) + static_cast<int64_t>(m.hidden_size) * m.vocab_size;
}

namespace {

// What one training step computed, for its report.
struct StepOutcome {
  double lr = 0;
  double loss = 0;                             // global mean loss
  double grad_norm = 0;                        // global gradient norm
  double loss_share = 0;                       // this rank's part of the loss
  double attended = 0;                         // (query, key) pairs this rank attended
  double attended_total = 0, dense_total = 0;  // over every rank
  double attended_max = 0;                     // the busiest rank of this rank's ring
};

// One training run on this rank: set up in the constructor, then run() alternates train_step()
// and report_step().
class TrainingRun {
 public:
  TrainingRun(const config::Experiment& e, parallel::ProcessGroups& groups,
              const at::Device& device, const TrainOptions& options);
  TrainResult run();

 private:
  void claim_and_resume_point();
  void resume();
  StepOutcome train_step(int step);
  at::Tensor micro_step(int step, int micro, bool poison);
  void reduce_statistics(const at::Tensor& loss_sum, StepOutcome& outcome);
  void report_step(int step, const StepOutcome& outcome, double seconds);
  void finish(std::chrono::steady_clock::time_point run_start);

  const config::Experiment& e_;
  parallel::ProcessGroups& groups_;
  const at::Device device_;
  const TrainOptions options_;
  const int rank_, cp_rank_, dp_rank_, micro_steps_;
  const RunPaths paths_;
  TrainResult result_;
  Checkpointer checkpointer_;
  std::optional<std::string> resume_from_;
  std::unique_ptr<RunDirectoryClaim> claim_;
  std::unique_ptr<AppendFile> rank_log_;
  std::unique_ptr<Watchdog> watchdog_;
  std::optional<parallel::TokenLayout> layout_;
  std::vector<std::shared_ptr<parallel::RingAttention>> rings_;
  std::unique_ptr<NMSparsity> nm_sparsity_;
  Decoder model_{nullptr};
  std::unique_ptr<TrainingOptimizer> optimizer_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<tensorboard::TensorBoardWriter> tensorboard_;
  std::unique_ptr<Profiler> profiler_;
  std::unique_ptr<data::SequenceSource> source_;
  StepContext context_;
  RunTotals run_totals_;
};

TrainingRun::TrainingRun(const config::Experiment& e, parallel::ProcessGroups& groups,
                         const at::Device& device, const TrainOptions& options)
    : e_(e),
      groups_(groups),
      device_(device),
      options_(options),
      rank_(groups.world_rank()),
      cp_rank_(groups.cp_rank()),
      dp_rank_(groups.dp_rank()),
      micro_steps_(e.optimizer.grad_accumulation_steps),
      paths_(RunPaths::of(e, options.run_dir)),
      checkpointer_(paths_.checkpoint_dir, e, groups.world()) {
  result_.run_dir = paths_.run_dir;
  claim_and_resume_point();
  // Every rank's own record of its steps (its loss share, time, attention work), for finding
  // the slow or failing rank of a large job.
  char rank_file[32];
  std::snprintf(rank_file, sizeof(rank_file), "rank_%05d.log", rank_);
  fs::create_directories(paths_.file("logs"));
  rank_log_ = std::make_unique<AppendFile>((fs::path(paths_.file("logs")) / rank_file).string());
  watchdog_ = std::make_unique<Watchdog>(rank_, e.parallel.collective_timeout_s);

  const int64_t length = e.train.sequence_length;
  layout_.emplace(token_layout(e, length));
  rings_ = make_rings(e, ring_attention_config(e, length), groups.ring_groups(), *layout_);
  if (e.nm_sparsity.enabled) nm_sparsity_ = std::make_unique<NMSparsity>(e.nm_sparsity);
  model_ = make_decoder(e, rings_, nm_sparsity_.get(), device);
  std::vector<std::string> names;
  std::vector<at::Tensor> parameters;
  for (const auto& named : model_->named_parameters()) {
    names.push_back(named.key());
    parameters.push_back(named.value());
  }
  optimizer_ = make_training_optimizer(e, names, parameters, groups.world(), nm_sparsity_.get());
  // Resume before the metrics file opens, so it can be cut back to the checkpoint's step.
  resume();
  const std::string metrics_path = paths_.file("metrics.jsonl");
  if (rank_ == 0) truncate_metrics(metrics_path, result_.first_step - 1);
  metrics_ = std::make_unique<MetricsLog>(rank_ == 0 ? metrics_path : "");
  if (rank_ == 0 && e.logging.tensorboard) {
    tensorboard_ = std::make_unique<tensorboard::TensorBoardWriter>(paths_.file("tensorboard"));
  }
  if (e.profiling.enabled) {
    profiler_ =
        std::make_unique<Profiler>(rank_, device, e.profiling.start_step, e.profiling.num_steps);
  }
  set_rope_tables(context_, *layout_, cp_rank_, e.model, device);
  context_.profiler = profiler_.get();
  context_.layer_gather = optimizer_->layer_gather();
  for (auto& ring : rings_) ring->set_phase_observer(profiler_.get());
  source_ = data::make_sequence_source(e.data, length, e.model.vocab_size, e.train.seed);
}

void TrainingRun::claim_and_resume_point() {
  // Rank 0 claims the directory (lock, previous run's files, writable) and prepares it; the
  // barrier lets the other ranks see it (and lets a failure there end the job from rank 0 alone).
  // What --resume continues is decided there too, before anything is written.
  if (rank_ == 0) {
    claim_ = claim_run_directory(paths_.run_dir, paths_.checkpoint_dir, !options_.resume.empty(),
                                 options_.overwrite);
    if (!options_.resume.empty()) {
      resume_from_ = checkpointer_.find(options_.resume);
      if (resume_from_) {
        check_resume_compatible(*resume_from_, e_);
      } else {
        settle_fresh_start(paths_.run_dir, paths_.checkpoint_dir);
      }
    }
    prepare_run_dir(e_, paths_.run_dir);
  }
  groups_.world().barrier();
  if (rank_ != 0 && !options_.resume.empty()) resume_from_ = checkpointer_.find(options_.resume);
}

void TrainingRun::resume() {
  ResumeState resumed;
  if (!options_.resume.empty()) {
    if (resume_from_) {
      resumed = checkpointer_.load(*resume_from_, *optimizer_);
      if (rank_ == 0) std::cout << "sparsering: resumed from " << *resume_from_ << std::endl;
    } else if (rank_ == 0) {
      std::cout << "sparsering: no checkpoint under " << paths_.checkpoint_dir << ", starting fresh"
                << std::endl;
    }
  }
  if (nm_sparsity_ && !resumed.nm_state.empty()) {
    nm_sparsity_->restore(NMScheduleState::from_string(resumed.nm_state));
  }
  result_.first_step = resumed.step + 1;
}

// ", heads u x ring r" for head-parallel runs, with the K/V repetition the split costs.
std::string head_parallel_description(const config::Experiment& e) {
  const int u = e.parallel.head_parallel_size;
  if (u <= 1) return "";
  std::string text = ", head-parallel " + std::to_string(u) + " x ring " +
                     std::to_string(e.parallel.context_parallel_size / u);
  const int64_t repeat = parallel::kv_head_repeat(e.model.num_kv_heads, u);
  if (repeat > 1) {
    text += ", K/V heads repeated " + std::to_string(e.model.num_kv_heads) + " -> " +
            std::to_string(e.model.num_kv_heads * repeat) + " for the all-to-all (" +
            std::to_string(repeat) + "x their traffic)";
  }
  return text;
}

TrainResult TrainingRun::run() {
  if (rank_ == 0) {
    std::cout << "sparsering: training '" << e_.name << "' on " << groups_.world_size()
              << " rank(s) (dp " << e_.parallel.data_parallel_size << " x cp "
              << e_.parallel.context_parallel_size << ", " << parallel::layout_name(layout_->kind())
              << " layout" << head_parallel_description(e_) << "), device " << device_.str()
              << ", data: " << source_->description()
              << (e_.data.document_mask ? ", document masking" : "") << ", run dir "
              << paths_.run_dir << std::endl;
  }
  const auto run_start = std::chrono::steady_clock::now();
  // A finished run that is continued no longer counts as finished until it ends again.
  if (rank_ == 0) ::remove(paths_.file("summary.json").c_str());
  for (int step = static_cast<int>(result_.first_step); step <= e_.train.steps; ++step) {
    const auto start = std::chrono::steady_clock::now();
    const StepOutcome outcome = train_step(step);
    if (device_.is_cuda()) torch::cuda::synchronize();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report_step(step, outcome, seconds);
  }
  finish(run_start);
  return result_;
}

// Micro-batches (forward, loss, backward), gradient sync, NaN policy, optimizer step.
StepOutcome TrainingRun::train_step(int step) {
  watchdog_->beat("step start");
  if (profiler_) profiler_->begin_step(step);
  const bool poison = maybe_inject_fault(FaultPoint::kStepStart, rank_, step);
  StepOutcome outcome;
  outcome.lr = learning_rate(e_.schedule, e_.optimizer.lr, step, e_.train.steps);
  context_.estimate_pattern = (step - 1) % e_.attention.reestimate_every == 0;
  context_.dense_attention = step <= e_.attention.dense_warmup_steps;
  optimizer_->zero_grad();
  // N:M masks follow the weights: recomputed every step from the fp32 masters.
  optimizer_->update_nm_masks(step);
  auto loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(device_));
  for (int micro = 0; micro < micro_steps_; ++micro) loss_sum += micro_step(step, micro, poison);
  watchdog_->beat("gradient sync");
  {
    ProfileScope scope(profiler_.get(), "gradient_sync");
    optimizer_->synchronize_gradients();
  }
  reduce_statistics(loss_sum, outcome);
  // Every rank sees the same global loss and gradient norm, so all take the same decision.
  optimizer_->add_sr_ste_term();
  outcome.grad_norm = optimizer_->gradient_norm();
  if (!std::isfinite(outcome.loss) || !std::isfinite(outcome.grad_norm)) {
    if (e_.train.nan_policy == config::NanPolicy::kStop) {
      throw std::runtime_error(
          "non-finite loss or gradient (loss " + std::to_string(outcome.loss) + ", grad norm " +
          std::to_string(outcome.grad_norm) + ") at step " + std::to_string(step) +
          "; lower optimizer.lr, check the data, or set train.nan_policy=SKIP_STEP");
    }
    ++result_.skipped_steps;
    if (rank_ == 0) {
      std::cerr << "sparsering: warning: step " << step << " skipped: non-finite loss or "
                << "gradient (" << result_.skipped_steps << " skipped so far)" << std::endl;
    }
  } else {
    ProfileScope scope(profiler_.get(), "optimizer");
    optimizer_->step(outcome.lr, e_.optimizer.grad_clip, outcome.grad_norm);
  }
  if (profiler_) profiler_->end_step();
  return outcome;
}

// One micro-batch: this rank's shard of it through forward, loss and backward. Returns the
// detached loss (fp64, on the device).
at::Tensor TrainingRun::micro_step(int step, int micro, bool poison) {
  at::Tensor local_tokens, local_labels, loss;
  double global_labels = 0;
  {
    ProfileScope scope(profiler_.get(), "data");
    const MicroBatch batch = micro_batch(e_, *source_, step, micro, dp_rank_);
    local_tokens = layout_->shard(batch.tokens, cp_rank_).to(device_);
    local_labels = layout_->shard(batch.labels, cp_rank_).to(device_);
    set_document_mask(context_, e_, batch, *layout_, cp_rank_, device_);
    // The loss is the mean over every label of the step: count them over the dp replicas
    // (the cp ranks of a replica hold the same sequences).
    auto count = (batch.labels != kIgnoreLabel).sum().to(at::kDouble).reshape({1});
    groups_.dp().all_reduce(count);
    global_labels = count.item<double>() * micro_steps_;
  }
  const auto hidden = model_->forward(local_tokens, context_);
  {
    ProfileScope scope(profiler_.get(), "loss");
    loss =
        chunked_cross_entropy(hidden.reshape({-1, hidden.size(-1)}), model_->output_weight(),
                              local_labels.reshape(-1), e_.model.loss_chunk_tokens, global_labels);
  }
  if (poison) loss = loss * std::numeric_limits<double>::quiet_NaN();
  watchdog_->beat("backward");
  {
    ProfileScope scope(profiler_.get(), "backward");
    loss.backward();
  }
  return loss.detach().to(at::kDouble);
}

// The global loss and the attention work (density, the ring's imbalance) in two all-reduces.
void TrainingRun::reduce_statistics(const at::Tensor& loss_sum, StepOutcome& outcome) {
  double dense = 0;
  for (const auto& ring : rings_) {
    outcome.attended += ring->stats().attended_pairs;
    dense += ring->stats().dense_pairs;
  }
  auto reduced = at::stack({loss_sum.cpu(), at::scalar_tensor(outcome.attended, at::kDouble),
                            at::scalar_tensor(dense, at::kDouble)})
                     .contiguous();
  auto work_max = at::tensor({outcome.attended}, at::kDouble);
  if (device_.is_cuda()) {
    reduced = reduced.to(device_);
    work_max = work_max.to(device_);
  }
  watchdog_->beat("metrics all-reduce");
  groups_.world().all_reduce(reduced);
  groups_.cp().all_reduce(work_max, parallel::ReduceOp::kMax);
  const auto totals = reduced.cpu();
  outcome.loss_share = loss_sum.item<double>();
  outcome.loss = totals[0].item<double>();
  outcome.attended_total = totals[1].item<double>();
  outcome.dense_total = totals[2].item<double>();
  outcome.attended_max = work_max.cpu().item<double>();
}

// The step's statistics: this rank's log line, metrics.jsonl, TensorBoard, the console, and the
// checkpoint when one is due.
void TrainingRun::report_step(int step, const StepOutcome& outcome, double seconds) {
  int64_t skipped_shards = 0;
  for (const auto& ring : rings_) skipped_shards += ring->stats().skipped_shards;
  std::ostringstream rank_line;
  rank_line << "step " << step << " loss_share " << outcome.loss_share << " seconds " << seconds
            << " attended_pairs " << outcome.attended << " skipped_shards " << skipped_shards
            << "\n";
  rank_log_->append(rank_line.str());

  // Tokens processed per step, for throughput.
  const double global_tokens = static_cast<double>(e_.train.micro_batch_size) *
                               e_.parallel.data_parallel_size * micro_steps_ *
                               e_.train.sequence_length;
  StepMetrics m;
  m.step = step;
  m.loss = outcome.loss;
  m.lr = outcome.lr;
  m.grad_norm = outcome.grad_norm;
  m.step_seconds = seconds;
  m.skipped_steps = result_.skipped_steps;
  m.tokens_per_second = global_tokens / seconds;
  m.attention_density =
      outcome.dense_total > 0 ? outcome.attended_total / outcome.dense_total : 0.0;
  const double mean_work = outcome.attended_total / groups_.world_size();
  m.imbalance = mean_work > 0 ? outcome.attended_max / mean_work : 1.0;
  const StepFlops flops = step_flops(e_, m.attention_density);
  m.executed_tflops = flops.executed / seconds / 1e12;
  m.dense_equivalent_tflops = flops.dense / seconds / 1e12;
  if (device_.is_cuda()) m.mfu = m.executed_tflops / (kHopperPeakTflops * groups_.world_size());
  result_.losses.push_back(outcome.loss);
  run_totals_.add(m);
  if (rank_ == 0) {
    metrics_->write(m);
    if (tensorboard_) {
      tensorboard_->add_scalar("train/loss", m.loss, step);
      tensorboard_->add_scalar("train/lr", m.lr, step);
      tensorboard_->add_scalar("train/grad_norm", m.grad_norm, step);
      tensorboard_->add_scalar("perf/tokens_per_second", m.tokens_per_second, step);
      tensorboard_->add_scalar("perf/executed_tflops", m.executed_tflops, step);
      tensorboard_->add_scalar("perf/dense_equivalent_tflops", m.dense_equivalent_tflops, step);
      if (m.mfu >= 0) tensorboard_->add_scalar("perf/mfu", m.mfu, step);
      tensorboard_->add_scalar("attention/density", m.attention_density, step);
      tensorboard_->add_scalar("attention/imbalance", m.imbalance, step);
      if (nm_sparsity_) tensorboard_->add_scalar("nm/beta", nm_sparsity_->beta(), step);
      tensorboard_->flush();
    }
    if (step % e_.logging.log_every == 0 || step == e_.train.steps) {
      std::cout << MetricsLog::console_line(m, e_.train.steps) << std::endl;
    }
  }
  if (e_.checkpoint.every_steps > 0 &&
      (step % e_.checkpoint.every_steps == 0 || step == e_.train.steps)) {
    watchdog_->beat("checkpoint");
    const int64_t sequences = static_cast<int64_t>(step) * micro_steps_ * e_.train.micro_batch_size;
    checkpointer_.save({step, sequences, nm_sparsity_ ? nm_sparsity_->state().to_string() : ""},
                       *optimizer_);
  }
}

void TrainingRun::finish(std::chrono::steady_clock::time_point run_start) {
  if (profiler_) {
    profiler_->finish();
    // The plan models GPU memory (the caching allocator's peak); CPU runs have no plan to check.
    report_profile(*profiler_, groups_.world(), paths_.run_dir, optimizer_->memory(),
                   device_.is_cuda() ? planned_peak_bytes(e_) : 0);
  }
  if (rank_ == 0) {
    write_summary(
        paths_.run_dir, result_, run_totals_, device_.is_cuda(),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count());
  }
}

}  // namespace

TrainResult train(const config::Experiment& e, parallel::ProcessGroups& groups,
                  const at::Device& device, const TrainOptions& options) {
  return TrainingRun(e, groups, device, options).run();
}

}  // namespace sparsering::trainer
