#include "trainer/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <cstring>

namespace sparsering::trainer {
namespace {

volatile sig_atomic_t g_world_rank = 0;

void write_text(const char* text) {
  // write(2) is async-signal-safe; a short write of one line is not worth retrying here.
  if (::write(STDERR_FILENO, text, std::strlen(text)) < 0) return;
}

void on_signal(int signal_number) {
  if (g_world_rank == 0) {
    write_text(signal_number == SIGINT ? "sparsering: interrupted (SIGINT)"
                                       : "sparsering: interrupted (SIGTERM)");
    write_text("; the last complete checkpoint stays loadable: continue with --resume auto\n");
  }
  ::_exit(128 + signal_number);
}

}  // namespace

void install_interrupt_handlers(int world_rank) {
  g_world_rank = world_rank;
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

}  // namespace sparsering::trainer
