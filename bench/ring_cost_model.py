#!/usr/bin/env python3
"""Cost model of a training step over a ring of GPUs with head-parallel (Ulysses) groups: step
time and exposed communication from single-GPU measurements and link bandwidths, flat and
hierarchical rings, for the ~1.1B model and the Qwen2.5-3B and Llama-3-8B shapes.

Per layer, each of the P GPUs holds S/P tokens of every head. Head-parallel degree u splits the
context-parallel group into u x (P/u): inside each u-group (u consecutive GPUs of one node, over
NVLink) an all-to-all turns q, k and v from [S/P tokens, H heads] into [u S/P tokens, H/u heads]
and the attention output back after; the ring then runs over R = P/u ranks, one per u-group
position, each holding S/R tokens of H/u heads. u = 1 is the plain ring, u = P pure Ulysses (no
ring steps). The ring takes R steps (forward) and R steps (backward); at each step a rank attends
its queries to the key/value shard that is there while the next shard moves. With the balanced
layout every (query shard, key shard) pair holds 1/R^2 of the causal work of its H/u heads, so a
step computes t_c = attention time of the whole sequence / (R^2 u). A flat ring moves every shard
over the slowest link on the way, so a step lasts max(t_c, shard / bandwidth of that link). The
hierarchical ring (nodes x (gpus_per_node / u)) runs inner rings over NVLink while the next
node's shard crosses the inter-node link during a whole inner ring, so inter-node time hides
behind gpus_per_node / u steps. Backward moves K/V (bf16) plus the dK/dV accumulators (fp32) each
step.

GQA: when u divides the kv heads, K/V travel unrepeated (kv_heads/u heads per rank), so a ring
step carries the bytes of u = 1 while computing u times more. When it does not, each K/V head is
repeated u / gcd(kv_heads, u) times before the all-to-all (as parallel/head_all_to_all.h says),
which multiplies their all-to-all and ring traffic by that factor.

The all-to-alls sit between the projections and attention, so they are counted as exposed. Each
pass of a layer (forward, activation-checkpoint recomputation, backward) runs four: q, k, v in and
the output back (backward: dO in, dQ, dK, dV back), bf16; each GPU sends (u-1)/u of every tensor
over NVLink. Pattern estimation is not modelled: its work per GPU is the same for every u (H/u
heads against u times the keys), and with u = P its cross-rank reductions vanish.

Everything that is not ring attention (projections, MLP, loss, optimizer; gradient all-reduce not
modelled) scales with the tokens per GPU, at the rate measured on one GPU for the 1.1B model and
scaled by matmul parameters for the other shapes. Memory is not modelled.

Inputs default to this repository's measurements (bench/RESULTS.md, one H100) and nominal links:
NVLink 4 at ~370 GB/s achievable per direction, InfiniBand NDR 400 Gb/s at ~45 GB/s per GPU.

  ring_cost_model.py [--shape 1b|3b|8b] [--ulysses U] [--tokens 524288,1048576,2097152]
                     [--gpus-per-node 4] [--nodes 2] [--json F]

prints the ring table of one shape and u, then for every shape the fastest head-parallel degree u
in {1, 2, 4, 8} (dividing the heads and the GPUs per node) over --split-nodes nodes (default 1 to
16) of --split-gpus-per-node GPUs (8) and --split-tokens contexts (512K to 4M), dense and sparse,
hierarchical and flat ring, against u = 1; --json writes both tables.
"""
import argparse
import collections
import json
import math
import sys

# One H100, bench/RESULTS.md: executed-pair rates of the attention kernels (TF/s, forward+backward
# counted as 3.5 x forward) and the rest of a training step per token. Taken as the rates of
# every head dim and of every u (H/u heads over u times the tokens).
SPARSE_TFLOPS = 196.0  # ours, forward+backward on executed pairs
DENSE_TFLOPS = 544.0   # cuDNN, forward+backward
# Attention work in forward units: forward 1, the activation-checkpoint recomputation 1 more,
# backward 2.5.
FORWARD, RECOMPUTE, BACKWARD = 1.0, 1.0, 2.5
UNITS = FORWARD + RECOMPUTE + BACKWARD
PASSES = ((FORWARD, False), (RECOMPUTE, False), (BACKWARD, True))
SPLITS = (1, 2, 4, 8)

Shape = collections.namedtuple(
    "Shape", "name layers hidden heads kv_heads head_dim ffn vocab other_s_per_token")


def attention_seconds(shape, tokens, density, tflops):
    """Attention of all layers over the whole sequence on one GPU, per training step."""
    pairs = tokens * tokens / 2 * shape.heads * density
    return shape.layers * 4 * pairs * shape.head_dim * UNITS / (tflops * 1e12)


def measured_other_s_per_token(shape):
    """Non-attention seconds per token of the 1.1B model: the dense 32K step (1/21,152 s per
    token, bench/RESULTS.md) minus its attention at the cuDNN rate."""
    return 1 / 21152 - attention_seconds(shape, 32768, 1.0, DENSE_TFLOPS) / 32768


def matmul_parameters(shape):
    """Weights every token multiplies: q, k, v, o, the gated MLP and the output head."""
    per_layer = (2 * shape.hidden * shape.heads * shape.head_dim +
                 2 * shape.hidden * shape.kv_heads * shape.head_dim + 3 * shape.hidden * shape.ffn)
    return shape.layers * per_layer + shape.hidden * shape.vocab


# configs/llama_1b.pbtxt: the measured model, head dim 64 = hidden / heads (the predictions of
# 2026-11-23, bench/results/ring_cost_model_2026-11-23.*, took 128: twice its attention work and
# K/V bytes).
LLAMA_1B = Shape("1.1B", 16, 2048, 32, 8, 64, 8192, 32000, None)
LLAMA_1B = LLAMA_1B._replace(other_s_per_token=measured_other_s_per_token(LLAMA_1B))


def scaled_shape(*fields):
    """A shape whose non-attention time per token is the 1.1B model's scaled by matmul FLOPs
    (same achieved rate on the projections and the MLP)."""
    shape = Shape(*fields, None)
    return shape._replace(other_s_per_token=LLAMA_1B.other_s_per_token *
                          matmul_parameters(shape) / matmul_parameters(LLAMA_1B))


# configs/qwen2_5_3b_shape.pbtxt and configs/llama3_8b_shape.pbtxt.
QWEN_3B = scaled_shape("Qwen2.5-3B", 36, 2048, 16, 2, 128, 11008, 151936)
LLAMA3_8B = scaled_shape("Llama-3-8B", 32, 4096, 32, 8, 128, 14336, 128256)
SHAPES = {"1b": LLAMA_1B, "3b": QWEN_3B, "8b": LLAMA3_8B}


def split_error(shape, ulysses, gpus_per_node):
    """Why u cannot split this shape's heads inside a node, or None."""
    if ulysses < 1 or shape.heads % ulysses or gpus_per_node % ulysses:
        return (f"head-parallel degree u={ulysses} must divide the {shape.heads} heads of "
                f"{shape.name} and the {gpus_per_node} GPUs per node")
    return None


def kv_heads_per_rank(shape, ulysses):
    """K/V heads a rank attends with after the all-to-all. When u does not divide the kv heads,
    each is first repeated u / gcd(kv heads, u) times, as parallel/head_all_to_all.h does."""
    repeat = ulysses // math.gcd(shape.kv_heads, ulysses)
    return shape.kv_heads * repeat // ulysses


def shard_bytes(shape, tokens, ring, ulysses, backward):
    """Bytes one GPU sends per ring step: K and V in bf16, plus dK and dV in fp32 backward."""
    elements = 2 * tokens / ring * kv_heads_per_rank(shape, ulysses) * shape.head_dim
    return elements * 2 + (elements * 4 if backward else 0)


def all_to_all_seconds(shape, tokens, gpus, ulysses, intra_gbs):
    """Head all-to-alls of all layers and passes per training step, none hidden."""
    if ulysses == 1:
        return 0.0
    kv_heads = kv_heads_per_rank(shape, ulysses) * ulysses  # after any repetition
    # Per pass: q and the output (dO and dQ) of all heads, k and v (dK and dV) of the kv heads.
    elements = tokens / gpus * (2 * shape.heads + 2 * kv_heads) * shape.head_dim
    sent = elements * 2 * (ulysses - 1) / ulysses  # bf16; 1/u of it stays on the GPU
    return shape.layers * len(PASSES) * sent / (intra_gbs * 1e9)


def exposed_per_pass(t_c, size, gpus, nodes, gpus_per_node, intra_gbs, inter_gbs, hierarchical):
    """Communication time not hidden behind compute in one ring pass of one layer, for a ring of
    `gpus` ranks with `gpus_per_node` of them on each node."""
    t_intra, t_inter = size / (intra_gbs * 1e9), size / (inter_gbs * 1e9)
    if nodes == 1:
        return gpus * max(0.0, t_intra - t_c)
    # Every step waits for the hops that cross nodes; with one rank per node every hop does.
    if not hierarchical or gpus_per_node == 1:
        return gpus * max(0.0, t_inter - t_c)
    inner_ring = gpus_per_node * max(t_c, t_intra)
    return (nodes * gpus_per_node * max(0.0, t_intra - t_c) +
            (nodes - 1) * max(0.0, t_inter - inner_ring))


def step_time(tokens, density, tflops, nodes, gpus_per_node, intra_gbs, inter_gbs, hierarchical,
              ulysses=1, shape=LLAMA_1B):
    """(seconds per training step, exposed communication seconds: ring and all-to-all)."""
    error = split_error(shape, ulysses, gpus_per_node)
    if error:
        raise ValueError(error)
    gpus = nodes * gpus_per_node
    ring = gpus // ulysses
    attention = attention_seconds(shape, tokens, density, tflops)
    exposed = all_to_all_seconds(shape, tokens, gpus, ulysses, intra_gbs)
    if ring > 1:
        # Per layer and ring step, each GPU computes 1/R^2 of the layer's attention of H/u heads.
        unit = attention / shape.layers / UNITS / (ring * ring) / ulysses
        for units, backward in PASSES:
            exposed += shape.layers * exposed_per_pass(
                unit * units, shard_bytes(shape, tokens, ring, ulysses, backward), ring, nodes,
                gpus_per_node // ulysses, intra_gbs, inter_gbs, hierarchical)
    return attention / gpus + shape.other_s_per_token * tokens / gpus + exposed, exposed


def sparse_density(measured, tokens, budgets):
    """Attended / causal pairs at `tokens` from the density measured at 256K."""
    return min(1.0, measured * (262144 / tokens if budgets == "absolute" else 1.0))


def best_split(shape, tokens, density, tflops, nodes, gpus_per_node, intra_gbs, inter_gbs,
               hierarchical):
    """{u: (step seconds, exposed seconds)} over the valid u of SPLITS, and the fastest u."""
    times = {u: step_time(tokens, density, tflops, nodes, gpus_per_node, intra_gbs, inter_gbs,
                          hierarchical, u, shape)
             for u in SPLITS if split_error(shape, u, gpus_per_node) is None}
    return times, min(times, key=lambda u: times[u][0])


def context_name(tokens):
    return f"{tokens // 1048576}M" if tokens % 1048576 == 0 else f"{tokens // 1024}K"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b",
                        help="model of the ring table")
    parser.add_argument("--ulysses", type=int, default=1,
                        help="head-parallel degree u of the ring table; must divide the heads "
                             "and --gpus-per-node")
    parser.add_argument("--tokens", default="524288,1048576,2097152")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument("--sparse-density", type=float, default=0.044,
                        help="attended / causal pairs at 256K tokens (0.044 measured there with "
                             "absolute budgets of 2048 columns and 64 diagonals)")
    parser.add_argument("--budgets", choices=("absolute", "fraction"), default="absolute",
                        help="absolute: the same columns/diagonals at every length, so density "
                             "falls as 1/tokens; fraction: density stays")
    parser.add_argument("--intra-gbs", type=float, default=370.0)
    parser.add_argument("--inter-gbs", type=float, default=45.0)
    parser.add_argument("--split-nodes", default="1,2,4,8,16")
    parser.add_argument("--split-gpus-per-node", type=int, default=8)
    parser.add_argument("--split-tokens", default="524288,1048576,2097152,4194304")
    parser.add_argument("--json", default="ring_cost_model.json")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    error = split_error(shape, args.ulysses, args.gpus_per_node)
    if error:
        sys.exit(f"ring_cost_model.py: {error}")
    rows = []
    print(f"{shape.name}, u={args.ulysses}")
    print(f"{'tokens':>8s} {'attention':9s} {'density':>7s} {'ring':22s} {'GPUs':>4s} "
          f"{'step s':>8s} {'tokens/s':>9s} {'exposed comm':>12s}")
    for tokens in (int(t) for t in args.tokens.split(",")):
        density_sparse = sparse_density(args.sparse_density, tokens, args.budgets)
        for kind, density, tflops in (("dense", 1.0, DENSE_TFLOPS),
                                      ("sparse", density_sparse, SPARSE_TFLOPS)):
            setups = [("one node", 1, args.gpus_per_node, False),
                      ("flat, across nodes", args.nodes, args.gpus_per_node, False),
                      ("hierarchical", args.nodes, args.gpus_per_node, True)]
            for name, nodes, per_node, hierarchical in setups:
                gpus = nodes * per_node
                step, exposed = step_time(tokens, density, tflops, nodes, per_node,
                                          args.intra_gbs, args.inter_gbs, hierarchical,
                                          args.ulysses, shape)
                rows.append({"tokens": tokens, "attention": kind, "density": density,
                             "ring": name, "gpus": gpus, "ulysses": args.ulysses,
                             "step_s": step, "tokens_per_s": tokens / step,
                             "exposed_fraction": exposed / step})
                print(f"{tokens:8d} {kind:9s} {density:7.4f} {name:22s} {gpus:4d} {step:8.2f} "
                      f"{tokens / step:9.0f} {100 * exposed / step:11.1f}%")

    per_node = args.split_gpus_per_node
    splits = []
    print(f"\nfastest head-parallel degree u, {per_node} GPUs per node: step s with the best u "
          f"and with u=1, exposed communication (all-to-all included) with the best u")
    print(f"{'':38s} {'hierarchical ring':^31s}   {'flat ring':^31s}")
    print(f"{'shape':10s} {'nodes':>5s} {'GPUs':>4s} {'context':>7s} {'attention':9s}" +
          f"   {'u':>2s} {'step s':>8s} {'u=1 s':>8s} {'exposed':>8s}" * 2)
    for key in ("1b", "3b", "8b"):
        model = SHAPES[key]
        for nodes in (int(n) for n in args.split_nodes.split(",")):
            for tokens in (int(t) for t in args.split_tokens.split(",")):
                density_sparse = sparse_density(args.sparse_density, tokens, args.budgets)
                for kind, density, tflops in (("dense", 1.0, DENSE_TFLOPS),
                                              ("sparse", density_sparse, SPARSE_TFLOPS)):
                    line = (f"{model.name:10s} {nodes:5d} {nodes * per_node:4d} "
                            f"{context_name(tokens):>7s} {kind:9s}")
                    for ring in ("hierarchical", "flat"):
                        times, best = best_split(model, tokens, density, tflops, nodes,
                                                 per_node, args.intra_gbs, args.inter_gbs,
                                                 ring == "hierarchical")
                        step, exposed = times[best]
                        all_to_all = all_to_all_seconds(model, tokens, nodes * per_node, best,
                                                        args.intra_gbs)
                        splits.append({"shape": model.name, "nodes": nodes,
                                       "gpus": nodes * per_node, "tokens": tokens,
                                       "attention": kind, "density": density, "ring": ring,
                                       "best_u": best, "step_s": step,
                                       "u1_step_s": times[1][0],
                                       "exposed_fraction": exposed / step,
                                       "all_to_all_fraction": all_to_all / step,
                                       "step_s_by_u": {str(u): t[0] for u, t in times.items()}})
                        line += (f"   {best:2d} {step:8.2f} {times[1][0]:8.2f} "
                                 f"{100 * exposed / step:7.1f}%")
                    print(line)
    with open(args.json, "w") as f:
        json.dump({"inputs": vars(args), "rows": rows, "best_split": splits}, f, indent=1)


if __name__ == "__main__":
    main()
