#include <stdexcept>

#include "trainer/profiling/device_timeline.h"

namespace sparsering::trainer::device_timeline {
namespace {

[[noreturn]] void no_device() {
  throw std::logic_error("profiler: device events in a build without CUDA");
}

}  // namespace

Event create() { no_device(); }
void destroy(Event) {}
void record(Event, const c10::Device&) { no_device(); }
bool passed(Event, bool) { no_device(); }
double elapsed_ms(Event, Event) { no_device(); }
void push_range(const char*) {}
void pop_range() {}
int64_t peak_allocated_bytes(const c10::Device&) { no_device(); }

}  // namespace sparsering::trainer::device_timeline
