#include "trainer/profiling/profile_report.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <stdexcept>

#include "configs/user_error.h"
#include "trainer/hf/json.h"

namespace sparsering::trainer {
namespace {

// Wider tables stop fitting a terminal; min and max still show the spread.
constexpr size_t kMaxRankColumns = 8;

ProfileRow make_row(std::string name, std::vector<double> ms_per_rank) {
  ProfileRow row;
  row.name = std::move(name);
  row.ms_per_rank = std::move(ms_per_rank);
  double sum = 0, max = 0;
  for (const double ms : row.ms_per_rank) {
    sum += ms;
    max = std::max(max, ms);
  }
  row.mean_ms = row.ms_per_rank.empty() ? 0 : sum / row.ms_per_rank.size();
  row.imbalance = row.mean_ms > 0 ? max / row.mean_ms : 1.0;
  return row;
}

std::string format_cell(const char* format, double value) {
  char cell[32];
  std::snprintf(cell, sizeof(cell), format, value);
  return cell;
}

}  // namespace

std::string chrome_trace_events(int rank, const std::vector<PhaseDefinition>& phases,
                                const std::vector<StepProfile>& steps, double origin_unix_us) {
  // tid 0 holds the steps; each phase group gets the next tid, in order of first appearance.
  std::vector<std::string> groups;
  std::vector<int> tid_of_phase;
  for (const PhaseDefinition& phase : phases) {
    size_t group = 0;
    while (group < groups.size() && groups[group] != phase.group) ++group;
    if (group == groups.size()) groups.push_back(phase.group);
    tid_of_phase.push_back(static_cast<int>(group) + 1);
  }
  std::vector<std::string> events;
  const std::string pid = std::to_string(rank);
  auto metadata = [&](const char* name, int tid, const std::string& args) {
    events.push_back("{\"ph\":\"M\",\"name\":\"" + std::string(name) + "\",\"pid\":" + pid +
                     ",\"tid\":" + std::to_string(tid) + ",\"args\":{" + args + "}}");
  };
  metadata("process_name", 0, "\"name\":" + json_quote("rank " + pid));
  metadata("process_sort_index", 0, "\"sort_index\":" + pid);
  metadata("thread_name", 0, "\"name\":\"steps\"");
  for (size_t group = 0; group < groups.size(); ++group) {
    metadata("thread_name", static_cast<int>(group) + 1, "\"name\":" + json_quote(groups[group]));
  }
  auto complete = [&](const std::string& name, const std::string& category, int tid,
                      double begin_us, double duration_us, int step) {
    char times[96];
    std::snprintf(times, sizeof(times), "\"ts\":%.3f,\"dur\":%.3f", origin_unix_us + begin_us,
                  duration_us);
    events.push_back("{\"ph\":\"X\",\"name\":" + json_quote(name) + ",\"cat\":" +
                     json_quote(category) + ",\"pid\":" + pid + ",\"tid\":" + std::to_string(tid) +
                     "," + times + ",\"args\":{\"step\":" + std::to_string(step) + "}}");
  };
  for (const StepProfile& step : steps) {
    complete("step " + std::to_string(step.step), "step", 0, step.begin_us, 1e3 * step.duration_ms,
             step.step);
    for (const PhaseInterval& interval : step.intervals) {
      const PhaseDefinition& phase = phases[interval.phase];
      complete(phase.name, phase.group, tid_of_phase[interval.phase], interval.begin_us,
               interval.duration_us, step.step);
    }
  }
  std::string joined;
  for (const std::string& event : events) joined += (joined.empty() ? "" : ",\n") + event;
  return joined;
}

ProfileSummary summarize_profiles(const std::vector<PhaseDefinition>& phases,
                                  const std::vector<RankProfile>& ranks) {
  ProfileSummary summary;
  if (ranks.empty()) return summary;
  summary.steps = ranks.front().steps;
  for (size_t r = 0; r < ranks.size(); ++r) {
    if (ranks[r].phase_ms.size() != phases.size()) {
      throw std::invalid_argument("profile of rank " + std::to_string(r) + " has " +
                                  std::to_string(ranks[r].phase_ms.size()) + " phases, not " +
                                  std::to_string(phases.size()));
    }
  }
  auto per_rank = [&](auto value_of) {
    std::vector<double> values;
    for (const RankProfile& rank : ranks) values.push_back(value_of(rank));
    return values;
  };
  for (size_t i = 0; i < phases.size(); ++i) {
    summary.rows.push_back(
        make_row(phases[i].name, per_rank([i](const RankProfile& r) { return r.phase_ms[i]; })));
  }
  summary.rows.push_back(make_row(
      "outside phases", per_rank([](const RankProfile& r) { return r.outside_phases_ms; })));
  summary.rows.push_back(
      make_row("step", per_rank([](const RankProfile& r) { return r.step_ms; })));
  const double step_ms = summary.rows.back().mean_ms;
  for (ProfileRow& row : summary.rows) row.share = step_ms > 0 ? row.mean_ms / step_ms : 0.0;
  for (const RankProfile& rank : ranks) {
    summary.peak_memory_bytes.push_back(rank.peak_memory_bytes);
    summary.model_state_bytes.push_back(
        {rank.weight_bytes, rank.gradient_bytes, rank.optimizer_bytes});
  }
  return summary;
}

std::string format_profile_summary(const ProfileSummary& summary) {
  const size_t num_ranks = summary.peak_memory_bytes.size();
  const bool rank_columns = num_ranks <= kMaxRankColumns;
  std::vector<std::string> header = {"phase (mean ms per step)"};
  if (rank_columns) {
    for (size_t r = 0; r < num_ranks; ++r) header.push_back("rank " + std::to_string(r));
  } else {
    header.insert(header.end(), {"min rank", "max rank"});
  }
  header.insert(header.end(), {"mean", "share", "max/mean"});

  std::vector<std::vector<std::string>> lines = {header};
  auto rank_cells = [&](const std::vector<double>& values, const char* format) {
    std::vector<std::string> cells;
    if (rank_columns) {
      for (const double value : values) cells.push_back(format_cell(format, value));
    } else {
      const auto [min, max] = std::minmax_element(values.begin(), values.end());
      cells = {format_cell(format, *min), format_cell(format, *max)};
    }
    return cells;
  };
  for (const ProfileRow& row : summary.rows) {
    std::vector<std::string> line = {row.name};
    for (std::string& cell : rank_cells(row.ms_per_rank, "%.3f")) line.push_back(cell);
    line.push_back(format_cell("%.3f", row.mean_ms));
    line.push_back(format_cell("%.1f%%", 100 * row.share));
    line.push_back(format_cell("%.3f", row.imbalance));
    lines.push_back(line);
  }
  // Peak memory and its breakdown: model state, then the rest of the peak (activations, the
  // attention index, workspace).
  const bool has_state =
      std::any_of(summary.model_state_bytes.begin(), summary.model_state_bytes.end(),
                  [](const auto& state) { return state[0] + state[1] + state[2] > 0; });
  auto memory_line = [&](const std::string& name, auto bytes_of_rank) {
    std::vector<double> mib;
    for (size_t r = 0; r < num_ranks; ++r) mib.push_back(bytes_of_rank(r) / 1048576.0);
    std::vector<std::string> line = {name};
    for (std::string& cell : rank_cells(mib, "%.1f")) line.push_back(cell);
    lines.push_back(line);
  };
  if (num_ranks > 0) {
    memory_line("peak memory MiB", [&](size_t r) { return summary.peak_memory_bytes[r]; });
  }
  if (num_ranks > 0 && has_state && summary.model_state_bytes.size() == num_ranks) {
    const char* names[] = {"  weights", "  gradients", "  optimizer (fp32 masters, moments)"};
    for (int part = 0; part < 3; ++part) {
      memory_line(names[part], [&](size_t r) { return summary.model_state_bytes[r][part]; });
    }
    memory_line("  activations, index, workspace", [&](size_t r) {
      const auto& state = summary.model_state_bytes[r];
      return summary.peak_memory_bytes[r] - state[0] - state[1] - state[2];
    });
  }

  std::vector<size_t> widths(header.size(), 0);
  for (const auto& line : lines) {
    for (size_t c = 0; c < line.size(); ++c) widths[c] = std::max(widths[c], line[c].size());
  }
  std::string table = "profile: " + std::to_string(summary.steps) + " step(s) on " +
                      std::to_string(num_ranks) + " rank(s)\n";
  for (const auto& line : lines) {
    for (size_t c = 0; c < line.size(); ++c) {
      const std::string padding(widths[c] - line[c].size(), ' ');
      // Names align left, numbers right.
      table += c == 0 ? line[c] + padding : "  " + padding + line[c];
    }
    table += "\n";
  }
  return table;
}

std::string chrome_trace_json(const std::vector<std::string>& events_of_ranks) {
  std::string json = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  bool first = true;
  for (const std::string& events : events_of_ranks) {
    if (events.empty()) continue;
    json += (first ? "" : ",\n") + events;
    first = false;
  }
  return json + "\n]}\n";
}

void write_chrome_trace(const std::string& path, const std::vector<std::string>& events_of_ranks) {
  std::ofstream out(path, std::ios::trunc);
  out << chrome_trace_json(events_of_ranks);
  out.flush();
  if (!out) throw UserError(path + ": cannot write the Chrome trace");
}

}  // namespace sparsering::trainer
