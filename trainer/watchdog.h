// Ends a job whose rank stops making progress: a collective that never completes (a peer hung or
// died without taking the job down) would otherwise hang every rank forever. The training loop
// calls beat() as it moves on; a thread checks that the last beat is younger than the timeout and
// otherwise prints what this rank was doing and exits, which makes mpirun end the whole job.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace sparsering::trainer {

class Watchdog {
 public:
  Watchdog(int rank, int timeout_seconds);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Progress: `what` names the phase now entered (kept for the message). Must be a literal.
  void beat(const char* what);

 private:
  void watch();

  int rank_, timeout_seconds_;
  std::atomic<int64_t> last_beat_ns_;
  std::atomic<const char*> phase_;
  std::mutex mutex_;
  std::condition_variable stop_signal_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace sparsering::trainer
