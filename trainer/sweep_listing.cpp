#include "trainer/sweep_listing.h"

#include <algorithm>
#include <sstream>

namespace sparsering::trainer {

std::string sweep_launch_lines(const config::Sweep& sweep) {
  std::ostringstream out;
  for (const config::SweepRun& run : sweep.runs) {
    out << run.name << '\t' << run.world_size << '\t' << sweep.base_config;
    for (const std::string& override_text : run.overrides) out << '\t' << override_text;
    out << '\n';
  }
  return out.str();
}

std::string sweep_table(const config::Sweep& sweep) {
  std::vector<std::vector<std::string>> rows = {{"run", "ranks"}};
  rows[0].insert(rows[0].end(), sweep.fields.begin(), sweep.fields.end());
  for (const config::SweepRun& run : sweep.runs) {
    rows.push_back({run.name, std::to_string(run.world_size)});
    for (const config::AxisValue& value : run.axis_values) rows.back().push_back(value.value);
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }

  std::ostringstream out;
  out << "sweep " << sweep.name << ": " << sweep.runs.size() << " runs (" << sweep.mode << ") of "
      << sweep.base_config;
  if (!sweep.fixed_overrides.empty()) out << ", all with";
  for (const std::string& override_text : sweep.fixed_overrides) out << ' ' << override_text;
  out << "\n\n";
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      // The ranks column is a number: right-aligned.
      const std::string pad(widths[c] - row[c].size(), ' ');
      line += (c == 0 ? "" : "  ") + (c == 1 ? pad + row[c] : row[c] + pad);
    }
    out << line.substr(0, line.find_last_not_of(' ') + 1) << '\n';
  }
  out << "\nrun them with launch/sweep.sh; runs/" << sweep.name << "/<run>/ holds each run\n";
  return out.str();
}

}  // namespace sparsering::trainer
