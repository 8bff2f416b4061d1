// Per-rank sparse attention work under each token layout (contiguous, zigzag, balanced) for a
// vertical-slash pattern: max / mean over the ranks of the attended (query, key) pairs, the
// quantity that sets a ring step's time. Runs on the CPU (it counts the work the indices hold, it
// does not time kernels). Prints a table and writes JSON.
//
//   layout_imbalance [--lengths 131072,524288] [--ranks 2,4,8] [--heads 8] [--json PATH]
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_args.h"
#include "kernels/vertical_slash.h"
#include "parallel/layout.h"

namespace {

using namespace sparsering;

// Attention mass shaped like measured vertical-slash heads: a power law over key columns (a few
// heavy "sink-like" columns anywhere in the sequence) and diagonals that decay with distance plus
// a few strong far diagonals.
kernels::AttentionMass synthetic_mass(int64_t heads, int64_t length) {
  at::manual_seed(0);
  const auto position = at::arange(1, length + 1, at::kFloat);
  auto vertical = at::rand({heads, length}).pow(40.0);  // rare heavy columns
  auto slash = 1.0 / position.unsqueeze(0).expand({heads, length}) +
               at::rand({heads, length}).pow(60.0);  // near diagonals + far spikes
  return {vertical, slash.contiguous()};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> lengths = {131072, 524288}, worlds = {2, 4, 8};
  int64_t heads = 8;
  std::string json_path = "layout_imbalance.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--lengths")
      lengths = bench::parse_list(value);
    else if (flag == "--ranks")
      worlds = bench::parse_list(value);
    else if (flag == "--heads")
      heads = std::stoll(value);
    else if (flag == "--json")
      json_path = value;
    else {
      std::fprintf(stderr, "layout_imbalance: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  const int block = 64;
  std::ofstream json(json_path);
  json << "{\"block_size\": " << block << ", \"heads\": " << heads << ", \"rows\": [";
  bool first_row = true;
  std::printf("%9s %5s %-11s %9s %10s %10s\n", "tokens", "ranks", "layout", "density", "max/mean",
              "dense max/mean");
  for (const int64_t length : lengths) {
    // Budgets as in configs/llama_1b.pbtxt: 1% of the context in columns, 0.2% in diagonals.
    const auto pattern = kernels::select_pattern(synthetic_mass(heads, length), length / 100,
                                                 length / 500, 64, 1024, block);
    for (const int64_t world : worlds) {
      for (auto kind : {config::LayoutKind::kContiguous, config::LayoutKind::kZigzag,
                        config::LayoutKind::kBalanced}) {
        parallel::TokenLayout layout(kind, length / block, block, static_cast<int>(world));
        std::vector<double> sparse_work, dense_work;
        for (int rank = 0; rank < world; ++rank) {
          double sparse_pairs = 0;
          for (int source = 0; source < world; ++source) {
            const kernels::ShardBlocks blocks{layout.blocks_of(rank), layout.blocks_of(source), {}};
            sparse_pairs += kernels::attended_pairs(
                kernels::build_sparse_index(pattern, blocks, 1, heads, kernels::Transpose::kNone));
          }
          // Dense causal work: query block g meets the g + 1 key blocks at or before it.
          const double dense_pairs =
              (layout.blocks_of(rank).to(at::kDouble) + 1).sum().item<double>() * heads * block *
              block;
          sparse_work.push_back(sparse_pairs);
          dense_work.push_back(dense_pairs);
        }
        auto imbalance = [](const std::vector<double>& work) {
          const double mean = std::accumulate(work.begin(), work.end(), 0.0) / work.size();
          return *std::max_element(work.begin(), work.end()) / mean;
        };
        const double density = std::accumulate(sparse_work.begin(), sparse_work.end(), 0.0) /
                               std::accumulate(dense_work.begin(), dense_work.end(), 0.0);
        std::printf("%9lld %5lld %-11s %9.4f %10.3f %10.3f\n", static_cast<long long>(length),
                    static_cast<long long>(world), parallel::layout_name(kind), density,
                    imbalance(sparse_work), imbalance(dense_work));
        json << (first_row ? "" : ", ") << "{\"tokens\": " << length << ", \"ranks\": " << world
             << ", \"layout\": \"" << parallel::layout_name(kind) << "\", \"density\": " << density
             << ", \"sparse_max_over_mean\": " << imbalance(sparse_work)
             << ", \"dense_max_over_mean\": " << imbalance(dense_work) << "}";
        first_row = false;
      }
    }
  }
  json << "]}\n";
  return 0;
}
