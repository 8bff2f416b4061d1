#include "trainer/run_outputs.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <vector>

#include "configs/user_error.h"
#include "trainer/checkpoint/atomic_file.h"
#include "trainer/profiling/profile_report.h"

namespace sparsering::trainer {

namespace fs = std::filesystem;

void prepare_run_dir(const config::Experiment& e, const std::string& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) throw UserError(dir + ": cannot create the run directory (" + error.message() + ")");
  write_file_atomically((fs::path(dir) / "config.pbtxt").string(), e.resolved_text);
}

void truncate_metrics(const std::string& path, int64_t last_step) {
  if (!fs::exists(path)) return;
  std::string kept;
  int64_t cut = 0;
  {
    std::ifstream file(path);
    std::string line;
    while (std::getline(file, line)) {
      // Every line starts {"step": N, ...} (MetricsLog::write); anything else is a line cut by a
      // crash, which is dropped.
      const auto at = line.find("\"step\": ");
      char* end = nullptr;
      const long long step =
          at == std::string::npos ? -1 : std::strtoll(line.c_str() + at + 8, &end, 10);
      const bool whole = at != std::string::npos && end != line.c_str() + at + 8 && !line.empty() &&
                         line.back() == '}';
      if (whole && step <= last_step) {
        kept += line + '\n';
      } else if (!whole) {
        ++cut;
      }
    }
  }
  if (cut > 0) {
    std::cout << "sparsering: " << path << ": " << cut
              << " cut line(s) (an interrupted write) dropped" << std::endl;
  }
  write_file_atomically(path, kept);
}

void report_profile(Profiler& profiler, parallel::Communicator& world, const std::string& run_dir,
                    const ModelStateBytes& model_state, int64_t planned_peak_bytes) {
  RankProfile profile = profiler.rank_profile();
  profile.weight_bytes = model_state.weights;
  profile.gradient_bytes = model_state.gradients;
  profile.optimizer_bytes = model_state.optimizer;
  const auto row = profile.to_row();
  const auto rows = world.all_gather(at::tensor(row, at::kDouble)).contiguous();
  const std::string events = profiler.chrome_trace_events();
  const auto lengths =
      world.all_gather(at::tensor({static_cast<int64_t>(events.size())}, at::kLong));
  auto padded = at::zeros({std::max<int64_t>(1, lengths.max().item<int64_t>())}, at::kByte);
  std::memcpy(padded.data_ptr(), events.data(), events.size());
  const auto all = world.all_gather(padded).contiguous();
  if (world.rank() != 0) return;
  std::vector<RankProfile> ranks;
  std::vector<std::string> traces;
  for (int r = 0; r < world.size(); ++r) {
    ranks.push_back(RankProfile::from_row(rows[r].data_ptr<double>(), profiler.phases().size()));
    traces.emplace_back(reinterpret_cast<const char*>(all[r].data_ptr<uint8_t>()),
                        lengths[r][0].item<int64_t>());
  }
  const ProfileSummary summary = summarize_profiles(profiler.phases(), ranks);
  std::cout << format_profile_summary(summary);
  const auto peaks = summary.peak_memory_bytes;
  if (planned_peak_bytes > 0 && !peaks.empty()) {
    // The planner's check: its prediction for this config beside the largest measured peak.
    const double peak = static_cast<double>(*std::max_element(peaks.begin(), peaks.end()));
    char line[160];
    std::snprintf(line, sizeof(line),
                  "memory plan (sparsering plan) %.2f GiB per rank; measured peak %.2f GiB (%.3f "
                  "of the plan)\n",
                  planned_peak_bytes / 1073741824.0, peak / 1073741824.0,
                  peak / planned_peak_bytes);
    std::cout << line;
  }
  const std::string trace = (fs::path(run_dir) / "trace.json").string();
  write_chrome_trace(trace, traces);
  std::cout << "sparsering: Chrome trace (Perfetto) written to " << trace << std::endl;
}

void write_summary(const std::string& run_dir, const TrainResult& result, const RunTotals& totals,
                   bool on_gpu, double wall_seconds) {
  auto mean = [&](double sum) { return totals.steps ? sum / totals.steps : 0.0; };
  std::ostringstream json;
  json << "{\"final_loss\": "
       << (result.losses.empty() || !std::isfinite(result.losses.back())
               ? std::string("null")
               : std::to_string(result.losses.back()))
       << ", \"steps\": " << result.first_step - 1 + totals.steps
       << ", \"first_step\": " << result.first_step
       << ", \"skipped_steps\": " << result.skipped_steps
       << ", \"tokens_per_second_mean\": " << mean(totals.tokens_per_second)
       << ", \"executed_tflops_mean\": " << mean(totals.executed_tflops)
       << ", \"dense_equivalent_tflops_mean\": " << mean(totals.dense_equivalent_tflops)
       << ", \"mfu_mean\": " << (on_gpu ? std::to_string(mean(totals.mfu)) : "null")
       << ", \"attention_density_mean\": " << mean(totals.density)
       << ", \"wall_seconds\": " << wall_seconds << "}\n";
  write_file_atomically((fs::path(run_dir) / "summary.json").string(), json.str());
}

}  // namespace sparsering::trainer
