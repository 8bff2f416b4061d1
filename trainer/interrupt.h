// SIGINT and SIGTERM end a run at once with one clear line and the shell's status for the signal
// (130, 143). Nothing needs cleaning up: checkpoints, `latest`, summary.json and the resolved
// config are only ever published by rename (trainer/checkpoint/atomic_file.h,
// trainer/checkpoint/checkpoint.h), so the last complete checkpoint stays loadable whenever the
// signal lands.
#pragma once

namespace sparsering::trainer {

// Installs the handlers; rank 0 prints the line, the other ranks end quietly.
void install_interrupt_handlers(int world_rank);

}  // namespace sparsering::trainer
