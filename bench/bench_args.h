// Command-line helpers shared by the benchmark programs.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace sparsering::bench {

// "16384,32768" -> {16384, 32768}
inline std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) values.push_back(std::stoll(item));
  return values;
}

}  // namespace sparsering::bench
