// The output-projection loss on one GPU: trainer::chunked_cross_entropy (fp32 logits straight
// from the bf16 product, then the cross-entropy row kernel writes loss and bf16 gradient in one
// pass) against the same loop on torch ops (bf16 logits cast to fp32, then logsumexp, gather,
// exp, scatter_add, multiply and a cast back: the reference twin of kernels/cross_entropy.h), in
// the same run. Both include the three matmuls. Prints a table and writes JSON.
//
//   cross_entropy_bench [--tokens 65536] [--vocab 16384,128256] [--hidden 512,4096]
//                       [--chunk 8192] [--repeats 10] [--json PATH]
// --vocab and --hidden pair up (one shape per pair).
#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_args.h"
#include "kernels/cross_entropy.h"
#include "trainer/model/chunked_loss.h"

namespace {

using namespace sparsering;

double median_ms(int repeats, const std::function<void()>& run) {
  run();
  torch::cuda::synchronize();
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    torch::cuda::synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// The torch-ops loop: what chunked_cross_entropy ran before the row kernel.
void torch_ops_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
                    int64_t chunk, double normalizer) {
  auto grad_hidden = at::empty_like(hidden);
  auto grad_weight = at::zeros(weight.sizes(), weight.options().dtype(at::kFloat));
  auto loss = at::zeros({}, hidden.options().dtype(at::kFloat));
  for (int64_t start = 0; start < hidden.size(0); start += chunk) {
    const int64_t length = std::min(chunk, hidden.size(0) - start);
    const auto h = hidden.narrow(0, start, length);
    const auto rows = kernels::cross_entropy_rows_reference(
        at::matmul(h, weight.t()).to(at::kFloat), labels.narrow(0, start, length),
        trainer::kIgnoreLabel, 1.0 / normalizer, hidden.scalar_type());
    loss += rows.losses.sum();
    grad_hidden.narrow(0, start, length).copy_(at::matmul(rows.grad, weight));
    grad_weight.add_(at::matmul(rows.grad.t(), h).to(at::kFloat));
  }
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 65536, chunk = 8192;
  int repeats = 10;
  std::vector<int64_t> vocabs{16384, 128256}, hiddens{512, 4096};
  std::string json_path = "cross_entropy_bench.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--tokens")
      tokens = std::stoll(value);
    else if (flag == "--vocab")
      vocabs = bench::parse_list(value);
    else if (flag == "--hidden")
      hiddens = bench::parse_list(value);
    else if (flag == "--chunk")
      chunk = std::stoll(value);
    else if (flag == "--repeats")
      repeats = std::stoi(value);
    else if (flag == "--json")
      json_path = value;
    else {
      std::fprintf(stderr, "cross_entropy_bench: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  if (!torch::cuda::is_available() || vocabs.size() != hiddens.size()) {
    std::fprintf(stderr, "cross_entropy_bench: needs a GPU and as many --vocab as --hidden\n");
    return 2;
  }
  std::printf(
      "output-projection loss fwd+bwd (bf16 products), %lld tokens, chunks of %lld, "
      "median of %d\n",
      static_cast<long long>(tokens), static_cast<long long>(chunk), repeats);
  std::printf("%8s %7s %16s %16s %8s\n", "vocab", "hidden", "torch ops ms", "row kernel ms",
              "speedup");
  std::ofstream json(json_path);
  json << "{\"tokens\": " << tokens << ", \"chunk\": " << chunk << ", \"rows\": [";
  for (size_t s = 0; s < vocabs.size(); ++s) {
    at::manual_seed(1);
    const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
    const auto hidden = at::randn({tokens, hiddens[s]}, options);
    const auto weight = at::randn({vocabs[s], hiddens[s]}, options).mul_(0.02);
    const auto labels = at::randint(0, vocabs[s], {tokens}, options.dtype(at::kLong));
    const double baseline =
        median_ms(repeats, [&] { torch_ops_loss(hidden, weight, labels, chunk, tokens); });
    const double fused = median_ms(repeats, [&] {
      const auto h = hidden.detach().requires_grad_(true);
      const auto w = weight.detach().requires_grad_(true);
      trainer::chunked_cross_entropy(h, w, labels, chunk, tokens).backward();
    });
    std::printf("%8lld %7lld %16.2f %16.2f %7.2fx\n", static_cast<long long>(vocabs[s]),
                static_cast<long long>(hiddens[s]), baseline, fused, baseline / fused);
    json << (s ? ", " : "") << "{\"vocab\": " << vocabs[s] << ", \"hidden\": " << hiddens[s]
         << ", \"torch_ops_ms\": " << baseline << ", \"row_kernel_ms\": " << fused
         << ", \"speedup\": " << baseline / fused << "}";
  }
  json << "]}\n";
  return 0;
}
