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
#include "trainer/atomic_file.h"
#include "trainer/checkpoint.h"
#include "trainer/chunked_loss.h"
#include "trainer/fault_injection.h"
#include "trainer/metrics.h"
#include "trainer/micro_batch.h"
#include "trainer/model.h"
#include "trainer/model_setup.h"
#include "trainer/nm_sparsity.h"
#include "trainer/profiler.h"
#include "trainer/resume_compatibility.h"
#include "trainer/run_directory.h"
#include "trainer/run_outputs.h"
#include "trainer/schedule.h"
#include "trainer/tensorboard/tensorboard_writer.h"
#include "trainer/training_optimizer.h"
#include "trainer/watchdog.h"

namespace sparsering::trainer {
namespace {

namespace fs = std::filesystem;

// bf16 dense tensor-core peak of one H100/H200 SXM, for MFU.
constexpr double kHopperPeakTflops = 989.0;

std::string run_dir_of(const config::Experiment& e, const TrainOptions& options) {
  return options.run_dir.empty() ? (fs::path(e.train.runs_root) / e.name).string()
                                 : options.run_dir;
}

// FLOPs of one training step, dense-equivalent: 6 x matmul parameters per token, plus causal
// attention 2 x S^2 x hidden per layer and sequence forward, backward counted as 2.5 x forward
// (five matmuls against the forward's two, as FlashAttention's benchmarks count it).
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

TrainResult train(const config::Experiment& e, parallel::ProcessGroups& groups,
                  const at::Device& device, const TrainOptions& options) {
  const int rank = groups.world_rank();
  const int cp_rank = groups.cp_rank(), dp_rank = groups.dp_rank();
  TrainResult result;
  result.run_dir = run_dir_of(e, options);
  const std::string checkpoint_dir = e.checkpoint.dir.empty()
                                         ? (fs::path(result.run_dir) / "checkpoints").string()
                                         : e.checkpoint.dir;
  // Rank 0 claims the directory (lock, previous run's files, writable) and prepares it; the
  // barrier lets the other ranks see it (and lets a failure there end the job from rank 0 alone).
  // What --resume continues is decided there too, before anything is written.
  Checkpointer checkpointer(checkpoint_dir, e, groups.world());
  std::optional<std::string> resume_from;
  std::unique_ptr<RunDirectoryClaim> claim;
  if (rank == 0) {
    claim = claim_run_directory(result.run_dir, checkpoint_dir, !options.resume.empty(),
                                options.overwrite);
    if (!options.resume.empty()) {
      resume_from = checkpointer.find(options.resume);
      if (resume_from) {
        check_resume_compatible(*resume_from, e);
      } else {
        settle_fresh_start(result.run_dir, checkpoint_dir);
      }
    }
    prepare_run_dir(e, result.run_dir);
  }
  groups.world().barrier();
  if (rank != 0 && !options.resume.empty()) resume_from = checkpointer.find(options.resume);
  // Every rank's own record of its steps (its loss share, time, attention work), for finding
  // the slow or failing rank of a large job.
  char rank_file[32];
  std::snprintf(rank_file, sizeof(rank_file), "rank_%05d.log", rank);
  fs::create_directories(fs::path(result.run_dir) / "logs");
  AppendFile rank_log((fs::path(result.run_dir) / "logs" / rank_file).string());
  Watchdog watchdog(rank, e.parallel.collective_timeout_s);

  const int64_t length = e.train.sequence_length;
  const parallel::TokenLayout layout = token_layout(e, length);
  const auto rings = make_rings(e, ring_attention_config(e, length), groups.ring_groups(), layout);
  std::unique_ptr<NMSparsity> nm_sparsity;
  if (e.nm_sparsity.enabled) nm_sparsity = std::make_unique<NMSparsity>(e.nm_sparsity);
  Decoder model = make_decoder(e, rings, nm_sparsity.get(), device);
  std::vector<std::string> names;
  std::vector<at::Tensor> parameters;
  for (const auto& named : model->named_parameters()) {
    names.push_back(named.key());
    parameters.push_back(named.value());
  }
  const auto optimizer =
      make_training_optimizer(e, names, parameters, groups.world(), nm_sparsity.get());
  // Resume before the metrics file opens, so it can be cut back to the checkpoint's step.
  ResumeState resumed;
  if (!options.resume.empty()) {
    if (resume_from) {
      resumed = checkpointer.load(*resume_from, *optimizer);
      if (rank == 0) std::cout << "sparsering: resumed from " << *resume_from << std::endl;
    } else if (rank == 0) {
      std::cout << "sparsering: no checkpoint under " << checkpoint_dir << ", starting fresh"
                << std::endl;
    }
  }
  if (nm_sparsity && !resumed.nm_state.empty()) {
    nm_sparsity->restore(NMScheduleState::from_string(resumed.nm_state));
  }
  result.first_step = resumed.step + 1;
  const fs::path metrics_path = fs::path(result.run_dir) / "metrics.jsonl";
  if (rank == 0) truncate_metrics(metrics_path.string(), resumed.step);
  MetricsLog metrics(rank == 0 ? metrics_path.string() : "");
  std::unique_ptr<tensorboard::TensorBoardWriter> tensorboard;
  if (rank == 0 && e.logging.tensorboard) {
    tensorboard = std::make_unique<tensorboard::TensorBoardWriter>(
        (fs::path(result.run_dir) / "tensorboard").string());
  }
  std::unique_ptr<Profiler> profiler;
  if (e.profiling.enabled) {
    profiler =
        std::make_unique<Profiler>(rank, device, e.profiling.start_step, e.profiling.num_steps);
  }

  StepContext context;
  set_rope_tables(context, layout, cp_rank, e.model, device);
  context.profiler = profiler.get();
  context.layer_gather = optimizer->layer_gather();
  for (auto& ring : rings) ring->set_phase_observer(profiler.get());
  const int micro_steps = e.optimizer.grad_accumulation_steps;
  // Tokens processed per step, for throughput.
  const double global_tokens = static_cast<double>(e.train.micro_batch_size) *
                               e.parallel.data_parallel_size * micro_steps * length;
  const auto source = data::make_sequence_source(e.data, length, e.model.vocab_size, e.train.seed);

  if (rank == 0) {
    std::cout << "sparsering: training '" << e.name << "' on " << groups.world_size()
              << " rank(s) ("
              << "dp " << e.parallel.data_parallel_size << " x cp "
              << e.parallel.context_parallel_size << ", " << parallel::layout_name(layout.kind())
              << " layout), device " << device.str() << ", data: " << source->description()
              << (e.data.document_mask ? ", document masking" : "") << ", run dir "
              << result.run_dir << std::endl;
  }
  const auto run_start = std::chrono::steady_clock::now();
  RunTotals run_totals;
  // A finished run that is continued no longer counts as finished until it ends again.
  if (rank == 0) ::remove((fs::path(result.run_dir) / "summary.json").c_str());
  for (int step = static_cast<int>(result.first_step); step <= e.train.steps; ++step) {
    watchdog.beat("step start");
    if (profiler) profiler->begin_step(step);
    const bool poison = maybe_inject_fault(FaultPoint::kStepStart, rank, step);
    const auto start = std::chrono::steady_clock::now();
    const double lr = learning_rate(e.schedule, e.optimizer.lr, step, e.train.steps);
    context.estimate_pattern = (step - 1) % e.attention.reestimate_every == 0;
    context.dense_attention = step <= e.attention.dense_warmup_steps;
    optimizer->zero_grad();
    // N:M masks follow the weights: recomputed every step from the fp32 masters.
    optimizer->update_nm_masks(step);
    auto loss_sum = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(device));
    for (int micro = 0; micro < micro_steps; ++micro) {
      at::Tensor local_tokens, local_labels, loss;
      double global_labels = 0;
      {
        ProfileScope scope(profiler.get(), "data");
        const MicroBatch batch = micro_batch(e, *source, step, micro, dp_rank);
        local_tokens = layout.shard(batch.tokens, cp_rank).to(device);
        local_labels = layout.shard(batch.labels, cp_rank).to(device);
        set_document_mask(context, e, batch, layout, cp_rank, device);
        // The loss is the mean over every label of the step: count them over the dp replicas
        // (the cp ranks of a replica hold the same sequences).
        auto count = (batch.labels != kIgnoreLabel).sum().to(at::kDouble).reshape({1});
        groups.dp().all_reduce(count);
        global_labels = count.item<double>() * micro_steps;
      }
      const auto hidden = model->forward(local_tokens, context);
      {
        ProfileScope scope(profiler.get(), "loss");
        loss = chunked_cross_entropy(hidden.reshape({-1, hidden.size(-1)}), model->output_weight(),
                                     local_labels.reshape(-1), e.model.loss_chunk_tokens,
                                     global_labels);
      }
      if (poison) loss = loss * std::numeric_limits<double>::quiet_NaN();
      watchdog.beat("backward");
      {
        ProfileScope scope(profiler.get(), "backward");
        loss.backward();
      }
      loss_sum += loss.detach().to(at::kDouble);
    }
    watchdog.beat("gradient sync");
    {
      ProfileScope scope(profiler.get(), "gradient_sync");
      optimizer->synchronize_gradients();
    }
    // Attention work of this rank, for density and the imbalance across the ring.
    double attended = 0, dense = 0;
    for (const auto& ring : rings) {
      attended += ring->stats().attended_pairs;
      dense += ring->stats().dense_pairs;
    }
    auto reduced = at::stack({loss_sum.cpu(), at::scalar_tensor(attended, at::kDouble),
                              at::scalar_tensor(dense, at::kDouble)})
                       .contiguous();
    auto work_max = at::tensor({attended}, at::kDouble);
    if (device.is_cuda()) {
      reduced = reduced.to(device);
      work_max = work_max.to(device);
    }
    watchdog.beat("metrics all-reduce");
    groups.world().all_reduce(reduced);
    groups.cp().all_reduce(work_max, parallel::ReduceOp::kMax);
    const auto totals = reduced.cpu();
    const double loss_value = totals[0].item<double>();
    // Every rank sees the same global loss and gradient norm, so all take the same decision.
    optimizer->add_sr_ste_term();
    const double grad_norm = optimizer->gradient_norm();
    if (!std::isfinite(loss_value) || !std::isfinite(grad_norm)) {
      if (e.train.nan_policy == config::NanPolicy::kStop) {
        throw std::runtime_error("non-finite loss or gradient (loss " + std::to_string(loss_value) +
                                 ", grad norm " + std::to_string(grad_norm) + ") at step " +
                                 std::to_string(step) +
                                 "; lower optimizer.lr, check the data, or set "
                                 "train.nan_policy=SKIP_STEP");
      }
      ++result.skipped_steps;
      if (rank == 0) {
        std::cerr << "sparsering: warning: step " << step << " skipped: non-finite loss or "
                  << "gradient (" << result.skipped_steps << " skipped so far)" << std::endl;
      }
    } else {
      ProfileScope scope(profiler.get(), "optimizer");
      optimizer->step(lr, e.optimizer.grad_clip, grad_norm);
    }
    if (profiler) profiler->end_step();
    if (device.is_cuda()) torch::cuda::synchronize();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    int64_t skipped_shards = 0;
    for (const auto& ring : rings) skipped_shards += ring->stats().skipped_shards;
    std::ostringstream rank_line;
    rank_line << "step " << step << " loss_share " << loss_sum.item<double>() << " seconds "
              << seconds << " attended_pairs " << attended << " skipped_shards " << skipped_shards
              << "\n";
    rank_log.append(rank_line.str());

    StepMetrics m;
    m.step = step;
    m.loss = loss_value;
    m.lr = lr;
    m.grad_norm = grad_norm;
    m.step_seconds = seconds;
    m.skipped_steps = result.skipped_steps;
    m.tokens_per_second = global_tokens / seconds;
    m.attention_density =
        totals[2].item<double>() > 0 ? totals[1].item<double>() / totals[2].item<double>() : 0.0;
    const double mean_work = totals[1].item<double>() / groups.world_size();
    m.imbalance = mean_work > 0 ? work_max.cpu().item<double>() / mean_work : 1.0;
    const StepFlops flops = step_flops(e, m.attention_density);
    m.model_tflops = flops.dense / seconds / 1e12;
    m.executed_tflops = flops.executed / seconds / 1e12;
    if (device.is_cuda()) m.mfu = m.model_tflops / (kHopperPeakTflops * groups.world_size());
    result.losses.push_back(loss_value);
    run_totals.add(m);
    if (rank == 0) {
      metrics.write(m);
      if (tensorboard) {
        tensorboard->add_scalar("train/loss", m.loss, step);
        tensorboard->add_scalar("train/lr", m.lr, step);
        tensorboard->add_scalar("train/grad_norm", m.grad_norm, step);
        tensorboard->add_scalar("perf/tokens_per_second", m.tokens_per_second, step);
        tensorboard->add_scalar("perf/model_tflops", m.model_tflops, step);
        if (m.mfu >= 0) tensorboard->add_scalar("perf/mfu", m.mfu, step);
        tensorboard->add_scalar("attention/density", m.attention_density, step);
        tensorboard->add_scalar("attention/imbalance", m.imbalance, step);
        if (nm_sparsity) tensorboard->add_scalar("nm/beta", nm_sparsity->beta(), step);
        tensorboard->flush();
      }
      if (step % e.logging.log_every == 0 || step == e.train.steps) {
        std::cout << MetricsLog::console_line(m, e.train.steps) << std::endl;
      }
    }
    if (e.checkpoint.every_steps > 0 &&
        (step % e.checkpoint.every_steps == 0 || step == e.train.steps)) {
      watchdog.beat("checkpoint");
      const int64_t sequences = static_cast<int64_t>(step) * micro_steps * e.train.micro_batch_size;
      checkpointer.save({step, sequences, nm_sparsity ? nm_sparsity->state().to_string() : ""},
                        *optimizer);
    }
  }
  if (profiler) {
    profiler->finish();
    report_profile(*profiler, groups.world(), result.run_dir, optimizer->memory());
  }
  if (rank == 0) {
    write_summary(
        result.run_dir, result, run_totals, device.is_cuda(),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count());
  }
  return result;
}

}  // namespace sparsering::trainer
