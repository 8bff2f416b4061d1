// Bad input from the user (config, command line, data file, checkpoint): the message names the
// input and the fix. `main` prints it as one line and exits with status 2; everything else that
// escapes is an internal error (status 1).
#pragma once

#include <stdexcept>
#include <string>

namespace sparsering {

class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace sparsering
