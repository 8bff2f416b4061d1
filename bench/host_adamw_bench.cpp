// Host AdamW throughput for optimizer.offload: CPU: the fused one-pass host_adamw (bf16 gradient
// widened on the fly, bf16 weights written) against torch's op-by-op AdamW on fp32 host tensors
// (flat_adamw_step, the arithmetic stage 0 runs), on the same slice in the same run. Reports the
// time per step, elements per second and the bytes each moves per second. Prints a table and
// writes JSON.
//
//   host_adamw_bench [--elements 67108864] [--repeats 5] [--threads 0 (all)] [--json PATH]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>

#include "trainer/state/flat_adamw.h"
#include "trainer/state/host_adamw.h"

namespace {

using namespace sparsering;

// Median seconds of `repeats` runs after one warm-up run.
double median_seconds(int repeats, const std::function<void()>& run) {
  run();
  std::vector<double> seconds;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int64_t elements = int64_t{1} << 26;
  int repeats = 5, threads = 0;
  std::string json_path = "host_adamw_bench.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--elements")
      elements = std::stoll(value);
    else if (flag == "--repeats")
      repeats = std::stoi(value);
    else if (flag == "--threads")
      threads = std::stoi(value);
    else if (flag == "--json")
      json_path = value;
    else {
      std::fprintf(stderr, "host_adamw_bench: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  if (threads > 0) at::set_num_threads(threads);
  at::manual_seed(0);
  auto master = at::randn({elements});
  auto exp_avg = at::randn({elements}).mul_(1e-3);
  auto exp_avg_sq = at::rand({elements}).mul_(1e-6);
  const auto grad_bf16 = at::randn({elements}).mul_(1e-2).to(at::kBFloat16);
  const auto grad_fp32 = grad_bf16.to(at::kFloat);
  auto weights = at::empty({elements}, at::kBFloat16);
  config::OptimizerConfig optimizer{};
  optimizer.beta1 = 0.9;
  optimizer.beta2 = 0.95;
  optimizer.eps = 1e-8;
  optimizer.weight_decay = 0.1;
  trainer::HostAdamWStep step;
  step.lr = 1e-4;
  step.step = 10;
  step.optimizer = optimizer;

  const double fused = median_seconds(repeats, [&] {
    trainer::host_adamw(master, exp_avg, exp_avg_sq, grad_bf16, at::Tensor(), weights, step);
  });
  // torch's ops need the gradient in fp32 and a separate rounding of the weights to bf16.
  const double torch_ops = median_seconds(repeats, [&] {
    trainer::flat_adamw_step(master, grad_fp32, exp_avg, exp_avg_sq, step.lr, optimizer, step.step);
    weights.copy_(master);
  });

  // Bytes the fused pass must move: bf16 gradient in, fp32 master and moments in and out, bf16
  // weights out (the torch baseline moves more, through its temporaries).
  const double bytes = static_cast<double>(elements) * (2 + 3 * 4 * 2 + 2);
  std::printf("host AdamW, %lld elements, %d host threads, median of %d\n",
              static_cast<long long>(elements), at::get_num_threads(), repeats);
  std::printf("%-22s %10s %14s %12s %8s\n", "implementation", "ms/step", "elements/s", "GB/s(min)",
              "speedup");
  auto row = [&](const char* name, double seconds) {
    std::printf("%-22s %10.2f %14.3e %12.1f %7.2fx\n", name, seconds * 1e3, elements / seconds,
                bytes / seconds / 1e9, torch_ops / seconds);
  };
  row("torch ops (baseline)", torch_ops);
  row("host_adamw (fused)", fused);
  std::ofstream json(json_path);
  json << "{\"elements\": " << elements << ", \"threads\": " << at::get_num_threads()
       << ", \"repeats\": " << repeats << ", \"torch_ops_ms\": " << torch_ops * 1e3
       << ", \"host_adamw_ms\": " << fused * 1e3 << ", \"speedup\": " << torch_ops / fused
       << ", \"host_adamw_min_bytes_per_s\": " << bytes / fused << "}\n";
  return 0;
}
