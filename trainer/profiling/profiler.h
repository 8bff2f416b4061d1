// Per-phase timing of training steps on one rank (data, attention, exposed ring communication, MLP,
// loss, backward, gradient sync, optimizer): what each phase costs per step, peak memory, and a
// Chrome trace of the phases (profile_report.h turns every rank's numbers into a summary table).
//
// On CUDA a phase is a pair of CUDA events recorded on the current stream, so it measures device
// time between two points of that stream; a wait on the communication stream inside a phase counts
// in that phase, which is what makes exposed communication measurable. Events are read only once
// the device has passed them (at a later step end, or in finish()), never by blocking inside a
// step. CUDA builds also push NVTX ranges named after the phases, for Nsight Systems. On the CPU,
// phases are read from steady_clock.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/phase_observer.h"

namespace sparsering::trainer {

// A phase and the row of the trace (its group) that it is drawn on.
struct PhaseDefinition {
  std::string name;
  std::string group;
};

// data; attention, mlp, loss, backward (compute); ring_communication_exposed, gradient_sync
// (communication); optimizer. Names are what ProfileScope takes.
std::vector<PhaseDefinition> training_step_phases();

// One occurrence of a phase. Times are microseconds since the profiler's origin.
struct PhaseInterval {
  int phase = 0;  // index into Profiler::phases()
  int depth = 0;  // number of phases open around it
  double begin_us = 0;
  double duration_us = 0;
};

struct StepProfile {
  int step = 0;
  double begin_us = 0;  // since the profiler's origin
  double duration_ms = 0;
  // Per phase, the sum of its occurrences; an occurrence inside the same phase is not counted
  // again. Phases nested in other phases count in both, so these may add up to more than a step.
  std::vector<double> phase_ms;
  double outside_phases_ms = 0;  // step time outside every phase of depth 0
  std::vector<PhaseInterval> intervals;
};

// One rank's means over its profiled steps: the numbers the trainer gathers from every rank.
struct RankProfile {
  int steps = 0;
  double step_ms = 0;
  std::vector<double> phase_ms;  // indexed like Profiler::phases()
  double outside_phases_ms = 0;
  int64_t peak_memory_bytes = 0;
  // What the model state holds of that peak (the rest is activations, the attention index and
  // workspace): bf16/fp32 weights, their gradients (model and fp32 master), and the optimizer's
  // fp32 master weights and AdamW moments. Zero where the trainer did not report them.
  int64_t weight_bytes = 0, gradient_bytes = 0, optimizer_bytes = 0;

  // Flat form for gathering with one collective of doubles: row_size(phases) values on every rank.
  static size_t row_size(size_t num_phases);
  std::vector<double> to_row() const;
  static RankProfile from_row(const double* row, size_t num_phases);
};

// Peak memory of this process on `device` since it started: the CUDA caching allocator's maximum
// allocated bytes on a GPU, the peak resident set size (getrusage) on the CPU.
int64_t peak_memory_bytes(const c10::Device& device);

// Not thread-safe: one thread at a time may record (the autograd engine's device thread, while the
// caller waits in backward(), qualifies).
class Profiler : public parallel::PhaseObserver {
 public:
  // Profiles steps first_step .. first_step + num_steps - 1 of `rank` on `device`; other steps
  // record nothing. On CUDA the constructor waits once for the current stream, to anchor device
  // times to the host clock so that the ranks' traces line up.
  Profiler(int rank, const c10::Device& device, int first_step, int num_steps,
           std::vector<PhaseDefinition> phases = training_step_phases());
  ~Profiler();
  Profiler(const Profiler&) = delete;
  Profiler& operator=(const Profiler&) = delete;

  // Bracket every step; calls for steps outside the profiled window do nothing. end_step throws
  // std::logic_error when a phase is still open, and resolves the steps the device has passed.
  void begin_step(int step);
  void end_step();

  // ProfileScope's halves. begin_phase returns whether it recorded (false outside a profiled
  // step), and throws std::invalid_argument for a name not among phases(). end_phase closes the
  // innermost open phase; it runs in destructors, so errors wait for the next end_step.
  bool begin_phase(const char* name) override;
  void end_phase() noexcept override;

  // Waits until the device has passed every recorded step and resolves them: the one blocking wait
  // of the CUDA path, for after the profiled window.
  void finish();

  int rank() const;
  const std::vector<PhaseDefinition>& phases() const;
  // Steps resolved so far, in order (all recorded steps after finish()).
  const std::vector<StepProfile>& steps() const;
  // Means over all recorded steps, with the peak memory; calls finish().
  RankProfile rank_profile();
  // This rank's Chrome trace events (JSON objects separated by commas; chrome_trace_json() in
  // profile_report.h makes the document): pid = rank, tid = phase group, ts and dur in
  // microseconds since the Unix epoch. Calls finish().
  std::string chrome_trace_events();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Times its own lifetime as `phase`: ProfileScope scope(profiler, "attention"). A null profiler
// (profiling off) costs one branch; so does a step outside the profiled window, plus a call.
class ProfileScope {
 public:
  ProfileScope(Profiler* profiler, const char* phase)
      : profiler_(profiler != nullptr && profiler->begin_phase(phase) ? profiler : nullptr) {}
  ~ProfileScope() {
    if (profiler_ != nullptr) profiler_->end_phase();
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  Profiler* profiler_;
};

}  // namespace sparsering::trainer
