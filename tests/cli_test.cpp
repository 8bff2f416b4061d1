#include "trainer/cli.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "configs/user_error.h"

namespace sparsering {
namespace {

TEST(CommandLine, ParsesTrainOptions) {
  const auto line = trainer::parse_command_line(
      {"train", "--set", "train.steps=3", "--run-dir", "/tmp/x", "--set", "name=y"});
  EXPECT_EQ(line.command, "train");
  EXPECT_EQ(line.overrides, (std::vector<std::string>{"train.steps=3", "name=y"}));
  EXPECT_EQ(line.run_dir, "/tmp/x");
  EXPECT_TRUE(line.config_path.empty());
  EXPECT_TRUE(trainer::parse_command_line({"train", "--help"}).help);
  EXPECT_TRUE(trainer::parse_command_line({"--help"}).help);
}

TEST(CommandLine, ParsesEvalOptions) {
  const auto line = trainer::parse_command_line({"eval", "--checkpoint", "auto", "--run-dir", "r",
                                                 "--attention", "both", "--eval-sequences", "3"});
  EXPECT_EQ(line.checkpoint, "auto");
  EXPECT_EQ(line.run_dir, "r");
  EXPECT_EQ(line.attention, "both");
  EXPECT_EQ(line.eval_sequences, 3);
  EXPECT_TRUE(trainer::parse_command_line({"eval", "--help"}).help);
  const std::vector<std::vector<std::string>> bad = {
      {"eval"},
      {"eval", "--checkpoint", "auto", "--attention", "dense_and_sparse"},
      {"eval", "--checkpoint", "auto", "--eval-sequences", "0"},
      {"eval", "--checkpoint", "auto", "--eval-sequences", "2x"},
      {"train", "--checkpoint", "auto"}};
  for (const auto& arguments : bad) {
    EXPECT_THROW(trainer::parse_command_line(arguments), UserError) << arguments.back();
  }
}

TEST(CommandLine, ParsesHfOptions) {
  const auto import = trainer::parse_command_line({"import-hf", "--hf-dir", "h", "--run-dir", "r"});
  EXPECT_EQ(import.hf_dir, "h");
  EXPECT_EQ(import.run_dir, "r");
  const auto export_line =
      trainer::parse_command_line({"export-hf", "--checkpoint", "auto", "--out", "o"});
  EXPECT_EQ(export_line.checkpoint, "auto");
  EXPECT_EQ(export_line.out_dir, "o");
  EXPECT_EQ(export_line.max_shard_bytes, 5'000'000'000);  // transformers' default
  for (const auto& [text, bytes] : std::vector<std::pair<std::string, int64_t>>{
           {"100kB", 100'000}, {"2GB", 2'000'000'000}, {"300MB", 300'000'000}, {"4096", 4096}}) {
    EXPECT_EQ(trainer::parse_command_line(
                  {"export-hf", "--checkpoint", "auto", "--out", "o", "--max-shard-size", text})
                  .max_shard_bytes,
              bytes)
        << text;
  }
  EXPECT_EQ(
      trainer::parse_command_line({"eval", "--checkpoint", "auto", "--logits-out", "l"}).logits_out,
      "l");
  const std::vector<std::vector<std::string>> bad = {
      {"import-hf"},
      {"export-hf", "--checkpoint", "auto"},
      {"export-hf", "--out", "o"},
      {"import-hf", "--hf-dir", "h", "--out", "o"},
      {"train", "--hf-dir", "h"},
      {"export-hf", "--checkpoint", "auto", "--out", "o", "--max-shard-size", "5XB"},
      {"export-hf", "--checkpoint", "auto", "--out", "o", "--max-shard-size", "0"},
      {"import-hf", "--hf-dir", "h", "--max-shard-size", "1GB"}};
  for (const auto& arguments : bad) {
    EXPECT_THROW(trainer::parse_command_line(arguments), UserError) << arguments.back();
  }
  for (const char* command : {"import-hf", "export-hf"}) {
    EXPECT_NE(trainer::usage(command).find(std::string("sparsering ") + command),
              std::string::npos);
  }
}

TEST(CommandLine, RejectsBadInputWithOneLine) {
  const std::vector<std::vector<std::string>> bad = {{},
                                                     {"trian"},
                                                     {"train", "--bogus"},
                                                     {"train", "--set"},
                                                     {"train", "--config", "/nonexistent.pbtxt"},
                                                     {"world-size", "--run-dir", "x"}};
  for (const auto& arguments : bad) {
    EXPECT_THROW(trainer::parse_command_line(arguments), UserError);
  }
}

TEST(CommandLine, EveryOptionInTheHelpIsAcceptedAndNoOther) {
  // Help and parser come from one table: each flag a command's help lists parses for it (its
  // value may still be refused, never the flag), and a flag of another command does not.
  for (const char* command :
       {"train", "eval", "world-size", "sweep", "import-hf", "export-hf", "plan"}) {
    const std::string text = trainer::usage(command);
    int listed = 0;
    for (size_t at = text.find("\n  --"); at != std::string::npos;
         at = text.find("\n  --", at + 1)) {
      const std::string flag = text.substr(at + 3, text.find_first_of(" \n", at + 3) - at - 3);
      if (flag == "--help") continue;
      ++listed;
      // "--flag VALUE   help" or "--switch   help".
      const size_t after = at + 3 + flag.size();
      const bool has_value = text[after] == ' ' && text[after + 1] != ' ';
      try {
        trainer::parse_command_line(has_value ? std::vector<std::string>{command, flag, "x"}
                                              : std::vector<std::string>{command, flag});
      } catch (const UserError& error) {
        EXPECT_EQ(std::string(error.what()).find("unknown option"), std::string::npos)
            << command << " " << flag << ": " << error.what();
      }
    }
    EXPECT_GT(listed, 0) << command;
    EXPECT_EQ(text.find("--hf-dir") == std::string::npos, std::string(command) != "import-hf");
  }
}

TEST(CommandLine, EveryCommandHasUsage) {
  for (const char* command : {"train", "eval", "world-size", ""}) {
    EXPECT_NE(trainer::usage(command).find("usage:"), std::string::npos) << command;
  }
}

}  // namespace
}  // namespace sparsering
