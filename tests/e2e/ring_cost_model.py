"""bench/ring_cost_model.py: the model's invariants. One GPU exposes no communication; a
hierarchical ring never exposes more than the flat one over the same nodes and beats one GPU;
slower inter-node links never expose less; dense attention at 1M splits evenly over one node's
NVLink with nothing exposed; the shapes are those of their configs. Head parallelism (u): u = 1
reproduces the committed predictions exactly; the all-to-all grows with u and has the expected
bytes; u = cp runs no ring step; a flat ring runs cp/u steps of u times the compute on the same
bytes, and a hierarchical one hides its inter-node hop behind the same compute for every u;
K/V heads are repeated u / gcd(kv, u) times when u does not divide the kv heads; an invalid u is
refused; the best-split table picks a valid u no slower than u = 1."""
import importlib.util
import json
import os
import subprocess
import sys

from e2e_common import arguments, check, temporary_directory

_, source = arguments()
script = os.path.join(source, "bench", "ring_cost_model.py")
spec = importlib.util.spec_from_file_location("ring_cost_model", script)
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

# u = 1 reproduces the committed predictions bit for bit. They were made with head dim 128 for
# the 1.1B model (its head dim is 64), so the shape is set back for them.
legacy = model.LLAMA_1B._replace(head_dim=128)
legacy = legacy._replace(other_s_per_token=model.measured_other_s_per_token(legacy))
with open(os.path.join(source, "bench", "results", "ring_cost_model_2026-11-23.json")) as f:
    committed = json.load(f)
inputs = committed["inputs"]
setups = {"one node": (1, False), "flat, across nodes": (inputs["nodes"], False),
          "hierarchical": (inputs["nodes"], True)}
check(len(committed["rows"]) == 18, "the committed predictions have 18 rows")
for row in committed["rows"]:
    nodes, hierarchical = setups[row["ring"]]
    tflops = model.DENSE_TFLOPS if row["attention"] == "dense" else model.SPARSE_TFLOPS
    step, exposed = model.step_time(row["tokens"], row["density"], tflops, nodes,
                                    inputs["gpus_per_node"], inputs["intra_gbs"],
                                    inputs["inter_gbs"], hierarchical, 1, legacy)
    check(step == row["step_s"] and exposed / step == row["exposed_fraction"],
          f"u=1 changed the prediction {row}: {step} s, exposed {exposed / step}")

shapes = (model.LLAMA_1B, model.QWEN_3B, model.LLAMA3_8B)
# The shapes are those of their configs (head dim = hidden / heads).
for shape, config in zip(shapes, ("llama_1b", "qwen2_5_3b_shape", "llama3_8b_shape")):
    with open(os.path.join(source, "configs", config + ".pbtxt")) as f:
        fields = dict(line.split()[:2] for line in f if line.strip().startswith(
            ("num_layers:", "hidden_size:", "num_heads:", "num_kv_heads:", "ffn_hidden_size:",
             "vocab_size:")))
    want = [int(fields[k + ":"]) for k in ("num_layers", "hidden_size", "num_heads",
                                           "num_kv_heads", "ffn_hidden_size", "vocab_size")]
    have = [shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.ffn, shape.vocab]
    check(have == want and shape.head_dim * shape.heads == shape.hidden,
          f"{shape.name} is not configs/{config}.pbtxt: {have} {shape.head_dim} vs {want}")
for shape in shapes:
    valid = [u for u in model.SPLITS if model.split_error(shape, u, 8) is None]
    check(valid == [1, 2, 4, 8], f"{shape.name}: every u of 1, 2, 4, 8 splits it over 8 GPUs")
    a2a = [model.all_to_all_seconds(shape, 1048576, 16, u, 370) for u in valid]
    check(a2a[0] == 0.0 and all(x < y for x, y in zip(a2a, a2a[1:])),
          f"{shape.name}: the all-to-all must start at 0 for u=1 and grow with u: {a2a}")
    # With unbounded links nothing is exposed, so u only regroups the same attention work.
    free = [model.step_time(1048576, 0.01, model.SPARSE_TFLOPS, 2, 8, float("inf"),
                            float("inf"), True, u, shape) for u in valid]
    check(all(abs(s - free[0][0]) <= 1e-12 * free[0][0] and e == 0.0 for s, e in free),
          f"{shape.name}: with free links every u must take the same time: {free}")

# u = cp: pure Ulysses, no ring step; only the all-to-all is exposed, whatever the ring.
ring_passes = []
plain_exposed_per_pass = model.exposed_per_pass
model.exposed_per_pass = lambda *a: ring_passes.append(a) or plain_exposed_per_pass(*a)
for shape in shapes:
    for hierarchical, inter in ((False, 45), (True, 45), (True, 1)):
        step, exposed = model.step_time(2097152, 0.005, model.SPARSE_TFLOPS, 1, 8, 370, inter,
                                        hierarchical, 8, shape)
        a2a = model.all_to_all_seconds(shape, 2097152, 8, 8, 370)
        check(exposed == a2a > 0.0, f"{shape.name}: u=cp must expose exactly its all-to-all")
check(not ring_passes, f"u=cp ran {len(ring_passes)} ring passes")
check(model.step_time(1048576, 1.0, model.DENSE_TFLOPS, 2, 8, 370, 45, True)[1] == 0.0 and
      ring_passes, "u=1 over 2 nodes runs its ring")
model.exposed_per_pass = plain_exposed_per_pass

# A flat ring across nodes with u dividing the kv heads: cp/u steps of u times the compute on the
# same bytes, so its ring exposure at 1/u of the inter-node bandwidth is that of u=1.
shape = model.LLAMA3_8B
for u in (2, 4, 8):
    check(model.shard_bytes(shape, 1048576, 32 // u, u, True) ==
          model.shard_bytes(shape, 1048576, 32, 1, True), f"u={u}: a ring step's bytes changed")
    ring = [model.step_time(1048576, 0.01, model.SPARSE_TFLOPS, 4, 8, 370, 45 / v, False, v,
                            shape)[1] - model.all_to_all_seconds(shape, 1048576, 32, v, 370)
            for v in (1, u)]
    check(ring[0] > 0.0 and abs(ring[1] - ring[0]) <= 1e-9 * ring[0],
          f"u={u}: flat-ring exposure at 45/u GB/s {ring[1]} differs from u=1 {ring[0]}")
# The hierarchical ring of u-groups has gpus_per_node / u ranks per node. While NVLink keeps up
# (t_intra <= u t_c), the inter-node hop hides behind gpus_per_node / u steps of u times the
# compute, i.e. the compute of u = 1, so the exposure of that ring does not depend on u. Here
# (2 x 8 GPUs, 1M, density 0.008, 10 GB/s) a forward step computes 1.4 ms against 0.7 ms over
# NVLink and 27 ms over the inter-node link.
ring = [model.step_time(1048576, 0.008, model.SPARSE_TFLOPS, 2, 8, 370, 10, True, u, shape)[1] -
        model.all_to_all_seconds(shape, 1048576, 16, u, 370) for u in (1, 2, 4)]
check(ring[0] > 0.0 and all(abs(r - ring[0]) <= 1e-9 * ring[0] for r in ring),
      f"hierarchical ring exposure must not depend on u here: {ring}")
# One ring rank per node: the hierarchical ring is the flat one.
one_per_node = [model.step_time(1048576, 0.001, model.SPARSE_TFLOPS, 4, 8, 370, 10,
                                hierarchical, 8) for hierarchical in (True, False)]
check(one_per_node[0][1] > 0.0 and one_per_node[0] == one_per_node[1],
      f"with u = GPUs per node the hierarchical ring must equal the flat one: {one_per_node}")

# GQA: Qwen2.5-3B has 2 kv heads of 16; u = 4 and 8 do not divide them, so each K/V head is
# repeated u / gcd(2, u) = u / 2 times (to u heads, one per rank), and each ring step carries
# u / 2 times the K/V bytes of u = 1; u = 2 divides them and repeats nothing.
qwen = model.QWEN_3B
check(model.shard_bytes(qwen, 1048576, 32, 2, False) == model.shard_bytes(qwen, 1048576, 64, 1,
                                                                         False),
      "u=2 divides Qwen's kv heads: no repetition")
for u in (4, 8):
    check(model.kv_heads_per_rank(qwen, u) == 1, f"u={u}: Qwen's K/V must repeat to u heads")
    check(model.shard_bytes(qwen, 1048576, 64 // u, u, False) ==
          u // 2 * model.shard_bytes(qwen, 1048576, 64, 1, False), f"u={u}: repeated K/V bytes")
# All-to-all per step: 36 layers x 3 passes, each sending (u-1)/u of q, k, v and the output
# (dO, dQ, dK, dV) in bf16, here 1M tokens over 8 GPUs; K/V of 2 heads with u = 2, repeated to 4
# with u = 4.
for u, kv_heads in ((2, 2), (4, 4)):
    expected = 36 * 3 * (1048576 / 8) * (2 * 16 + 2 * kv_heads) * 128 * 2 * (u - 1) / u / 370e9
    a2a = model.all_to_all_seconds(qwen, 1048576, 8, u, 370)
    check(abs(a2a - expected) <= 1e-12 * expected, f"Qwen u={u} all-to-all {a2a} s, not {expected}")

# An invalid u is refused: by the model, and by the command with one line and a non-zero exit.
for shape, u, per_node in ((model.LLAMA_1B, 3, 8), (model.LLAMA_1B, 16, 8),
                           (model.QWEN_3B, 32, 32), (model.LLAMA_1B, 0, 8)):
    try:
        model.step_time(1048576, 1.0, model.DENSE_TFLOPS, 1, per_node, 370, 45, False, u, shape)
        check(False, f"u={u} over {per_node} GPUs per node accepted for {shape.name}")
    except ValueError:
        pass
with temporary_directory() as directory:
    output = os.path.join(directory, "model.json")
    for options in (["--ulysses", "3"], ["--ulysses", "8"], ["--shape", "3b", "--ulysses", "32",
                                                            "--gpus-per-node", "32"]):
        process = subprocess.run([sys.executable, script, *options, "--json", output],
                                 capture_output=True, text=True, timeout=120)
        check(process.returncode != 0 and process.stdout == "" and
              len(process.stderr.strip().splitlines()) == 1 and "must divide" in process.stderr
              and not os.path.exists(output), f"{options} must be refused in one line",
              process)

    # The command's tables: every shape, node count, context, attention and ring, each with a
    # valid best u no slower than u = 1; over one node nothing is exposed at u = 1, so u > 1 only
    # adds its all-to-all.
    process = subprocess.run([sys.executable, script, "--json", output], capture_output=True,
                             text=True, timeout=120)
    check(process.returncode == 0, "ring_cost_model.py failed", process)
    with open(output) as f:
        splits = json.load(f)["best_split"]
    check(len(splits) == 3 * 5 * 4 * 2 * 2, f"{len(splits)} best-split rows")
    names = {shape.name: shape for shape in shapes}
    for row in splits:
        u, shape = row["best_u"], names[row["shape"]]
        check(model.split_error(shape, u, 8) is None and
              row["step_s"] == min(row["step_s_by_u"].values()) <= row["u1_step_s"] and
              row["step_s_by_u"]["1"] == row["u1_step_s"], f"best split {row}")
        check(row["nodes"] > 1 or u == 1, f"one node must keep u = 1: {row}")
print("PASSED")
