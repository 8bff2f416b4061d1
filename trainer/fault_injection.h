// Fault injection for the reliability tests (tests/e2e/reliability.py): the environment variable
// SPARSERING_FAULT="<action>:<point>:<rank>:<step>" makes rank <rank> fail at <point> of step
// <step>. Actions: throw (an exception, as bad data would), nan (a non-finite loss), stall (hang
// forever, as a stuck collective would), kill (exit at once, as a killed process). Points: step
// (the start of the step), checkpoint (after the shards of the step's checkpoint are written,
// before it is published). Unset: no cost beyond one comparison.
#pragma once

#include <cstdint>

namespace sparsering::trainer {

enum class FaultPoint { kStepStart, kCheckpointShardsWritten };

// Performs the configured fault if it matches; returns true for "nan" (the caller poisons its
// loss), false otherwise.
bool maybe_inject_fault(FaultPoint point, int rank, int64_t step);

}  // namespace sparsering::trainer
