#include "trainer/profiling/profiler.h"

#include <sys/resource.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <utility>

#include "trainer/profiling/device_timeline.h"
#include "trainer/profiling/profile_report.h"

namespace sparsering::trainer {
namespace {

using SteadyClock = std::chrono::steady_clock;

// A point on this rank's timeline: a host time, and on CUDA an event on the current stream whose
// device time is known once the device has passed it.
struct Mark {
  SteadyClock::time_point host;
  device_timeline::Event event = nullptr;
};

struct RecordedInterval {
  int phase = 0, depth = 0;
  bool counted = true;  // false inside an occurrence of the same phase
  int begin_mark = 0, end_mark = 0;
};

struct RecordedStep {
  int step = 0;
  std::vector<Mark> marks;  // the first begins the step, the last ends it
  std::vector<RecordedInterval> intervals;
};

struct OpenPhase {
  int phase = 0;
  int begin_mark = 0;
  bool counted = true;
};

}  // namespace

std::vector<PhaseDefinition> training_step_phases() {
  return {{"data", "data"},
          {"attention", "compute"},
          {"ring_communication_exposed", "communication"},
          {"head_all_to_all", "communication"},
          {"mlp", "compute"},
          {"loss", "compute"},
          {"backward", "compute"},
          {"gradient_sync", "communication"},
          {"optimizer", "optimizer"}};
}

size_t RankProfile::row_size(size_t num_phases) { return 7 + num_phases; }

std::vector<double> RankProfile::to_row() const {
  std::vector<double> row = {static_cast<double>(steps),
                             step_ms,
                             outside_phases_ms,
                             static_cast<double>(peak_memory_bytes),
                             static_cast<double>(weight_bytes),
                             static_cast<double>(gradient_bytes),
                             static_cast<double>(optimizer_bytes)};
  row.insert(row.end(), phase_ms.begin(), phase_ms.end());
  return row;
}

RankProfile RankProfile::from_row(const double* row, size_t num_phases) {
  RankProfile profile;
  profile.steps = static_cast<int>(row[0]);
  profile.step_ms = row[1];
  profile.outside_phases_ms = row[2];
  profile.peak_memory_bytes = static_cast<int64_t>(row[3]);
  profile.weight_bytes = static_cast<int64_t>(row[4]);
  profile.gradient_bytes = static_cast<int64_t>(row[5]);
  profile.optimizer_bytes = static_cast<int64_t>(row[6]);
  profile.phase_ms.assign(row + 7, row + 7 + num_phases);
  return profile;
}

int64_t peak_memory_bytes(const c10::Device& device) {
  if (device.is_cuda()) return device_timeline::peak_allocated_bytes(device);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

struct Profiler::State {
  int rank = 0;
  c10::Device device;
  bool on_cuda = false;
  int first_step = 0, num_steps = 0;
  std::vector<PhaseDefinition> phases;

  SteadyClock::time_point origin_host;
  double origin_unix_us = 0;  // the Unix time of the origin, for traces of several ranks

  bool step_open = false;
  RecordedStep current;
  std::vector<OpenPhase> open;
  std::deque<RecordedStep> unresolved;  // recorded, the device not known to be past them yet
  std::vector<StepProfile> resolved;
  std::string deferred_error;  // from end_phase, which must not throw

  device_timeline::Event origin_event = nullptr;
  std::vector<device_timeline::Event> free_events;  // creating events costs more than recording

  State(int rank, const c10::Device& device, int first_step, int num_steps,
        std::vector<PhaseDefinition> phases)
      : rank(rank),
        device(device),
        on_cuda(device.is_cuda()),
        first_step(first_step),
        num_steps(num_steps),
        phases(std::move(phases)) {}

  int phase_index(const char* name) const {
    for (size_t i = 0; i < phases.size(); ++i) {
      if (std::strcmp(phases[i].name.c_str(), name) == 0) return static_cast<int>(i);
    }
    std::string known;
    for (const auto& phase : phases) known += (known.empty() ? "" : ", ") + phase.name;
    throw std::invalid_argument(std::string("profiler phase \"") + name +
                                "\" is not one of: " + known);
  }

  // Appends a mark taken now to the current step and returns its index.
  int add_mark() {
    current.marks.emplace_back();
    Mark& mark = current.marks.back();
    if (on_cuda) {
      if (free_events.empty()) free_events.push_back(device_timeline::create());
      mark.event = free_events.back();
      free_events.pop_back();
      device_timeline::record(mark.event, device);
    }
    mark.host = SteadyClock::now();
    return static_cast<int>(current.marks.size()) - 1;
  }

  void release_events(RecordedStep& step) {
    for (Mark& mark : step.marks) {
      if (mark.event != nullptr) free_events.push_back(mark.event);
      mark.event = nullptr;
    }
    step.marks.clear();
  }

  // Whether the device has passed the end of `step`; with `wait`, waits until it has.
  bool passed(const RecordedStep& step, bool wait) {
    return !on_cuda || device_timeline::passed(step.marks.back().event, wait);
  }

  // Microseconds since the origin of every mark of `step` (the device has passed them).
  std::vector<double> mark_times_us(const RecordedStep& step) const {
    std::vector<double> times;
    times.reserve(step.marks.size());
    if (on_cuda) {
      // Offsets within a step from the step's first event: CUDA's elapsed times are float
      // milliseconds, too coarse for microseconds when measured from an origin minutes ago.
      const double step_begin_ms =
          device_timeline::elapsed_ms(origin_event, step.marks.front().event);
      for (const Mark& mark : step.marks) {
        const double offset_ms = device_timeline::elapsed_ms(step.marks.front().event, mark.event);
        times.push_back(1e3 * (step_begin_ms + offset_ms));
      }
      return times;
    }
    for (const Mark& mark : step.marks) {
      times.push_back(std::chrono::duration<double, std::micro>(mark.host - origin_host).count());
    }
    return times;
  }

  StepProfile resolve(const RecordedStep& step) const {
    const std::vector<double> times = mark_times_us(step);
    StepProfile profile;
    profile.step = step.step;
    profile.begin_us = times.front();
    profile.duration_ms = (times.back() - times.front()) / 1e3;
    profile.phase_ms.assign(phases.size(), 0.0);
    double top_level_ms = 0;
    for (const RecordedInterval& recorded : step.intervals) {
      PhaseInterval interval;
      interval.phase = recorded.phase;
      interval.depth = recorded.depth;
      interval.begin_us = times[recorded.begin_mark];
      interval.duration_us = times[recorded.end_mark] - times[recorded.begin_mark];
      if (recorded.counted) profile.phase_ms[recorded.phase] += interval.duration_us / 1e3;
      if (recorded.depth == 0) top_level_ms += interval.duration_us / 1e3;
      profile.intervals.push_back(interval);
    }
    profile.outside_phases_ms = profile.duration_ms - top_level_ms;
    return profile;
  }

  void resolve_passed(bool wait) {
    while (!unresolved.empty() && passed(unresolved.front(), wait)) {
      resolved.push_back(resolve(unresolved.front()));
      release_events(unresolved.front());
      unresolved.pop_front();
    }
  }

  ~State() {
    release_events(current);
    for (RecordedStep& step : unresolved) release_events(step);
    for (device_timeline::Event event : free_events) device_timeline::destroy(event);
    device_timeline::destroy(origin_event);
  }
};

Profiler::Profiler(int rank, const c10::Device& device, int first_step, int num_steps,
                   std::vector<PhaseDefinition> phases)
    : state_(std::make_unique<State>(rank, device, first_step, num_steps, std::move(phases))) {
  if (state_->phases.empty()) throw std::invalid_argument("profiler: no phases to profile");
  for (size_t i = 0; i < state_->phases.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (state_->phases[i].name == state_->phases[j].name) {
        throw std::invalid_argument("profiler: phase \"" + state_->phases[i].name +
                                    "\" is defined twice");
      }
    }
  }
  if (state_->on_cuda) {
    state_->origin_event = device_timeline::create();
    device_timeline::record(state_->origin_event, device);
    device_timeline::passed(state_->origin_event, /*wait=*/true);
  }
  state_->origin_host = SteadyClock::now();
  state_->origin_unix_us =
      std::chrono::duration<double, std::micro>(std::chrono::system_clock::now().time_since_epoch())
          .count();
}

Profiler::~Profiler() = default;

void Profiler::begin_step(int step) {
  State& s = *state_;
  if (s.step_open) {
    throw std::logic_error("profiler: step " + std::to_string(step) + " begins before step " +
                           std::to_string(s.current.step) + " ended");
  }
  if (step < s.first_step || step >= s.first_step + s.num_steps) return;
  s.current = RecordedStep{};
  s.current.step = step;
  s.add_mark();
  s.step_open = true;
  device_timeline::push_range(("step " + std::to_string(step)).c_str());
}

void Profiler::end_step() {
  State& s = *state_;
  if (!s.step_open) return;
  // The step's range and those of phases left open, so that Nsight's ranges stay balanced.
  for (size_t range = 0; range <= s.open.size(); ++range) device_timeline::pop_range();
  s.step_open = false;
  if (!s.open.empty()) {
    const std::string phase = s.phases[s.open.back().phase].name;
    s.open.clear();
    s.release_events(s.current);
    throw std::logic_error("profiler: phase \"" + phase + "\" is still open at the end of step " +
                           std::to_string(s.current.step));
  }
  if (!s.deferred_error.empty()) {
    const std::string error = std::move(s.deferred_error);
    s.deferred_error.clear();
    s.release_events(s.current);
    throw std::runtime_error("profiler, step " + std::to_string(s.current.step) + ": " + error);
  }
  s.add_mark();
  s.unresolved.push_back(std::move(s.current));
  s.current = RecordedStep{};
  s.resolve_passed(/*wait=*/false);
}

bool Profiler::begin_phase(const char* name) {
  State& s = *state_;
  if (!s.step_open) return false;
  OpenPhase phase;
  phase.phase = s.phase_index(name);
  for (const OpenPhase& outer : s.open) phase.counted = phase.counted && outer.phase != phase.phase;
  phase.begin_mark = s.add_mark();
  s.open.push_back(phase);
  device_timeline::push_range(name);
  return true;
}

void Profiler::end_phase() noexcept {
  State& s = *state_;
  if (!s.step_open || s.open.empty()) return;
  device_timeline::pop_range();
  const OpenPhase phase = s.open.back();
  s.open.pop_back();
  RecordedInterval interval;
  interval.phase = phase.phase;
  interval.depth = static_cast<int>(s.open.size());
  interval.counted = phase.counted;
  interval.begin_mark = phase.begin_mark;
  try {
    interval.end_mark = s.add_mark();
    s.current.intervals.push_back(interval);
  } catch (const std::exception& error) {
    if (s.deferred_error.empty()) s.deferred_error = error.what();
  }
}

void Profiler::finish() { state_->resolve_passed(/*wait=*/true); }

int Profiler::rank() const { return state_->rank; }

const std::vector<PhaseDefinition>& Profiler::phases() const { return state_->phases; }

const std::vector<StepProfile>& Profiler::steps() const { return state_->resolved; }

RankProfile Profiler::rank_profile() {
  finish();
  const State& s = *state_;
  RankProfile profile;
  profile.steps = static_cast<int>(s.resolved.size());
  profile.phase_ms.assign(s.phases.size(), 0.0);
  for (const StepProfile& step : s.resolved) {
    profile.step_ms += step.duration_ms;
    profile.outside_phases_ms += step.outside_phases_ms;
    for (size_t i = 0; i < s.phases.size(); ++i) profile.phase_ms[i] += step.phase_ms[i];
  }
  if (profile.steps > 0) {
    profile.step_ms /= profile.steps;
    profile.outside_phases_ms /= profile.steps;
    for (double& ms : profile.phase_ms) ms /= profile.steps;
  }
  profile.peak_memory_bytes = peak_memory_bytes(s.device);
  return profile;
}

std::string Profiler::chrome_trace_events() {
  finish();
  return trainer::chrome_trace_events(state_->rank, state_->phases, state_->resolved,
                                      state_->origin_unix_us);
}

}  // namespace sparsering::trainer
