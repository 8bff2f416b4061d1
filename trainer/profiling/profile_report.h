// What the profiles of all ranks say together: a summary table (mean ms per phase and rank, share
// of the step, imbalance across ranks) and one Chrome trace with a process per rank. The trainer
// gathers every rank's RankProfile (RankProfile::to_row) and trace events; nothing here talks to
// other ranks.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/profiling/profiler.h"

namespace sparsering::trainer {

struct ProfileRow {
  std::string name;
  std::vector<double> ms_per_rank;  // mean ms per step on each rank
  double mean_ms = 0;               // mean over ranks
  double share = 0;                 // mean_ms / the mean step time
  double imbalance = 1;             // max / mean over ranks; 1 when the mean is 0
};

struct ProfileSummary {
  int steps = 0;  // profiled steps per rank
  // One row per phase, then "outside phases" (step time outside every top-level phase), then
  // "step". Top-level phases and "outside phases" add up to the step.
  std::vector<ProfileRow> rows;
  std::vector<int64_t> peak_memory_bytes;  // per rank
  // Per rank: the model state's share of the peak (RankProfile), in the order weights,
  // gradients, optimizer state.
  std::vector<std::array<int64_t, 3>> model_state_bytes;
};

// `ranks[r]` is rank r's profile, its phase_ms indexed like `phases`.
ProfileSummary summarize_profiles(const std::vector<PhaseDefinition>& phases,
                                  const std::vector<RankProfile>& ranks);

// The summary as a text table: a column per rank up to 8 ranks, else min and max columns.
std::string format_profile_summary(const ProfileSummary& summary);

// The Chrome trace events of one rank's steps (JSON objects separated by commas): pid = rank,
// tid = phase group (tid 0 = the steps), ts and dur in microseconds since the Unix epoch, where
// `origin_unix_us` is the Unix time of the steps' time origin. Profiler::chrome_trace_events()
// calls it.
std::string chrome_trace_events(int rank, const std::vector<PhaseDefinition>& phases,
                                const std::vector<StepProfile>& steps, double origin_unix_us);

// One Chrome trace JSON document (Perfetto, chrome://tracing) from every rank's
// Profiler::chrome_trace_events().
std::string chrome_trace_json(const std::vector<std::string>& events_of_ranks);

// Writes chrome_trace_json(events_of_ranks) to `path`; throws UserError naming it on failure.
void write_chrome_trace(const std::string& path, const std::vector<std::string>& events_of_ranks);

}  // namespace sparsering::trainer
