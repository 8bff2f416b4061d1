// What `sparsering sweep` prints about an expanded sweep: launch lines for launch/sweep.sh, or a
// table for people.
#pragma once

#include <string>

#include "configs/sweep.h"

namespace sparsering::trainer {

// One line per run: <run name>\t<world size>\t<base config>\t<override>\t<override>...
std::string sweep_launch_lines(const config::Sweep& sweep);

// A header naming the base config and fixed overrides, then one aligned row per run: its name,
// its number of ranks and its value of every swept field.
std::string sweep_table(const config::Sweep& sweep);

}  // namespace sparsering::trainer
