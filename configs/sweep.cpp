// Loads a sweep: text format -> checks -> expansion into runs -> every run's config validated.
#include "configs/sweep.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "configs/config.h"
#include "configs/first_error_collector.h"
#include "configs/sweep.pb.h"
#include "configs/user_error.h"

namespace sparsering::config {
namespace {

namespace pb = google::protobuf;
namespace fs = std::filesystem;

bool safe_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-' || c == '+';
}

// Run names become directory names and shell words: anything else turns into '_'.
std::string filesystem_safe(std::string text) {
  for (char& c : text) {
    if (!safe_char(c)) c = '_';
  }
  return text;
}

// The launcher reads runs as tab-separated lines, so no value may hold a tab or a newline.
bool one_field(const std::string& text) {
  return text.find_first_of("\t\n\r") == std::string::npos;
}

void check_sweep(const proto::Sweep& sweep, const std::string& source) {
  const std::string& name = sweep.name();
  if (name.empty() || name == "." || name == ".." || filesystem_safe(name) != name ||
      name.find('+') != std::string::npos) {
    throw UserError(source + ": name = \"" + name +
                    "\": give the sweep a name of letters, digits, '.', '_' and '-' (it names "
                    "the directory runs/<name>)");
  }
  if (sweep.base_config().empty()) {
    throw UserError(source +
                    ": base_config is missing; give the experiment file the runs start from, "
                    "relative to the sweep file");
  }
  for (const std::string& override_text : sweep.set()) {
    if (!one_field(override_text)) {
      throw UserError(source + ": set: \"" + override_text +
                      "\" holds a tab or newline; remove it");
    }
  }
  std::map<std::string, int> seen;
  for (int i = 0; i < sweep.axis_size(); ++i) {
    const proto::Axis& axis = sweep.axis(i);
    const std::string where = source + ": axis " + std::to_string(i + 1);
    if (axis.field().empty()) {
      throw UserError(where + ": field is missing; give a field path as for --set (a.b.c)");
    }
    if (!seen.emplace(axis.field(), i).second) {
      throw UserError(where + ": field " + axis.field() +
                      " is swept by two axes; merge their values into one axis");
    }
    if (axis.values_size() == 0) {
      throw UserError(where + " (" + axis.field() + ") has no values; list at least one");
    }
    for (const std::string& value : axis.values()) {
      if (!one_field(value)) {
        throw UserError(where + " (" + axis.field() + "): value \"" + value +
                        "\" holds a tab or newline; remove it");
      }
    }
  }
  if (sweep.mode() == proto::Sweep::LIST) {
    for (const proto::Axis& axis : sweep.axis()) {
      const proto::Axis& first = sweep.axis(0);
      if (axis.values_size() != first.values_size()) {
        throw UserError(source + ": mode LIST pairs the i-th values of every axis, but " +
                        first.field() + " has " + std::to_string(first.values_size()) +
                        " values and " + axis.field() + " has " +
                        std::to_string(axis.values_size()) +
                        "; give every axis as many values, or use mode GRID");
      }
    }
  }
}

std::string label_of(const proto::Axis& axis) {
  if (axis.has_label()) return filesystem_safe(axis.label());
  const auto dot = axis.field().rfind('.');
  return filesystem_safe(dot == std::string::npos ? axis.field() : axis.field().substr(dot + 1));
}

// The value index of every axis for each run: GRID counts like an odometer whose first axis is
// the most significant digit; LIST takes index i on every axis.
std::vector<std::vector<int>> combinations(const proto::Sweep& sweep) {
  const int axes = sweep.axis_size();
  std::vector<std::vector<int>> out;
  if (sweep.mode() == proto::Sweep::LIST) {
    const int runs = axes == 0 ? 1 : sweep.axis(0).values_size();
    for (int i = 0; i < runs; ++i) out.emplace_back(axes, i);
    return out;
  }
  std::vector<int> index(axes, 0);
  while (true) {
    out.push_back(index);
    int axis = axes - 1;
    while (axis >= 0 && ++index[axis] == sweep.axis(axis).values_size()) index[axis--] = 0;
    if (axis < 0) return out;
  }
}

std::string read_file(const std::string& path, const std::string& error) {
  std::ifstream file(path);
  if (!file) throw UserError(error);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

}  // namespace

Sweep load_sweep(const std::string& text, const std::string& source, const std::string& directory) {
  proto::Sweep sweep;
  FirstErrorCollector errors;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &sweep)) {
    throw UserError(source + ": " + errors.error() + " (the schema is configs/sweep.proto)");
  }
  check_sweep(sweep, source);

  Sweep out;
  out.name = sweep.name();
  const fs::path base = sweep.base_config();
  out.base_config = (base.is_absolute() ? base : fs::path(directory) / base).lexically_normal();
  const std::string base_text = read_file(
      out.base_config, source + ": base_config \"" + sweep.base_config() + "\": cannot open " +
                           out.base_config + "; give a path relative to the sweep file");
  out.mode = proto::Sweep::Mode_Name(sweep.mode());
  out.fixed_overrides.assign(sweep.set().begin(), sweep.set().end());
  for (const proto::Axis& axis : sweep.axis()) out.fields.push_back(axis.field());

  std::map<std::string, std::string> names;  // run name -> its axis values, to find collisions
  for (const std::vector<int>& index : combinations(sweep)) {
    SweepRun run;
    run.name = out.name;
    run.overrides = out.fixed_overrides;
    std::string values;
    for (int a = 0; a < sweep.axis_size(); ++a) {
      const proto::Axis& axis = sweep.axis(a);
      const std::string& value = axis.values(index[a]);
      run.axis_values.push_back({axis.field(), value});
      run.overrides.push_back(axis.field() + "=" + value);
      run.name += "_" + label_of(axis) + "-" + filesystem_safe(value);
      values += (values.empty() ? "" : ", ") + axis.field() + "=" + value;
    }
    const auto [previous, inserted] = names.emplace(run.name, values);
    if (!inserted) {
      throw UserError(source + ": runs {" + previous->second + "} and {" + values +
                      "} are both named " + run.name + "; give the axes distinct labels or values");
    }
    try {
      const Experiment experiment = load_experiment(base_text, out.base_config, run.overrides);
      run.world_size =
          experiment.parallel.data_parallel_size * experiment.parallel.context_parallel_size;
    } catch (const UserError& error) {
      throw UserError(source + ": run " + run.name + ": " + error.what());
    }
    out.runs.push_back(std::move(run));
  }
  return out;
}

Sweep load_sweep_file(const std::string& path) {
  const std::string text =
      read_file(path, path + ": cannot open sweep file; check the path (configs/sweeps/*.pbtxt)");
  return load_sweep(text, path, fs::path(path).parent_path().string());
}

}  // namespace sparsering::config
