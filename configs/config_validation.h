// Validation of a parsed experiment: every field finite and bounded, then the rules between
// fields. A failure throws UserError naming the input, the field, its value and the rule.
#pragma once

#include <string>

#include "configs/sparsering.pb.h"

namespace sparsering::config {

// `source` names the input (a file or "embedded tiny config") in the error.
void validate_experiment(const proto::Experiment& experiment, const std::string& source);

}  // namespace sparsering::config
