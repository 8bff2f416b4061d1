// Plain C++ view of an expanded sweep (configs/sweep.proto is the documented schema). Like
// config.h, this keeps the protobuf-generated code inside the config library.
#pragma once

#include <string>
#include <vector>

namespace sparsering::config {

// One value of one axis, as a run takes it.
struct AxisValue {
  std::string field;  // e.g. "parallel.layout"
  std::string value;  // e.g. "ZIGZAG"
};

struct SweepRun {
  std::string name;                    // <sweep name>_<label>-<value>_..., filesystem-safe
  std::vector<AxisValue> axis_values;  // in axis order
  std::vector<std::string> overrides;  // the sweep's fixed overrides, then the axis values
  int world_size;                      // dp x cp of the run's resolved config
};

struct Sweep {
  std::string name;
  std::string base_config;  // path of the base experiment, as the launcher opens it
  std::string mode;         // "GRID" or "LIST"
  std::vector<std::string> fixed_overrides;  // every run's, before its axis values
  std::vector<std::string> fields;           // the swept fields, in axis order
  std::vector<SweepRun> runs;                // GRID: first axis varies slowest
};

// Parses the text-format sweep `text` (named `source` in errors) whose relative base_config is
// resolved against `directory`, expands its runs, and loads and validates every run's config,
// so a bad axis value fails before anything runs. Throws UserError naming the input (and the
// run, where one is at fault) and the fix.
Sweep load_sweep(const std::string& text, const std::string& source, const std::string& directory);

// Reads `path` (throws UserError if it cannot) and calls load_sweep with its directory.
Sweep load_sweep_file(const std::string& path);

}  // namespace sparsering::config
