#include "trainer/model/activation_checkpoint.h"

#include <torch/autograd.h>

namespace sparsering::trainer {
namespace {

struct Recompute : torch::CustomClassHolder {
  BlockFunction function;
  std::function<void()> after_backward;
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  // Autograd runs forward with gradients off, so the block's activations are not kept.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const BlockFunction& forward_function,
                            const c10::intrusive_ptr<Recompute>& recompute) {
    ctx->save_for_backward({input});
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(recompute);
    return forward_function(input);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto recompute =
        c10::static_intrusive_pointer_cast<Recompute>(ctx->saved_data["recompute"].toCapsule());
    auto input = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    at::Tensor output;
    {
      torch::AutoGradMode enable(true);
      output = recompute->function(input);
    }
    torch::autograd::backward({output}, {grads[0]});
    if (recompute->after_backward) recompute->after_backward();
    return {input.grad(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor checkpoint(BlockFunction forward, BlockFunction recompute, const at::Tensor& input,
                      std::function<void()> after_backward) {
  auto holder = c10::make_intrusive<Recompute>();
  holder->function = std::move(recompute);
  holder->after_backward = std::move(after_backward);
  return CheckpointFunction::apply(input, forward, holder);
}

}  // namespace sparsering::trainer
