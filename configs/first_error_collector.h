// Keeps the first protobuf text-format parse error with its position, so a config error can name
// the file, line and column in one line. Used only inside the config library (protobuf headers).
#pragma once

#include <google/protobuf/io/tokenizer.h>

#include <string>

namespace sparsering::config {

class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (error_.empty()) {
      error_ =
          "line " + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + message;
    }
  }
  const std::string& error() const { return error_; }

 private:
  std::string error_;
};

}  // namespace sparsering::config
