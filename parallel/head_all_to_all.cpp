#include "parallel/head_all_to_all.h"

#include <torch/autograd.h>

#include <memory>
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

at::Tensor heads_to_tokens_impl(const at::Tensor& x, Communicator& group) {
  const int u = group.size();
  const int64_t heads = x.size(2);
  if (heads % u != 0) {
    throw std::invalid_argument("head all-to-all: " + std::to_string(heads) +
                                " heads do not split over " + std::to_string(u) + " ranks");
  }
  std::vector<at::Tensor> chunks;
  for (const auto& part : x.chunk(u, 2)) chunks.push_back(part.contiguous());
  return at::cat(exchange_chunks(chunks, group), 1);
}

at::Tensor tokens_to_heads_impl(const at::Tensor& x, Communicator& group) {
  const int u = group.size();
  if (x.size(1) % u != 0) {
    throw std::invalid_argument("head all-to-all: " + std::to_string(x.size(1)) +
                                " tokens do not split over " + std::to_string(u) + " ranks");
  }
  std::vector<at::Tensor> chunks;
  for (const auto& part : x.chunk(u, 1)) chunks.push_back(part.contiguous());
  return at::cat(exchange_chunks(chunks, group), 2);
}

Communicator* group_of(torch::autograd::AutogradContext* ctx) {
  return reinterpret_cast<Communicator*>(ctx->saved_data["group"].toInt());
}

class HeadsToTokens : public torch::autograd::Function<HeadsToTokens> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            Communicator* group) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    return heads_to_tokens_impl(x, *group);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return {tokens_to_heads_impl(grads[0].contiguous(), *group_of(ctx)), at::Tensor()};
  }
};

class TokensToHeads : public torch::autograd::Function<TokensToHeads> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            Communicator* group) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    return tokens_to_heads_impl(x, *group);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return {heads_to_tokens_impl(grads[0].contiguous(), *group_of(ctx)), at::Tensor()};
  }
};

}  // namespace

at::Tensor heads_to_tokens(const at::Tensor& x, Communicator& group) {
  return HeadsToTokens::apply(x, &group);
}

at::Tensor tokens_to_heads(const at::Tensor& x, Communicator& group) {
  return TokensToHeads::apply(x, &group);
}

at::Tensor gather_tokens(const at::Tensor& x, Communicator& group) {
  const auto gathered = group.all_gather(x.contiguous());  // [u, batch, local, ...]
  return at::cat(gathered.unbind(0), 1);
}

}  // namespace sparsering::parallel
