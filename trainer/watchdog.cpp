#include "trainer/watchdog.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace sparsering::trainer {
namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Watchdog::Watchdog(int rank, int timeout_seconds)
    : rank_(rank), timeout_seconds_(timeout_seconds), last_beat_ns_(now_ns()), phase_("start") {
  thread_ = std::thread([this] { watch(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  stop_signal_.notify_all();
  thread_.join();
}

void Watchdog::beat(const char* what) {
  phase_.store(what);
  last_beat_ns_.store(now_ns());
}

void Watchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (
      !stop_signal_.wait_for(lock, std::chrono::milliseconds(250), [this] { return stopping_; })) {
    const double idle = (now_ns() - last_beat_ns_.load()) / 1e9;
    if (idle > timeout_seconds_) {
      std::fprintf(stderr,
                   "sparsering: error on rank %d: watchdog: no progress for %.0f s in '%s' "
                   "(parallel.collective_timeout_s = %d); a peer rank is stuck or gone; "
                   "aborting the job\n",
                   rank_, idle, phase_.load(), timeout_seconds_);
      std::fflush(stderr);
      // Exiting without MPI_Finalize makes mpirun terminate every other rank.
      std::_Exit(3);
    }
  }
}

}  // namespace sparsering::trainer
