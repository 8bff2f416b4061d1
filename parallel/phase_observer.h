// Lets a profiler time phases inside the ring (parallel/ does not depend on the trainer): the ring
// brackets its waits for transfers, so the time they are exposed shows as its own phase.
#pragma once

namespace sparsering::parallel {

class PhaseObserver {
 public:
  virtual ~PhaseObserver() = default;
  // Returns whether the phase was recorded (a profiler records only inside its window).
  virtual bool begin_phase(const char* name) = 0;
  virtual void end_phase() noexcept = 0;
};

// Times its own lifetime as `name` on `observer` (nullptr: nothing, one branch).
class ObservedPhase {
 public:
  ObservedPhase(PhaseObserver* observer, const char* name)
      : observer_(observer != nullptr && observer->begin_phase(name) ? observer : nullptr) {}
  ~ObservedPhase() {
    if (observer_ != nullptr) observer_->end_phase();
  }
  ObservedPhase(const ObservedPhase&) = delete;
  ObservedPhase& operator=(const ObservedPhase&) = delete;

 private:
  PhaseObserver* observer_;
};

// The phase name the ring reports its waits under.
constexpr const char* kRingCommunicationPhase = "ring_communication_exposed";
// The phase of the head-parallel all-to-alls around the ring (forward).
constexpr const char* kHeadAllToAllPhase = "head_all_to_all";

}  // namespace sparsering::parallel
