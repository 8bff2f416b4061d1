// Sweeps: GRID and LIST expansion, run names and overrides, the launch lines, and bad sweeps
// refused before anything runs, with the run at fault named.
#include "configs/sweep.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "configs/user_error.h"
#include "trainer/cli.h"
#include "trainer/sweep_listing.h"

namespace sparsering {
namespace {

const char* kConfigs = SPARSERING_SOURCE_DIR "/configs";

config::Sweep load(const std::string& text) {
  return config::load_sweep(text, "test_sweep.pbtxt", kConfigs);
}

std::string error_of(const std::string& text) {
  try {
    load(text);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> names_of(const config::Sweep& sweep) {
  std::vector<std::string> names;
  for (const auto& run : sweep.runs) names.push_back(run.name);
  return names;
}

TEST(Sweep, GridIsTheCartesianProductFirstAxisSlowest) {
  const auto sweep = load(R"(
    name: "s" base_config: "tiny.pbtxt" set: "train.steps=3"
    axis { field: "parallel.layout" values: "ZIGZAG" values: "BALANCED" }
    axis { field: "train.sequence_length" values: "256" values: "512" values: "1024" }
  )");
  EXPECT_EQ(sweep.name, "s");
  EXPECT_EQ(sweep.mode, "GRID");
  EXPECT_EQ(sweep.base_config, std::string(kConfigs) + "/tiny.pbtxt");
  EXPECT_EQ(sweep.fields, (std::vector<std::string>{"parallel.layout", "train.sequence_length"}));
  EXPECT_EQ(names_of(sweep), (std::vector<std::string>{
                                 "s_layout-ZIGZAG_sequence_length-256",
                                 "s_layout-ZIGZAG_sequence_length-512",
                                 "s_layout-ZIGZAG_sequence_length-1024",
                                 "s_layout-BALANCED_sequence_length-256",
                                 "s_layout-BALANCED_sequence_length-512",
                                 "s_layout-BALANCED_sequence_length-1024",
                             }));
  const auto& run = sweep.runs[4];
  EXPECT_EQ(run.overrides, (std::vector<std::string>{"train.steps=3", "parallel.layout=BALANCED",
                                                     "train.sequence_length=512"}));
  EXPECT_EQ(run.axis_values[1].field, "train.sequence_length");
  EXPECT_EQ(run.axis_values[1].value, "512");
  EXPECT_EQ(run.world_size, 2);
}

TEST(Sweep, ListPairsTheIthValuesAndWorldSizeFollowsTheRun) {
  const auto sweep = load(R"(
    name: "l" base_config: "tiny.pbtxt" mode: LIST
    axis { field: "parallel.data_parallel_size" values: "2" values: "1" label: "dp" }
    axis { field: "parallel.context_parallel_size" values: "2" values: "1" label: "cp" }
  )");
  EXPECT_EQ(names_of(sweep), (std::vector<std::string>{"l_dp-2_cp-2", "l_dp-1_cp-1"}));
  EXPECT_EQ(sweep.runs[0].world_size, 4);
  EXPECT_EQ(sweep.runs[1].world_size, 1);
}

TEST(Sweep, NoAxisIsOneRunAndNamesAreFilesystemSafe) {
  EXPECT_EQ(names_of(load(R"(name: "one" base_config: "tiny.pbtxt")")),
            (std::vector<std::string>{"one"}));
  const auto sweep = load(R"(
    name: "n" base_config: "tiny.pbtxt" set: "nm_sparsity.enabled=true"
    axis { field: "nm_sparsity.layers" values: "q_proj,k_proj" values: "up_proj" }
    axis { field: "optimizer.lr" values: "1e-3" }
  )");
  EXPECT_EQ(names_of(sweep), (std::vector<std::string>{"n_layers-q_proj_k_proj_lr-1e-3",
                                                       "n_layers-up_proj_lr-1e-3"}));
}

TEST(Sweep, LaunchLinesAreTabSeparated) {
  const auto sweep = load(R"(
    name: "s" base_config: "tiny.pbtxt" set: "train.steps=3"
    axis { field: "attention.kind" values: "DENSE" }
  )");
  EXPECT_EQ(trainer::sweep_launch_lines(sweep),
            "s_kind-DENSE\t2\t" + sweep.base_config + "\ttrain.steps=3\tattention.kind=DENSE\n");
  EXPECT_NE(trainer::sweep_table(sweep).find("s_kind-DENSE      2  DENSE"), std::string::npos)
      << trainer::sweep_table(sweep);
}

TEST(Sweep, ShippedSweepsLoad) {
  for (const auto& entry :
       std::filesystem::directory_iterator(SPARSERING_SOURCE_DIR "/configs/sweeps")) {
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW(config::load_sweep_file(entry.path().string()));
  }
  const auto example =
      config::load_sweep_file(SPARSERING_SOURCE_DIR "/configs/sweeps/tiny_layouts.pbtxt");
  EXPECT_EQ(example.runs.size(), 6u);
}

TEST(Sweep, BadAxisPathNamesTheRun) {
  const auto error = error_of(R"(
    name: "s" base_config: "tiny.pbtxt"
    axis { field: "optimizer.lrr" values: "0.1" }
  )");
  EXPECT_NE(error.find("test_sweep.pbtxt: run s_lrr-0.1:"), std::string::npos) << error;
  EXPECT_NE(error.find("has no field 'lrr'"), std::string::npos) << error;
}

TEST(Sweep, BadAxisValueNamesTheRun) {
  auto error = error_of(R"(
    name: "s" base_config: "tiny.pbtxt"
    axis { field: "parallel.layout" values: "BALANCED" values: "STRIPED" }
  )");
  EXPECT_NE(error.find("run s_layout-STRIPED:"), std::string::npos) << error;
  EXPECT_NE(error.find("parallel.layout=STRIPED"), std::string::npos) << error;
  // A value of the right type that breaks a validation rule.
  error = error_of(R"(
    name: "s" base_config: "tiny.pbtxt"
    axis { field: "train.steps" values: "10" values: "-1" }
  )");
  EXPECT_NE(error.find("run s_steps--1:"), std::string::npos) << error;
  EXPECT_NE(error.find("train.steps = -1"), std::string::npos) << error;
}

TEST(Sweep, BadSweepsAreRefusedWithTheFix) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"(name: "s" base_config: "tiny.pbtxt" mode: LIST
          axis { field: "parallel.layout" values: "ZIGZAG" values: "BALANCED" }
          axis { field: "attention.kind" values: "DENSE" })",
       "parallel.layout has 2 values and attention.kind has 1"},
      {R"(base_config: "tiny.pbtxt")", "give the sweep a name"},
      {R"(name: "a/b" base_config: "tiny.pbtxt")", "give the sweep a name"},
      {R"(name: "s")", "base_config is missing"},
      {R"(name: "s" base_config: "none.pbtxt")", "cannot open"},
      {R"(name: "s" base_config: "tiny.pbtxt" axis { field: "train.steps" })", "has no values"},
      {R"(name: "s" base_config: "tiny.pbtxt" axis { values: "1" })", "field is missing"},
      {R"(name: "s" base_config: "tiny.pbtxt" axis { field: "train.steps" values: "1" }
          axis { field: "train.steps" values: "2" })",
       "swept by two axes"},
      {R"(name: "s" base_config: "tiny.pbtxt"
          axis { field: "nm_sparsity.layers" values: "q_proj,k_proj" values: "q_proj/k_proj" })",
       "are both named s_layers-q_proj_k_proj"},
      {R"(name: "s" axes { })", "test_sweep.pbtxt: line 1:"},
  };
  for (const auto& [text, expected] : cases) {
    const auto error = error_of(text);
    EXPECT_NE(error.find(expected), std::string::npos) << text << "\n-> " << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
}

TEST(Sweep, CommandLine) {
  const auto line = trainer::parse_command_line(
      {"sweep", "--sweep", SPARSERING_SOURCE_DIR "/configs/sweeps/tiny_layouts.pbtxt",
       "--print-runs"});
  EXPECT_EQ(line.command, "sweep");
  EXPECT_TRUE(line.print_runs);
  EXPECT_NE(trainer::usage("sweep").find("--print-runs"), std::string::npos);
  for (const std::vector<std::string>& bad : {std::vector<std::string>{"sweep"},
                                              {"sweep", "--sweep", "/nonexistent.pbtxt"},
                                              {"sweep", "--set", "a=b"},
                                              {"train", "--print-runs"}}) {
    EXPECT_THROW(trainer::parse_command_line(bad), UserError);
  }
}

}  // namespace
}  // namespace sparsering
