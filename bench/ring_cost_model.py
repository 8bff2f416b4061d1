#!/usr/bin/env python3
"""Cost model of a training step of the ~1B model over a ring of GPUs: step time and exposed
communication from single-GPU measurements and link bandwidths, flat and hierarchical rings.

Per layer, each GPU holds S/P tokens. Its ring takes P steps (forward) and P steps (backward); at
each step it attends its queries to the key/value shard that is there while the next shard moves.
With the balanced layout every (query shard, key shard) pair holds 1/P^2 of the causal work, so a
step computes t_c = attention time of the whole sequence / P^2. A flat ring moves every shard over
the slowest link on the way, so a step lasts max(t_c, shard / bandwidth of that link). The
hierarchical ring (nodes x gpus_per_node) runs inner rings over NVLink while the next node's
shard crosses the inter-node link during a whole inner ring, so inter-node time hides behind
gpus_per_node steps. Backward moves K/V (bf16) plus the dK/dV accumulators (fp32) each step.
Everything that is not ring attention (projections, MLP, loss, optimizer; gradient all-reduce not
modelled) scales with the tokens per GPU, at the rate measured on one GPU.

Inputs default to this repository's measurements (bench/RESULTS.md, one H100) and nominal links:
NVLink 4 at ~370 GB/s achievable per direction, InfiniBand NDR 400 Gb/s at ~45 GB/s per GPU.

  ring_cost_model.py [--tokens 524288,1048576,2097152] [--gpus-per-node 4] [--nodes 2] [--json F]
"""
import argparse
import json

# ~1.1B model of configs/llama_1b.pbtxt.
LAYERS, HEADS, KV_HEADS, HEAD_DIM = 16, 32, 8, 128
# One H100, bench/RESULTS.md: executed-pair rates of the attention kernels (TF/s, forward+backward
# counted as 3.5 x forward) and the rest of a training step per token.
SPARSE_TFLOPS = 196.0  # ours, forward+backward on executed pairs
DENSE_TFLOPS = 544.0   # cuDNN, forward+backward
# Attention work in forward units: forward 1, the activation-checkpoint recomputation 1 more,
# backward 2.5.
FORWARD, RECOMPUTE, BACKWARD = 1.0, 1.0, 2.5
UNITS = FORWARD + RECOMPUTE + BACKWARD


def attention_seconds(tokens, density, tflops):
    """Attention of all layers over the whole sequence on one GPU, per training step."""
    pairs = tokens * tokens / 2 * HEADS * density
    return LAYERS * 4 * pairs * HEAD_DIM * UNITS / (tflops * 1e12)


# Non-attention seconds per token: the dense 32K step (1/21,152 s per token, bench/RESULTS.md)
# minus its attention at the cuDNN rate.
OTHER_S_PER_TOKEN = 1 / 21152 - attention_seconds(32768, 1.0, DENSE_TFLOPS) / 32768


def shard_bytes(tokens, gpus, backward):
    """Bytes one GPU sends per ring step: K and V in bf16, plus dK and dV in fp32 backward."""
    elements = 2 * tokens / gpus * KV_HEADS * HEAD_DIM
    return elements * 2 + (elements * 4 if backward else 0)


def exposed_per_pass(t_c, size, gpus, nodes, gpus_per_node, intra_gbs, inter_gbs, hierarchical):
    """Communication time not hidden behind compute in one ring pass of one layer."""
    t_intra, t_inter = size / (intra_gbs * 1e9), size / (inter_gbs * 1e9)
    if nodes == 1:
        return gpus * max(0.0, t_intra - t_c)
    if not hierarchical:  # every step waits for the hops that cross nodes
        return gpus * max(0.0, t_inter - t_c)
    inner_ring = gpus_per_node * max(t_c, t_intra)
    return (nodes * gpus_per_node * max(0.0, t_intra - t_c) +
            (nodes - 1) * max(0.0, t_inter - inner_ring))


def step_time(tokens, density, tflops, nodes, gpus_per_node, intra_gbs, inter_gbs, hierarchical):
    """(seconds per training step, exposed communication seconds)."""
    gpus = nodes * gpus_per_node
    attention = attention_seconds(tokens, density, tflops)
    exposed = 0.0
    if gpus > 1:
        # Per layer and ring step, each GPU computes 1/P^2 of the layer's attention.
        unit = attention / LAYERS / UNITS / (gpus * gpus)
        for units, backward in ((FORWARD, False), (RECOMPUTE, False), (BACKWARD, True)):
            exposed += LAYERS * exposed_per_pass(unit * units, shard_bytes(tokens, gpus, backward),
                                                 gpus, nodes, gpus_per_node, intra_gbs,
                                                 inter_gbs, hierarchical)
    return attention / gpus + OTHER_S_PER_TOKEN * tokens / gpus + exposed, exposed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--json", default="ring_cost_model.json")
    args = parser.parse_args()
    rows = []
    print(f"{'tokens':>8s} {'attention':9s} {'density':>7s} {'ring':22s} {'GPUs':>4s} "
          f"{'step s':>8s} {'tokens/s':>9s} {'exposed comm':>12s}")
    for tokens in (int(t) for t in args.tokens.split(",")):
        sparse_density = args.sparse_density * (262144 / tokens
                                                if args.budgets == "absolute" else 1.0)
        for kind, density, tflops in (("dense", 1.0, DENSE_TFLOPS),
                                      ("sparse", min(1.0, sparse_density), SPARSE_TFLOPS)):
            setups = [("one node", 1, args.gpus_per_node, False),
                      ("flat, across nodes", args.nodes, args.gpus_per_node, False),
                      ("hierarchical", args.nodes, args.gpus_per_node, True)]
            for name, nodes, per_node, hierarchical in setups:
                gpus = nodes * per_node
                step, exposed = step_time(tokens, density, tflops, nodes, per_node,
                                          args.intra_gbs, args.inter_gbs, hierarchical)
                rows.append({"tokens": tokens, "attention": kind, "density": density,
                             "ring": name, "gpus": gpus,
                             "step_s": step, "tokens_per_s": tokens / step,
                             "exposed_fraction": exposed / step})
                print(f"{tokens:8d} {kind:9s} {density:7.4f} {name:22s} {gpus:4d} {step:8.2f} "
                      f"{tokens / step:9.0f} {100 * exposed / step:11.1f}%")
    with open(args.json, "w") as f:
        json.dump({"inputs": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
