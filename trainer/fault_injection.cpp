#include "trainer/fault_injection.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace sparsering::trainer {
namespace {

struct Fault {
  std::string action;
  FaultPoint point = FaultPoint::kStepStart;
  int rank = -1;
  int64_t step = -1;
};

Fault parse_fault() {
  Fault fault;
  const char* text = std::getenv("SPARSERING_FAULT");
  if (text == nullptr) return fault;
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ':')) parts.push_back(part);
  if (parts.size() != 4 || (parts[1] != "step" && parts[1] != "checkpoint")) {
    throw std::invalid_argument("SPARSERING_FAULT='" + std::string(text) +
                                "': expected action:step|checkpoint:rank:step");
  }
  fault.action = parts[0];
  fault.point = parts[1] == "step" ? FaultPoint::kStepStart : FaultPoint::kCheckpointShardsWritten;
  fault.rank = std::stoi(parts[2]);
  fault.step = std::stoll(parts[3]);
  return fault;
}

}  // namespace

bool maybe_inject_fault(FaultPoint point, int rank, int64_t step) {
  static const Fault fault = parse_fault();
  if (fault.action.empty() || fault.point != point || fault.rank != rank || fault.step != step) {
    return false;
  }
  std::fprintf(stderr, "sparsering: injected fault '%s' on rank %d at step %lld\n",
               fault.action.c_str(), rank, static_cast<long long>(step));
  std::fflush(stderr);
  if (fault.action == "throw") throw std::runtime_error("injected fault (SPARSERING_FAULT)");
  if (fault.action == "kill") std::_Exit(9);
  if (fault.action == "stall") {
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  if (fault.action == "nan") return true;
  throw std::invalid_argument("SPARSERING_FAULT: unknown action '" + fault.action + "'");
}

}  // namespace sparsering::trainer
