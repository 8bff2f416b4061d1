#include "parallel/head_all_to_all.h"

#include <torch/autograd.h>

#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace sparsering::parallel {
namespace {

// chunks[i] (contiguous, equal shapes) goes to rank i; returns what every rank sent here, in rank
// order. Entry s - 1 of the sends goes to rank + s and entry s - 1 of the receives comes from
// rank - s, so the peer's matching entry has the same index (as start_transfers pairs them); one
// call puts every transfer in flight together (one NCCL group, or non-blocking MPI).
std::vector<at::Tensor> exchange_chunks(const std::vector<at::Tensor>& chunks,
                                        Communicator& group) {
  const int u = group.size(), me = group.rank();
  std::vector<at::Tensor> received(u);
  received[me] = chunks[me];
  std::vector<Transfer> sends, receives;
  for (int shift = 1; shift < u; ++shift) {
    const int to = (me + shift) % u, from = (me - shift + u) % u;
    received[from] = at::empty_like(chunks[from]);
    sends.push_back({chunks[to], to});
    receives.push_back({received[from], from});
  }
  if (!sends.empty()) group.start_transfers(sends, receives)->wait();
  return received;
}

// Splits dimension `split` of x into u chunks, chunk i to rank i, and joins what arrives along
// dimension `join`: (split 2, join 1) turns heads into tokens, (1, 2) is its inverse.
at::Tensor regroup(const at::Tensor& x, int64_t split, int64_t join, Communicator& group) {
  const int u = group.size();
  if (x.size(split) % u != 0) {
    throw std::invalid_argument("head all-to-all: dimension " + std::to_string(split) + " (" +
                                std::to_string(x.size(split)) + ") does not split over " +
                                std::to_string(u) + " ranks");
  }
  std::vector<at::Tensor> chunks;
  for (const auto& part : x.chunk(u, split)) chunks.push_back(part.contiguous());
  return at::cat(exchange_chunks(chunks, group), join);
}

// regroup as an autograd op: its backward regroups the gradient the other way.
class Regroup : public torch::autograd::Function<Regroup> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t split, int64_t join, Communicator* group) {
    ctx->saved_data["split"] = split;
    ctx->saved_data["join"] = join;
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    return regroup(x, split, join, *group);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* group = reinterpret_cast<Communicator*>(ctx->saved_data["group"].toInt());
    const auto gradient = regroup(grads[0].contiguous(), ctx->saved_data["join"].toInt(),
                                  ctx->saved_data["split"].toInt(), *group);
    return {gradient, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor heads_to_tokens(const at::Tensor& x, Communicator& group) {
  return Regroup::apply(x, /*split=*/2, /*join=*/1, &group);
}

at::Tensor tokens_to_heads(const at::Tensor& x, Communicator& group) {
  return Regroup::apply(x, /*split=*/1, /*join=*/2, &group);
}

int64_t kv_head_repeat(int64_t kv_heads, int64_t u) { return u / std::gcd(kv_heads, u); }

at::Tensor gather_tokens(const at::Tensor& x, Communicator& group) {
  const auto gathered = group.all_gather(x.contiguous());  // [u, batch, local, ...]
  return at::cat(gathered.unbind(0), 1);
}

}  // namespace sparsering::parallel
