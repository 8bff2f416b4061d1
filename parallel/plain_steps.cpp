#include "parallel/plain_steps.h"

namespace sparsering::parallel {
namespace {

// A run of consecutive global blocks: local slots [begin, end) hold ids first .. first+end-begin-1.
struct BlockRun {
  int64_t begin = 0, end = 0, first = 0;
  int64_t last() const { return first + (end - begin) - 1; }
};

std::vector<BlockRun> block_runs(const at::Tensor& block_ids) {
  const auto ids = block_ids.to(at::kLong).contiguous();
  const auto* id = ids.data_ptr<int64_t>();
  std::vector<BlockRun> runs;
  for (int64_t slot = 0; slot < ids.numel(); ++slot) {
    if (runs.empty() || id[slot] != runs.back().last() + 1) {
      runs.push_back({slot, slot + 1, id[slot]});
    } else {
      runs.back().end = slot + 1;
    }
  }
  return runs;
}

}  // namespace

std::optional<std::vector<PlainPart>> plain_parts(const at::Tensor& q_block_ids,
                                                  const at::Tensor& k_block_ids,
                                                  int64_t block_size) {
  const auto q_ids = q_block_ids.to(at::kLong), k_ids = k_block_ids.to(at::kLong);
  const int64_t q_tokens = q_ids.numel() * block_size, k_tokens = k_ids.numel() * block_size;
  if (q_ids.equal(k_ids)) {
    // One causal call over the whole shard when its blocks ascend, gaps between runs included.
    const bool ascending =
        q_ids.numel() < 2 || (q_ids.slice(0, 1) > q_ids.slice(0, 0, -1)).all().item<bool>();
    if (ascending)
      return std::vector<PlainPart>{{0, q_tokens, 0, k_tokens, kernels::PlainMask::kCausal}};
  }
  std::vector<PlainPart> parts;
  for (const BlockRun& q : block_runs(q_ids)) {
    for (const BlockRun& k : block_runs(k_ids)) {
      PlainPart part{q.begin * block_size, q.end * block_size, k.begin * block_size,
                     k.end * block_size, kernels::PlainMask::kFull};
      if (k.first > q.last()) continue;  // keys wholly after the queries: nothing visible
      if (k.last() < q.first) {
        parts.push_back(part);
      } else if (k.first == q.first && k.last() == q.last()) {
        part.mask = kernels::PlainMask::kCausal;
        parts.push_back(part);
      } else {
        return std::nullopt;  // partly overlapping runs: a causal edge off the rectangle's diagonal
      }
      if (parts.size() > kMaxPlainParts) return std::nullopt;
    }
  }
  return parts;
}

int64_t causal_block_pairs(const at::Tensor& q_block_ids, const at::Tensor& k_block_ids) {
  const auto k_sorted = std::get<0>(k_block_ids.to(at::kLong).sort());
  const auto keys_before =
      at::searchsorted(k_sorted, q_block_ids.to(at::kLong), false, /*right=*/true);
  return keys_before.sum().item<int64_t>();
}

}  // namespace sparsering::parallel
