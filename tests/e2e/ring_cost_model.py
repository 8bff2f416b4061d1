"""bench/ring_cost_model.py: the model's invariants. One GPU exposes no communication; a
hierarchical ring never exposes more than the flat one over the same nodes and beats one GPU;
slower inter-node links never expose less; dense attention at 1M splits evenly over one node's
NVLink with nothing exposed."""
import importlib.util
import os

from e2e_common import arguments, check

_, source = arguments()
spec = importlib.util.spec_from_file_location(
    "ring_cost_model", os.path.join(source, "bench", "ring_cost_model.py"))
model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model)

for tokens in (524288, 2097152):
    for density, tflops in ((1.0, model.DENSE_TFLOPS), (0.01, model.SPARSE_TFLOPS)):
        one_step, one_exposed = model.step_time(tokens, density, tflops, 1, 1, 370, 45, False)
        check(one_exposed == 0.0, "one GPU has no ring traffic")
        for inter in (45, 12.5):
            flat = model.step_time(tokens, density, tflops, 2, 4, 370, inter, False)
            tree = model.step_time(tokens, density, tflops, 2, 4, 370, inter, True)
            check(tree[1] <= flat[1] + 1e-12, f"hierarchical exposes more at {tokens}, {inter}")
            check(tree[0] < one_step, "8 GPUs in a hierarchical ring must beat one")
        slow = model.step_time(tokens, density, tflops, 2, 4, 370, 5, False)[1]
        fast = model.step_time(tokens, density, tflops, 2, 4, 370, 400, False)[1]
        check(slow >= fast, "a slower inter-node link must not expose less")
dense1 = model.step_time(1048576, 1.0, model.DENSE_TFLOPS, 1, 1, 370, 45, False)[0]
dense4 = model.step_time(1048576, 1.0, model.DENSE_TFLOPS, 1, 4, 370, 45, False)
check(abs(dense4[0] - dense1 / 4) < 1e-6 * dense1 and dense4[1] == 0.0,
      "dense attention at 1M must split four ways over NVLink with nothing exposed")
print("PASSED")
