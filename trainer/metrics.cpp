#include "trainer/metrics.h"

#include <cstdio>
#include <stdexcept>

namespace sparsering::trainer {

MetricsLog::MetricsLog(const std::string& path) {
  if (path.empty()) return;
  jsonl_.open(path, std::ios::app);
  if (!jsonl_) throw std::runtime_error(path + ": cannot open the metrics file for writing");
}

void MetricsLog::write(const StepMetrics& m) {
  if (!jsonl_.is_open()) return;
  char line[512];
  std::snprintf(line, sizeof(line),
                "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g, "
                "\"tokens_per_second\": %.1f, \"model_tflops\": %.4f, \"executed_tflops\": %.4f, "
                "\"mfu\": %s, \"attention_density\": %.5f, \"imbalance\": %.4f, "
                "\"step_seconds\": %.5f}\n",
                m.step, m.loss, m.lr, m.grad_norm, m.tokens_per_second, m.model_tflops,
                m.executed_tflops, m.mfu < 0 ? "null" : std::to_string(m.mfu).c_str(),
                m.attention_density, m.imbalance, m.step_seconds);
  jsonl_ << line;
  jsonl_.flush();
}

std::string MetricsLog::console_line(const StepMetrics& m, int total_steps) {
  char line[320];
  char mfu[32] = "";
  if (m.mfu >= 0) std::snprintf(mfu, sizeof(mfu), " | MFU %4.1f%%", 100 * m.mfu);
  std::snprintf(line, sizeof(line),
                "step %5d/%d | loss %.4f | lr %.3e | grad norm %.3f | tokens/s %.0f | "
                "TF/s %.2f%s | density %.3f",
                m.step, total_steps, m.loss, m.lr, m.grad_norm, m.tokens_per_second,
                m.model_tflops, mfu, m.attention_density);
  return line;
}

}  // namespace sparsering::trainer
