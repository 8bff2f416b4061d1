// The device side of the profiler: events recorded on the current stream, the time between two of
// them, NVTX ranges for Nsight and the caching allocator's peak. device_timeline_cuda.cpp
// implements it in CUDA builds; device_timeline_none.cpp in others, where no tensor is on a device
// (recording an event there is a logic error, the ranges are no-ops).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>

namespace sparsering::trainer::device_timeline {

// An event on a device stream (a cudaEvent_t on CUDA); null is no event.
using Event = void*;

// A new event (events cost more to create than to record, so the profiler pools them).
Event create();
void destroy(Event event);
// Records `event` on the current stream of `device`.
void record(Event event, const c10::Device& device);
// Whether the device has passed `event`; with `wait`, waits until it has.
bool passed(Event event, bool wait);
// Milliseconds of device time from `from` to `to` (both passed).
double elapsed_ms(Event from, Event to);
// NVTX ranges around steps and phases, seen in Nsight Systems.
void push_range(const char* name);
void pop_range();
// The caching allocator's peak of allocated bytes on `device`.
int64_t peak_allocated_bytes(const c10::Device& device);

}  // namespace sparsering::trainer::device_timeline
