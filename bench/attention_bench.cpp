// Single-GPU attention benchmark: our block-sparse kernels (dense causal pattern and a
// vertical-slash pattern) against torch SDPA (cuDNN and FlashAttention-2 backends) measured in the
// same run, plus the cost of pattern estimation and index building. Document masking: the dense
// pattern with one document (the masked kernels on the causal pairs: their overhead) and with
// documents of --document-tokens (the pruned index). Prints a table and writes JSON.
//
//   attention_bench [--lengths 16384,32768,131072] [--heads 32] [--head-dim 128] [--json PATH]
//                   [--document-tokens 8192] [--pattern-dir DIR]
// --pattern-dir saves each length's vertical-slash patterns (DIR/vertical_slash_<name>_<tokens>.pt,
// a (columns, block_diagonals) tuple that Python's torch.load reads) so
// bench/flex_attention_bench.py can time FlexAttention on exactly the same mask.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/serialize.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_args.h"
#include "kernels/sparse_attention.h"
#include "kernels/vertical_slash.h"

namespace {

using namespace sparsering;

double time_ms(const std::function<void()>& run, int repeats = 3) {
  run();  // warm-up (and lazy initialisation)
  torch::cuda::synchronize();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) run();
  torch::cuda::synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
             .count() /
         repeats;
}

struct Row {
  std::string method;
  int64_t length;
  double density;  // attended / dense causal pairs
  double forward_ms, forward_backward_ms;
  double tflops_forward, tflops_forward_backward;  // on executed pairs
};

// Causal forward FLOPs for `pairs` attended (query, key) pairs: 4 x pairs x head_dim per head
// (QK^T and PV); backward = 2.5 x forward (five matmuls against the forward's two: S recomputed,
// dV, dP, dQ, dK), the convention of FlashAttention's benchmarks.
double forward_flops(double pairs, int64_t head_dim) { return 4.0 * pairs * head_dim; }

// `key_starts` (document masking, int32 [1, length]) may be undefined.
Row run_ours(const std::string& name, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const at::Tensor& dout, const kernels::VerticalSlashPattern& p, bool deterministic,
             const at::Tensor& key_starts = {}) {
  const int64_t length = q.size(1), heads = q.size(2), dim = q.size(3);
  const auto ids = at::arange(length / p.block_size, q.options().dtype(at::kInt));
  const kernels::ShardBlocks blocks{ids, ids, key_starts};
  // The transposed index selects the fast backward schedule, as the ring builds it on GPUs.
  const auto index =
      kernels::build_sparse_index(p, blocks, 1, k.size(2), kernels::Transpose::kBlocksAndColumns);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  kernels::AttentionPartial result;
  auto forward = [&] { result = kernels::sparse_attention_forward(q, k, v, blocks, index, scale); };
  auto forward_backward = [&] {
    forward();
    auto dq = at::zeros(q.sizes(), q.options().dtype(at::kFloat));
    auto dk = at::zeros(k.sizes(), k.options().dtype(at::kFloat));
    auto dv = at::zeros(v.sizes(), v.options().dtype(at::kFloat));
    const auto delta = kernels::attention_delta(dout, result.out);
    kernels::sparse_attention_backward(dout, q, k, v, result.out, result.lse, delta, blocks, index,
                                       scale, deterministic, dq, dk, dv);
  };
  // Executed pairs: active blocks count whole except the causal diagonal ones (half); blocks
  // that straddle a document start count whole too.
  const double dense_pairs = heads * (length / p.block_size) * (length / p.block_size + 1) / 2.0 *
                             p.block_size * p.block_size;
  const double pairs = static_cast<double>(kernels::attended_pairs(index));
  Row row{name, length, pairs / dense_pairs, time_ms(forward), time_ms(forward_backward), 0, 0};
  const double causal_pairs = pairs - heads * (length / p.block_size) * p.block_size *
                                          p.block_size / 2.0;  // diagonal blocks are half
  row.tflops_forward = forward_flops(causal_pairs, dim) / row.forward_ms / 1e9;
  row.tflops_forward_backward =
      3.5 * forward_flops(causal_pairs, dim) / row.forward_backward_ms / 1e9;
  return row;
}

Row run_sdpa(const std::string& name, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             const at::Tensor& dout) {
  const int64_t length = q.size(1), heads = q.size(2), dim = q.size(3);
  // SDPA takes [batch, heads, tokens, dim].
  auto qt = q.transpose(1, 2).detach().requires_grad_(true);
  auto kt = k.transpose(1, 2).detach().requires_grad_(true);
  auto vt = v.transpose(1, 2).detach().requires_grad_(true);
  const auto dt = dout.transpose(1, 2);
  auto forward = [&] {
    torch::NoGradGuard no_grad;
    at::scaled_dot_product_attention(qt, kt, vt, {}, 0.0, /*is_causal=*/true);
  };
  auto forward_backward = [&] {
    auto out = at::scaled_dot_product_attention(qt, kt, vt, {}, 0.0, /*is_causal=*/true);
    out.backward(dt);
  };
  Row row{name, length, 1.0, time_ms(forward), time_ms(forward_backward), 0, 0};
  const double pairs = heads * static_cast<double>(length) * length / 2.0;
  row.tflops_forward = forward_flops(pairs, dim) / row.forward_ms / 1e9;
  row.tflops_forward_backward = 3.5 * forward_flops(pairs, dim) / row.forward_backward_ms / 1e9;
  return row;
}

void save_pattern(const kernels::VerticalSlashPattern& p, const std::string& name,
                  const std::string& dir) {
  const std::string path =
      dir + "/vertical_slash_" + name + "_" + std::to_string(p.sequence_length) + ".pt";
  const auto bytes =
      torch::pickle_save(c10::ivalue::Tuple::create({p.columns.cpu(), p.block_diagonals.cpu()}));
  std::ofstream file(path, std::ios::binary);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!file) throw std::runtime_error("attention_bench: cannot write " + path);
}

void select_sdpa_backend(bool cudnn) {
  auto& context = at::globalContext();
  context.setSDPUseCuDNN(cudnn);
  context.setSDPUseFlash(!cudnn);
  context.setSDPUseMemEfficient(false);
  context.setSDPUseMath(false);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> lengths = {16384, 32768, 131072};
  int64_t heads = 32, dim = 128, document_tokens = 8192;
  std::string json_path = "attention_bench.json";
  std::string pattern_dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--lengths")
      lengths = bench::parse_list(value);
    else if (flag == "--heads")
      heads = std::stoll(value);
    else if (flag == "--head-dim")
      dim = std::stoll(value);
    else if (flag == "--document-tokens")
      document_tokens = std::stoll(value);
    else if (flag == "--json")
      json_path = value;
    else if (flag == "--pattern-dir")
      pattern_dir = value;
    else {
      std::fprintf(stderr, "attention_bench: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  if (!torch::cuda::is_available()) {
    std::fprintf(stderr, "attention_bench: needs a GPU\n");
    return 2;
  }
  const int block = 128;
  std::vector<Row> rows;
  // Per length: the whole estimate + index on the fused path (the ring's) and on the logits path.
  struct Estimation {
    int64_t length;
    double fused_ms, logits_ms;
  };
  std::vector<Estimation> estimation_ms;
  const auto options = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  for (const int64_t length : lengths) {
    at::manual_seed(0);
    const auto q = at::randn({1, length, heads, dim}, options);
    const auto k = at::randn({1, length, heads, dim}, options);
    const auto v = at::randn({1, length, heads, dim}, options);
    const auto dout = at::randn({1, length, heads, dim}, options);
    select_sdpa_backend(true);
    rows.push_back(run_sdpa("sdpa_cudnn", q, k, v, dout));
    select_sdpa_backend(false);
    rows.push_back(run_sdpa("sdpa_flash2", q, k, v, dout));
    const auto dense = kernels::dense_pattern(heads, length, block, q.device());
    rows.push_back(run_ours("ours_dense", q, k, v, dout, dense, false));
    // Document masking: key starts of one document, then of documents of document_tokens.
    const auto token_ids = at::arange(length, q.options().dtype(at::kInt)).unsqueeze(0);
    rows.push_back(
        run_ours("ours_dense_doc1", q, k, v, dout, dense, false, at::zeros_like(token_ids)));
    rows.push_back(run_ours("ours_dense_docs", q, k, v, dout, dense, false,
                            at::div(token_ids, document_tokens, "floor") * document_tokens));
    // Vertical-slash of the shape bench/flex_attention_bench.py also times: 1024 sink columns, a
    // 4096-token local window, and 1024 more columns chosen from (random) estimated mass.
    const kernels::AttentionMass mass{at::rand({heads, length}, q.options().dtype(at::kFloat)),
                                      at::zeros({heads, length}, q.options().dtype(at::kFloat))};
    const auto sparse = kernels::select_pattern(mass, 1024, 0, 1024, 4096, block);
    // The same with the 1024 extra columns as 8 whole column blocks (after the sink), so the
    // token mask is also a block mask (FlexAttention's best case).
    auto aligned = at::zeros({heads, length}, q.options().dtype(at::kFloat));
    for (int64_t h = 0; h < heads; ++h) {
      const auto picks =
          at::randperm(length / block - 8, q.options().dtype(at::kLong)).slice(0, 0, 8) + 8;
      for (int64_t i = 0; i < 8; ++i) {
        const int64_t first = picks[i].item<int64_t>() * block;
        aligned[h].slice(0, first, first + block).fill_(1.0);
      }
    }
    const auto block_columns =
        kernels::select_pattern({aligned, at::zeros_like(aligned)}, 1024, 0, 1024, 4096, block);
    if (!pattern_dir.empty()) {
      save_pattern(sparse, "scattered", pattern_dir);
      save_pattern(block_columns, "blockcols", pattern_dir);
    }
    rows.push_back(run_ours("ours_sparse", q, k, v, dout, sparse, false));
    rows.push_back(run_ours("ours_sparse_blockcols", q, k, v, dout, block_columns, false));
    rows.push_back(run_ours("ours_sparse_det", q, k, v, dout, sparse, true));
    // 64-token blocks (the 1B config's block size): the backward's 4-warp kv tiles.
    rows.push_back(run_ours("ours_dense_block64", q, k, v, dout,
                            kernels::dense_pattern(heads, length, 64, q.device()), false));
    rows.push_back(run_ours("ours_sparse_block64", q, k, v, dout,
                            kernels::select_pattern(mass, 1024, 0, 1024, 4096, 64), false));
    // Estimation (64 sampled queries against all keys) + selection + index build, whole and
    // stage by stage (each stage timed on the previous stage's output). The ring's path is the
    // fused one (row statistics and mass straight from Q and K); the logits path (sampled logits
    // stored in fp32, then row statistics and mass read from them) is its baseline in this run.
    const auto positions_cpu = at::arange(length, at::kLong);
    const auto positions = positions_cpu.to(q.device());
    const auto sample_positions = positions.slice(0, length - 64);
    const auto q_sample = q.slice(1, length - 64);
    const double scale = 1.0 / std::sqrt(double(dim));
    const auto ids = at::arange(length / block, q.options().dtype(at::kInt));
    const auto sampled =
        kernels::make_sampled_queries(q_sample, length - 64, k, positions_cpu, scale);
    // One GPU holds every key, so its row statistics are already the sequence's (the ring
    // all-reduces them across shards first).
    auto fused_mass = [&] {
      const auto stats = kernels::sampled_row_stats(sampled);
      return kernels::sampled_attention_mass(sampled, stats.max, stats.sum, length);
    };
    auto logits_mass = [&] {
      const auto logits = kernels::sample_logits(q_sample, sample_positions, k, positions, scale);
      const auto stats = kernels::softmax_row_stats(logits);
      return kernels::attention_mass_from_logits(logits, stats.max, stats.sum, sample_positions,
                                                 positions, length);
    };
    auto estimate_once = [&](const kernels::AttentionMass& mass) {
      const auto p = kernels::select_pattern(mass, 1024, 4096 / 64, 1024, 4096, block);
      return kernels::build_sparse_index(p, {ids, ids, {}}, 1, heads, kernels::Transpose::kBlocks);
    };
    // As the ring builds it on GPUs: with the transposed blocks of the fast backward.
    const double estimate = time_ms([&] { estimate_once(fused_mass()); });
    const double estimate_logits = time_ms([&] { estimate_once(logits_mass()); });
    const auto logits = kernels::sample_logits(q_sample, sample_positions, k, positions, scale);
    const auto stats = kernels::softmax_row_stats(logits);
    const auto m = fused_mass();
    const auto p = kernels::select_pattern(m, 1024, 4096 / 64, 1024, 4096, block);
    const auto fused_stats = kernels::sampled_row_stats(sampled);
    std::printf(
        "estimation stages at %lld tokens (ms): fused row stats %.2f, fused mass %.2f | logits "
        "path: logits %.2f, row stats %.2f, mass %.2f, whole estimate + index %.2f | select "
        "%.2f, index %.2f, index+transposed blocks %.2f, index+all transposed %.2f\n",
        static_cast<long long>(length), time_ms([&] { kernels::sampled_row_stats(sampled); }),
        time_ms([&] {
          kernels::sampled_attention_mass(sampled, fused_stats.max, fused_stats.sum, length);
        }),
        time_ms([&] { kernels::sample_logits(q_sample, sample_positions, k, positions, scale); }),
        time_ms([&] { kernels::softmax_row_stats(logits); }), time_ms([&] {
          kernels::attention_mass_from_logits(logits, stats.max, stats.sum, sample_positions,
                                              positions, length);
        }),
        estimate_logits,
        time_ms([&] { kernels::select_pattern(m, 1024, 4096 / 64, 1024, 4096, block); }),
        time_ms([&] {
          kernels::build_sparse_index(p, {ids, ids, {}}, 1, heads, kernels::Transpose::kNone);
        }),
        time_ms([&] {
          kernels::build_sparse_index(p, {ids, ids, {}}, 1, heads, kernels::Transpose::kBlocks);
        }),
        time_ms([&] {
          kernels::build_sparse_index(p, {ids, ids, {}}, 1, heads,
                                      kernels::Transpose::kBlocksAndColumns);
        }));
    std::fflush(stdout);
    estimation_ms.push_back({length, estimate, estimate_logits});
  }

  std::printf("\n%-22s %8s %8s %10s %10s %9s %9s\n", "method", "tokens", "density", "fwd ms",
              "fwd+bwd ms", "fwd TF/s", "f+b TF/s");
  for (const Row& r : rows) {
    std::printf("%-22s %8lld %8.4f %10.2f %10.2f %9.1f %9.1f\n", r.method.c_str(),
                static_cast<long long>(r.length), r.density, r.forward_ms, r.forward_backward_ms,
                r.tflops_forward, r.tflops_forward_backward);
  }
  for (const Estimation& e : estimation_ms) {
    std::printf("pattern estimation + index build at %lld tokens: %.2f ms (logits path: %.2f ms)\n",
                static_cast<long long>(e.length), e.fused_ms, e.logits_ms);
  }
  std::ofstream json(json_path);
  json << "{\"heads\": " << heads << ", \"head_dim\": " << dim << ", \"block_size\": " << block
       << ", \"document_tokens\": " << document_tokens << ", \"dtype\": \"bf16\", \"rows\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    json << (i ? ", " : "") << "{\"method\": \"" << r.method << "\", \"tokens\": " << r.length
         << ", \"density\": " << r.density << ", \"forward_ms\": " << r.forward_ms
         << ", \"forward_backward_ms\": " << r.forward_backward_ms
         << ", \"tflops_forward\": " << r.tflops_forward
         << ", \"tflops_forward_backward\": " << r.tflops_forward_backward << "}";
  }
  // estimation_ms: the fused path (the ring's); estimation_logits_ms: its baseline.
  json << "], \"estimation_ms\": {";
  for (size_t i = 0; i < estimation_ms.size(); ++i) {
    json << (i ? ", " : "") << "\"" << estimation_ms[i].length
         << "\": " << estimation_ms[i].fused_ms;
  }
  json << "}, \"estimation_logits_ms\": {";
  for (size_t i = 0; i < estimation_ms.size(); ++i) {
    json << (i ? ", " : "") << "\"" << estimation_ms[i].length
         << "\": " << estimation_ms[i].logits_ms;
  }
  json << "}}\n";
  return 0;
}
