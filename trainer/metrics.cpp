#include "trainer/metrics.h"

#include <cmath>
#include <cstdio>
#include <sstream>
#include <stdexcept>

namespace sparsering::trainer {

MetricsLog::MetricsLog(const std::string& path) {
  if (path.empty()) return;
  jsonl_ = AppendFile(path);
}

void MetricsLog::write(const StepMetrics& m) {
  if (!jsonl_.is_open()) return;
  // JSON has no NaN or infinity: a non-finite value (a skipped step's loss) is written as null.
  auto number = [](double value, const char* format) {
    if (!std::isfinite(value)) return std::string("null");
    char text[64];
    std::snprintf(text, sizeof(text), format, value);
    return std::string(text);
  };
  std::ostringstream line;
  line << "{\"step\": " << m.step << ", \"loss\": " << number(m.loss, "%.6f")
       << ", \"lr\": " << number(m.lr, "%.6g") << ", \"grad_norm\": " << number(m.grad_norm, "%.6g")
       << ", \"tokens_per_second\": " << number(m.tokens_per_second, "%.1f")
       << ", \"executed_tflops\": " << number(m.executed_tflops, "%.4f")
       << ", \"dense_equivalent_tflops\": " << number(m.dense_equivalent_tflops, "%.4f")
       << ", \"mfu\": " << (m.mfu < 0 ? std::string("null") : number(m.mfu, "%.5f"))
       << ", \"attention_density\": " << number(m.attention_density, "%.5f")
       << ", \"imbalance\": " << number(m.imbalance, "%.4f")
       << ", \"step_seconds\": " << number(m.step_seconds, "%.5f")
       << ", \"skipped_steps\": " << m.skipped_steps << "}\n";
  // One checked write per line: a full disk ends the run instead of cutting the file.
  jsonl_.append(line.str());
}

std::string MetricsLog::console_line(const StepMetrics& m, int total_steps) {
  char line[320];
  char mfu[32] = "";
  if (m.mfu >= 0) std::snprintf(mfu, sizeof(mfu), " | MFU %4.1f%%", 100 * m.mfu);
  std::snprintf(line, sizeof(line),
                "step %5d/%d | loss %.4f | lr %.3e | grad norm %.3f | tokens/s %.0f | "
                "TF/s %.2f%s | density %.3f",
                m.step, total_steps, m.loss, m.lr, m.grad_norm, m.tokens_per_second,
                m.executed_tflops, mfu, m.attention_density);
  return line;
}

}  // namespace sparsering::trainer
