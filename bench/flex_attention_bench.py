#!/usr/bin/env python3
"""FlexAttention on exactly the vertical-slash masks that bench/attention_bench times.

attention_bench --pattern-dir DIR saves each length's patterns (chosen key columns and active block
diagonals per head): "scattered" (1024 sink columns, a 4096-token window, 1024 columns at random
positions) and "blockcols" (the same with the 1024 columns as 8 whole 128-column blocks, so the
token mask is also a block mask and FlexAttention computes no partial column blocks). This script rebuilds the same token-level mask for FlexAttention (causal, and
either the key column is chosen or the block pair lies on an active diagonal), gives it the block
structure directly (full blocks skip the mask function; blocks holding chosen columns or the
causal diagonal are partial), and times forward and forward+backward like attention_bench: bf16,
batch 1, random inputs, 1 warm-up then the mean of 3 runs. With --ours it also prints our sparse
kernel's times from attention_bench's JSON of the same run and the ratio.

  flex_attention_bench.py --pattern-dir DIR [--lengths 16384,131072] [--heads 32] [--head-dim 128]
                          [--block 128] [--ours attention_bench.json] [--json flex.json]
"""
import argparse
import json
import sys

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention


# attention_bench's row for each pattern.
OURS_METHOD = {"scattered": "ours_sparse", "blockcols": "ours_sparse_blockcols"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern-dir", required=True)
    parser.add_argument("--lengths", default="16384,131072")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--patterns", default="scattered,blockcols",
                        help="attention_bench's sparse patterns to time")
    parser.add_argument("--ours", help="attention_bench JSON of the same run, for ratios")
    parser.add_argument("--json", default="flex_attention_bench.json")
    return parser.parse_args()


def load_pattern(path, block, device):
    try:
        columns, block_diagonals = torch.load(path)
    except (OSError, RuntimeError) as error:
        sys.exit(f"flex_attention_bench: cannot read {path} ({error}); run attention_bench "
                 "--pattern-dir first")
    return columns.to(device), block_diagonals.to(device)


def block_mask_of(columns, block_diagonals, length, block):
    """The BlockMask and mask function of the pattern's token-level mask."""
    heads, blocks = block_diagonals.shape
    device = columns.device
    is_column = torch.zeros(heads, length, dtype=torch.bool, device=device)
    valid = columns >= 0
    is_column.scatter_(1, columns.clamp_min(0), valid)  # padding (-1) scatters False into 0
    is_column[:, 0] |= (columns == 0).any(1)

    q_block = torch.arange(blocks, device=device)
    offset = q_block[:, None] - q_block[None, :]  # [qb, kb]
    below = offset > 0
    active = block_diagonals[:, offset.clamp_min(0)] & below  # [h, qb, kb], whole blocks
    column_in_block = is_column.view(heads, blocks, block).any(-1)  # [h, kb]
    diagonal = torch.eye(blocks, dtype=torch.bool, device=device)
    partial = diagonal[None] | (below[None] & ~active & column_in_block[:, None, :])

    def to_indices(mask):
        counts = mask.sum(-1, dtype=torch.int32)
        indices = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return counts[None].contiguous(), indices[None].contiguous()

    kv_num, kv_indices = to_indices(partial)
    full_num, full_indices = to_indices(active)

    def mask_mod(b, h, q_idx, kv_idx):
        block_offset = (q_idx // block - kv_idx // block).clamp(min=0)
        keep = block_diagonals[h, block_offset] | is_column[h, kv_idx]
        return (kv_idx <= q_idx) & keep

    mask = BlockMask.from_kv_blocks(kv_num, kv_indices, full_num, full_indices,
                                    BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(length, length))
    causal_blocks = heads * blocks * (blocks + 1) / 2
    return mask, (active.sum().item() + partial.sum().item()) / causal_blocks


def time_ms(run, repeats=3):
    run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main():
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("flex_attention_bench: needs a GPU")
    ours = {}
    if args.ours:
        with open(args.ours) as f:
            for row in json.load(f)["rows"]:
                ours[(row["method"], row["tokens"])] = row
    compiled = torch.compile(flex_attention, dynamic=False)
    rows = []
    cases = [(p, int(n)) for n in args.lengths.split(",") for p in args.patterns.split(",")]
    for pattern, length in cases:
        columns, diagonals = load_pattern(
            f"{args.pattern_dir}/vertical_slash_{pattern}_{length}.pt", args.block, "cuda")
        mask, block_density = block_mask_of(columns, diagonals, length, args.block)
        torch.manual_seed(0)
        shape = (1, args.heads, length, args.head_dim)
        q, k, v, dout = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        with torch.no_grad():
            forward = time_ms(lambda: compiled(q, k, v, block_mask=mask))
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        forward_backward = time_ms(lambda: compiled(qg, kg, vg, block_mask=mask).backward(dout))
        row = {"method": "flex_attention", "pattern": pattern, "tokens": length,
               "computed_block_density": block_density,
               "forward_ms": forward, "forward_backward_ms": forward_backward}
        mine = ours.get((OURS_METHOD[pattern], length))
        if mine:
            row["ours_forward_backward_ms"] = mine["forward_backward_ms"]
            row["flex_over_ours"] = forward_backward / mine["forward_backward_ms"]
        rows.append(row)
        print(f"flex_attention {pattern:9s} {length:8d} blocks computed {block_density:.4f} "
              f"fwd {forward:8.2f} ms "
              f"fwd+bwd {forward_backward:8.2f} ms"
              + (f" | ours fwd+bwd {mine['forward_backward_ms']:.2f} ms, flex/ours "
                 f"{row['flex_over_ours']:.2f}x" if mine else ""), flush=True)
    with open(args.json, "w") as f:
        json.dump({"heads": args.heads, "head_dim": args.head_dim, "block_size": args.block,
                   "dtype": "bf16", "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
