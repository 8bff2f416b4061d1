// Which settings a resumed training must share with the checkpoint it continues: those that change
// what the saved state means. The model (every field: shapes, RoPE, norms), the N:M sparsity of
// the weights (enabled, n, m, layers, mode, gradient semantics) and the token layout over the ring
// (parallel.layout). Everything else (steps, learning rate, attention kind and budgets, data
// path, ...) may change between runs.
#pragma once

#include <string>

namespace sparsering::config {

// Why a checkpoint written under `saved_config` cannot be resumed under `current_config` (both
// resolved experiment texts), naming the first differing field with both values, or "" when it
// can.
std::string resume_incompatibility(const std::string& saved_config,
                                   const std::string& current_config);

}  // namespace sparsering::config
