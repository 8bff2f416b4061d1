// Profiler (CPU timing) and its report: nested scopes, the disabled paths, the Chrome trace parsed
// back as JSON, and summary numbers that add up.
#include "trainer/profiling/profiler.h"

#include <gtest/gtest.h>

#include <array>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "trainer/profiling/profile_report.h"

namespace sparsering::trainer {
namespace {

using std::chrono::milliseconds;
const c10::Device kCpu(c10::kCPU);

// A strict reader of the JSON grammar (RFC 8259), enough to check the trace: it rejects what
// Perfetto's parser would reject, such as trailing commas, bare words or malformed numbers.
struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject } kind = Kind::kNull;
  double number = 0;
  std::string text;
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  const Json& at(const std::string& key) const {
    const auto found = fields.find(key);
    if (kind != Kind::kObject || found == fields.end()) throw std::runtime_error("no " + key);
    return found->second;
  }
  bool has(const std::string& key) const { return fields.count(key) > 0; }
};

class JsonReader {
 public:
  static Json parse(const std::string& text) {
    JsonReader reader(text);
    Json value = reader.value();
    reader.skip_space();
    if (reader.pos_ != text.size()) reader.fail("text after the value");
    return value;
  }

 private:
  explicit JsonReader(const std::string& text) : text_(text) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("JSON: " + what + " at byte " + std::to_string(pos_));
  }
  void skip_space() {
    while (pos_ < text_.size() && std::strchr(" \t\n\r", text_[pos_]) != nullptr) ++pos_;
  }
  char peek() {
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    return text_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool digits() {
    const size_t start = pos_;
    while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) ++pos_;
    return pos_ > start;
  }

  Json value() {
    Json json;
    const char c = peek();
    if (c == '{') {
      json.kind = Json::Kind::kObject;
      ++pos_;
      if (peek() == '}') {
        ++pos_;
        return json;
      }
      while (true) {
        const std::string key = string();
        expect(':');
        if (!json.fields.emplace(key, value()).second) fail("duplicate key " + key);
        if (peek() != ',') break;
        ++pos_;
      }
      expect('}');
    } else if (c == '[') {
      json.kind = Json::Kind::kArray;
      ++pos_;
      if (peek() == ']') {
        ++pos_;
        return json;
      }
      while (true) {
        json.items.push_back(value());
        if (peek() != ',') break;
        ++pos_;
      }
      expect(']');
    } else if (c == '"') {
      json.kind = Json::Kind::kString;
      json.text = string();
    } else if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) {
      json.kind = Json::Kind::kNumber;
      const size_t start = pos_;
      if (text_[pos_] == '-') ++pos_;
      if (!digits()) fail("malformed number");
      if (pos_ < text_.size() && text_[pos_] == '.' && (++pos_, !digits())) fail("bad fraction");
      if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
        ++pos_;
        if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
        if (!digits()) fail("bad exponent");
      }
      json.number = std::strtod(text_.substr(start, pos_ - start).c_str(), nullptr);
    } else {
      for (const char* word : {"true", "false", "null"}) {
        if (text_.compare(pos_, std::strlen(word), word) == 0) {
          json.kind = word[0] == 'n' ? Json::Kind::kNull : Json::Kind::kBool;
          pos_ += std::strlen(word);
          return json;
        }
      }
      fail("unexpected character");
    }
    return json;
  }

  std::string string() {
    expect('"');
    std::string out;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      const char c = text_[pos_++];
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) fail("unfinished escape");
      const char escaped = text_[pos_++];
      if (escaped == 'u') {
        if (pos_ + 4 > text_.size()) fail("short \\u escape");
        out += static_cast<char>(std::stoi(text_.substr(pos_, 4), nullptr, 16));
        pos_ += 4;
      } else if (std::strchr("\"\\/bfnrt", escaped) != nullptr) {
        out += escaped;
      } else {
        fail("bad escape");
      }
    }
    if (pos_ >= text_.size()) fail("unterminated string");
    ++pos_;
    return out;
  }

  const std::string& text_;
  size_t pos_ = 0;
};

// One profiled step: data, then two "layers" of attention (the second with exposed ring
// communication inside, and attention nested in attention) and MLP.
void run_step(Profiler* profiler, int step) {
  if (profiler != nullptr) profiler->begin_step(step);
  {
    ProfileScope data(profiler, "data");
    std::this_thread::sleep_for(milliseconds(1));
  }
  for (int layer = 0; layer < 2; ++layer) {
    {
      ProfileScope attention(profiler, "attention");
      std::this_thread::sleep_for(milliseconds(1));
      if (layer == 1) {
        ProfileScope ring(profiler, "ring_communication_exposed");
        std::this_thread::sleep_for(milliseconds(2));
        ProfileScope inner(profiler, "attention");
        std::this_thread::sleep_for(milliseconds(1));
      }
    }
    ProfileScope mlp(profiler, "mlp");
    std::this_thread::sleep_for(milliseconds(1));
  }
  std::this_thread::sleep_for(milliseconds(1));  // outside every phase
  if (profiler != nullptr) profiler->end_step();
}

int phase_index(const Profiler& profiler, const std::string& name) {
  for (size_t i = 0; i < profiler.phases().size(); ++i) {
    if (profiler.phases()[i].name == name) return static_cast<int>(i);
  }
  throw std::runtime_error("no phase " + name);
}

TEST(ProfilerTest, NestedScopesNestInTimeAndCountOnce) {
  Profiler profiler(/*rank=*/0, kCpu, /*first_step=*/1, /*num_steps=*/1);
  run_step(&profiler, 1);
  ASSERT_EQ(profiler.steps().size(), 1u);  // on the CPU a step resolves at its end
  const StepProfile& step = profiler.steps()[0];
  EXPECT_EQ(step.step, 1);
  const int attention = phase_index(profiler, "attention");
  const int ring = phase_index(profiler, "ring_communication_exposed");
  const int mlp = phase_index(profiler, "mlp");
  const int data = phase_index(profiler, "data");

  // Intervals are stored as they close: data, attention, mlp, then inner attention, ring, outer
  // attention of layer 1, then mlp.
  std::vector<std::pair<int, int>> phase_and_depth;
  for (const PhaseInterval& interval : step.intervals) {
    phase_and_depth.emplace_back(interval.phase, interval.depth);
  }
  const std::vector<std::pair<int, int>> expected = {
      {data, 0}, {attention, 0}, {mlp, 0}, {attention, 2}, {ring, 1}, {attention, 0}, {mlp, 0}};
  EXPECT_EQ(phase_and_depth, expected);

  // Each nested interval lies within its parent's.
  auto within = [](const PhaseInterval& inner, const PhaseInterval& outer) {
    return inner.begin_us >= outer.begin_us &&
           inner.begin_us + inner.duration_us <= outer.begin_us + outer.duration_us;
  };
  EXPECT_TRUE(within(step.intervals[3], step.intervals[4]));
  EXPECT_TRUE(within(step.intervals[4], step.intervals[5]));
  for (const PhaseInterval& interval : step.intervals) {
    EXPECT_GE(interval.begin_us, step.begin_us);
    EXPECT_LE(interval.begin_us + interval.duration_us, step.begin_us + 1e3 * step.duration_ms);
  }

  // Attention counts its two top-level occurrences, not the one nested inside itself.
  EXPECT_DOUBLE_EQ(step.phase_ms[attention],
                   (step.intervals[1].duration_us + step.intervals[5].duration_us) / 1e3);
  EXPECT_DOUBLE_EQ(step.phase_ms[ring], step.intervals[4].duration_us / 1e3);
  EXPECT_GE(step.phase_ms[ring], 3.0);  // slept 2 + 1 ms inside it
  EXPECT_GE(step.phase_ms[attention], 5.0);
  EXPECT_EQ(step.phase_ms[phase_index(profiler, "optimizer")], 0.0);

  // Top-level phases and the time outside them make the step.
  EXPECT_GE(step.outside_phases_ms, 1.0);
  EXPECT_NEAR(
      step.phase_ms[data] + step.phase_ms[attention] + step.phase_ms[mlp] + step.outside_phases_ms,
      step.duration_ms, 1e-9);
}

TEST(ProfilerTest, DisabledProfilingRecordsNothing) {
  run_step(nullptr, 1);  // profiling off: scopes take a null profiler

  Profiler profiler(0, kCpu, /*first_step=*/3, /*num_steps=*/2);
  for (int step = 1; step <= 2; ++step) run_step(&profiler, step);  // before the window
  run_step(&profiler, 5);                                           // after it
  EXPECT_FALSE(profiler.begin_phase("attention"));                  // outside a step
  EXPECT_TRUE(profiler.steps().empty());
  const RankProfile rank = profiler.rank_profile();
  EXPECT_EQ(rank.steps, 0);
  EXPECT_EQ(rank.step_ms, 0.0);
  EXPECT_EQ(profiler.chrome_trace_events().find("\"ph\":\"X\""), std::string::npos);

  // Inside the window, scopes with a null profiler leave the step without phases.
  profiler.begin_step(3);
  run_step(nullptr, 3);
  profiler.end_step();
  ASSERT_EQ(profiler.steps().size(), 1u);
  EXPECT_TRUE(profiler.steps()[0].intervals.empty());
  EXPECT_DOUBLE_EQ(profiler.steps()[0].outside_phases_ms, profiler.steps()[0].duration_ms);
}

TEST(ProfilerTest, RejectsUnknownPhasesAndPhasesLeftOpen) {
  Profiler profiler(0, kCpu, 1, 2);
  profiler.begin_step(1);
  EXPECT_THROW(ProfileScope(&profiler, "atention"), std::invalid_argument);
  EXPECT_TRUE(profiler.begin_phase("mlp"));
  EXPECT_THROW(profiler.end_step(), std::logic_error);
  // The failed step is dropped and the next one records normally.
  profiler.begin_step(2);
  { ProfileScope mlp(&profiler, "mlp"); }
  profiler.end_step();
  ASSERT_EQ(profiler.steps().size(), 1u);
  EXPECT_EQ(profiler.steps()[0].step, 2);
  EXPECT_THROW(Profiler(0, kCpu, 1, 1, {{"a", "x"}, {"a", "y"}}), std::invalid_argument);
}

TEST(ProfilerTest, ChromeTraceIsWellFormedAndHoldsEveryRankAndPhase) {
  Profiler rank0(0, kCpu, 1, 2), rank1(1, kCpu, 1, 2);
  for (int step = 1; step <= 2; ++step) {
    run_step(&rank0, step);
    run_step(&rank1, step);
  }
  const std::string text =
      chrome_trace_json({rank0.chrome_trace_events(), rank1.chrome_trace_events()});
  const Json trace = JsonReader::parse(text);
  const Json& events = trace.at("traceEvents");
  ASSERT_EQ(events.kind, Json::Kind::kArray);

  std::map<std::pair<int, int>, std::string> thread_names;  // (pid, tid) -> group
  std::map<int, std::multiset<std::string>> phases_of_rank;
  std::vector<const Json*> complete;
  for (const Json& event : events.items) {
    const std::string ph = event.at("ph").text;
    const int pid = static_cast<int>(event.at("pid").number);
    const int tid = static_cast<int>(event.at("tid").number);
    if (ph == "M" && event.at("name").text == "thread_name") {
      thread_names[{pid, tid}] = event.at("args").at("name").text;
    } else if (ph == "X") {
      EXPECT_EQ(event.at("ts").kind, Json::Kind::kNumber);
      EXPECT_GE(event.at("dur").number, 0.0);
      // Microseconds since the Unix epoch: after 2020, before 2100.
      EXPECT_GT(event.at("ts").number, 1.5e15);
      EXPECT_LT(event.at("ts").number, 4.2e15);
      phases_of_rank[pid].insert(event.at("name").text);
      complete.push_back(&event);
    }
  }
  for (int rank = 0; rank < 2; ++rank) {
    const auto& names = phases_of_rank[rank];
    EXPECT_EQ(names.count("step 1"), 1u);
    EXPECT_EQ(names.count("step 2"), 1u);
    EXPECT_EQ(names.count("data"), 2u);
    EXPECT_EQ(names.count("attention"), 6u);  // 3 per step, the nested one included
    EXPECT_EQ(names.count("ring_communication_exposed"), 2u);
    EXPECT_EQ(names.count("mlp"), 4u);
  }
  // tid = phase group, named by thread_name metadata.
  for (const Json* event : complete) {
    const int pid = static_cast<int>(event->at("pid").number);
    const int tid = static_cast<int>(event->at("tid").number);
    const std::string& name = event->at("name").text;
    const std::string group = thread_names.at({pid, tid});
    std::string expected_group = "steps";
    if (name == "attention" || name == "mlp") expected_group = "compute";
    if (name == "ring_communication_exposed") expected_group = "communication";
    if (name == "data") expected_group = "data";
    EXPECT_EQ(group, expected_group) << name;
    EXPECT_EQ(event->at("args").at("step").kind, Json::Kind::kNumber);
  }
  EXPECT_THROW(JsonReader::parse(text.substr(0, text.size() - 3)), std::runtime_error);
}

TEST(ProfileSummaryTest, NumbersAddUpAcrossRanks) {
  const std::vector<PhaseDefinition> phases = {{"attention", "compute"},
                                               {"ring_communication_exposed", "communication"},
                                               {"mlp", "compute"}};
  RankProfile rank0, rank1;
  rank0.steps = rank1.steps = 4;
  // attention and mlp are top level; ring communication happens inside attention.
  rank0.phase_ms = {30, 6, 10};
  rank0.outside_phases_ms = 0;
  rank0.step_ms = 40;
  rank0.peak_memory_bytes = 3 << 20;
  rank1.phase_ms = {10, 2, 20};
  rank1.outside_phases_ms = 10;
  rank1.step_ms = 40;
  rank1.peak_memory_bytes = 1 << 20;
  const ProfileSummary summary = summarize_profiles(phases, {rank0, rank1});
  ASSERT_EQ(summary.rows.size(), 5u);
  EXPECT_EQ(summary.steps, 4);
  const ProfileRow& attention = summary.rows[0];
  EXPECT_EQ(attention.ms_per_rank, (std::vector<double>{30, 10}));
  EXPECT_DOUBLE_EQ(attention.mean_ms, 20);
  EXPECT_DOUBLE_EQ(attention.share, 0.5);
  EXPECT_DOUBLE_EQ(attention.imbalance, 1.5);
  EXPECT_DOUBLE_EQ(summary.rows[1].imbalance, 1.5);
  EXPECT_DOUBLE_EQ(summary.rows[2].mean_ms, 15);
  EXPECT_DOUBLE_EQ(summary.rows[2].imbalance, 20.0 / 15);
  EXPECT_EQ(summary.rows[3].name, "outside phases");
  EXPECT_DOUBLE_EQ(summary.rows[3].imbalance, 2.0);
  EXPECT_EQ(summary.rows[4].name, "step");
  EXPECT_DOUBLE_EQ(summary.rows[4].share, 1.0);
  EXPECT_DOUBLE_EQ(summary.rows[4].imbalance, 1.0);
  // Top-level phases and the rest make the whole step.
  EXPECT_DOUBLE_EQ(summary.rows[0].share + summary.rows[2].share + summary.rows[3].share, 1.0);
  EXPECT_EQ(summary.peak_memory_bytes, (std::vector<int64_t>{3 << 20, 1 << 20}));

  const std::string table = format_profile_summary(summary);
  EXPECT_NE(table.find("rank 1"), std::string::npos) << table;
  EXPECT_NE(table.find("50.0%"), std::string::npos) << table;
  EXPECT_NE(table.find("1.500"), std::string::npos) << table;
  EXPECT_NE(table.find("3.0"), std::string::npos) << table;  // rank 0's peak in MiB

  EXPECT_THROW(summarize_profiles({{"attention", "compute"}}, {rank0}), std::invalid_argument);
  EXPECT_EQ(table.find("weights"), std::string::npos) << "no breakdown without model state";
}

TEST(ProfileSummaryTest, PeakMemoryBreakdownLeavesTheRestToActivations) {
  RankProfile rank;
  rank.steps = 1;
  rank.step_ms = 1;
  rank.phase_ms = {1};
  rank.peak_memory_bytes = 10 << 20;
  rank.weight_bytes = 1 << 20;
  rank.gradient_bytes = 2 << 20;
  rank.optimizer_bytes = 3 << 20;
  // Through the gathered row form, as the trainer sends it.
  const auto row = rank.to_row();
  ASSERT_EQ(row.size(), RankProfile::row_size(1));
  const RankProfile gathered = RankProfile::from_row(row.data(), 1);
  const ProfileSummary summary = summarize_profiles({{"attention", "compute"}}, {gathered});
  ASSERT_EQ(summary.model_state_bytes.size(), 1u);
  EXPECT_EQ(summary.model_state_bytes[0], (std::array<int64_t, 3>{1 << 20, 2 << 20, 3 << 20}));
  const std::string table = format_profile_summary(summary);
  // Each memory line: its name, then the rank's MiB (one rank: the only number on the line).
  auto value_on_line = [&](const std::string& name) {
    const size_t at = table.find(name);
    if (at == std::string::npos) return -1.0;
    const std::string line = table.substr(at, table.find('\n', at) - at);
    return std::stod(line.substr(line.find_last_of(' ') + 1));
  };
  EXPECT_DOUBLE_EQ(value_on_line("peak memory MiB"), 10.0) << table;
  EXPECT_DOUBLE_EQ(value_on_line("weights"), 1.0) << table;
  EXPECT_DOUBLE_EQ(value_on_line("gradients"), 2.0) << table;
  EXPECT_DOUBLE_EQ(value_on_line("optimizer (fp32 masters, moments)"), 3.0) << table;
  EXPECT_DOUBLE_EQ(value_on_line("activations, index, workspace"), 4.0) << table;
}

TEST(ProfileSummaryTest, MeasuredProfilesGatherAndAddUp) {
  Profiler profiler(0, kCpu, 1, 3);
  for (int step = 1; step <= 3; ++step) run_step(&profiler, step);
  const RankProfile measured = profiler.rank_profile();
  EXPECT_EQ(measured.steps, 3);
  EXPECT_GT(measured.peak_memory_bytes, 1 << 20);  // this process holds far more than 1 MiB

  // Through the flat row a collective would carry, as rank 1 of two.
  const std::vector<double> row = measured.to_row();
  ASSERT_EQ(row.size(), RankProfile::row_size(profiler.phases().size()));
  const RankProfile gathered = RankProfile::from_row(row.data(), profiler.phases().size());
  EXPECT_EQ(gathered.to_row(), row);

  const ProfileSummary summary = summarize_profiles(profiler.phases(), {measured, gathered});
  double top_level_share = summary.rows[profiler.phases().size()].share;  // outside phases
  for (const char* name : {"data", "attention", "mlp"}) {
    top_level_share += summary.rows[phase_index(profiler, name)].share;
  }
  EXPECT_NEAR(top_level_share, 1.0, 1e-9);
  double mean_step_ms = 0;
  for (const StepProfile& step : profiler.steps()) mean_step_ms += step.duration_ms / 3;
  EXPECT_NEAR(summary.rows.back().mean_ms, mean_step_ms, 1e-9);
  EXPECT_GE(mean_step_ms, 9.0);  // the sleeps of one step add up to 9 ms
}

}  // namespace
}  // namespace sparsering::trainer
