"""`sparsering plan`: the per-rank memory of the two target shapes follows the sharding rules
(stage 0 holds 12 bytes of optimizer state per parameter on every rank; stage 3 with offload
keeps 12 bytes per parameter on the host, divided by the world size), the longest context grows with
the GPU's memory, and bad arguments are refused with one line."""
import os
import re

from e2e_common import arguments, check, run

binary, source = arguments()


def plan(config, *options):
    process = run([binary, "plan", "--config", os.path.join(source, "configs", config), *options],
                  binary)
    check(process.returncode == 0, f"plan {config} {options} failed", process)
    return process.stdout


def gib(text, label):
    match = re.search(re.escape(label) + r"\s+([0-9.]+) GiB", text)
    check(match is not None, f"no '{label}' line in:\n{text}")
    return float(match.group(1))


def parameters(text):
    return float(re.search(r"([0-9.]+)B parameters", text).group(1)) * 1e9


def longest(text):
    match = re.search(r"longest context in .*?: (\d+) tokens", text)
    return int(match.group(1)) if match else 0


llama = plan("llama3_8b_shape.pbtxt", "--world-size", "8", "--gpu-memory", "80")
p = parameters(llama)
check(abs(p - 8.03e9) < 0.01e9, f"Llama-3-8B shape has {p:.4g} parameters, expected 8.03e9")
host = gib(llama, "optimizer state (host)")
check(abs(host * 2**30 - 12 * p / 8) < 0.02 * 12 * p / 8,
      f"stage 3 + offload over 8 ranks: {host} GiB of host state, expected 12 x P / 8")
check(gib(llama, "optimizer state (GPU)") == 0, "offloaded state must not be on the GPU")
replicated = plan("llama3_8b_shape.pbtxt", "--world-size", "8", "--gpu-memory", "80", "--set",
                  "parallel.zero_stage=0", "--set", "optimizer.offload=NONE")
check(abs(gib(replicated, "optimizer state (GPU)") * 2**30 - 12 * p) < 0.02 * 12 * p,
      "stage 0 holds fp32 masters and both moments of every parameter")
check("leave no room" in replicated and longest(replicated) == 0,
      "the replicated 8B state cannot fit 80 GiB", None)
qwen_h100 = longest(plan("qwen2_5_3b_shape.pbtxt", "--gpu-memory", "80"))
qwen_h200 = longest(plan("qwen2_5_3b_shape.pbtxt", "--gpu-memory", "141"))
check(0 < qwen_h100 < qwen_h200, f"longest context {qwen_h100} on 80 GiB, {qwen_h200} on 141")


def total_and_reserved(config, tokens, gpu_gib, sets=()):
    text = plan(config, "--gpu-memory", str(gpu_gib), *sets, "--set",
                f"train.sequence_length={tokens}", "--set", f"model.max_context={tokens}")
    total = re.search(r"at \d+ tokens \(\d+ per rank\)\s+([0-9.]+) GiB", text)
    reserved = re.search(r"\(([0-9.]+) GiB reserved", text)
    check(total is not None and reserved is not None, f"no total or reserve in:\n{text}")
    return float(total.group(1)) + float(reserved.group(1))


# The longest context is the last multiple of 2 x cp x block (256 tokens here) whose planned
# total, with the reserve, fits the GPU.
# With loss_chunk_tokens=0 the loss's logits grow with the context too.
for config, gpu_gib, extra in (("qwen2_5_3b_shape.pbtxt", 80, ()),
                               ("llama3_8b_shape.pbtxt", 141, ()),
                               ("qwen2_5_3b_shape.pbtxt", 80, ("model.loss_chunk_tokens=0",))):
    sets = [item for value in extra for item in ("--set", value)]
    tokens = longest(plan(config, "--gpu-memory", str(gpu_gib), *sets))
    check(tokens > 0, f"{config} {extra}: no longest context on {gpu_gib} GiB")
    inside = total_and_reserved(config, tokens, gpu_gib, sets)
    beyond = total_and_reserved(config, tokens + 256, gpu_gib, sets)
    check(inside <= gpu_gib + 0.01 and beyond > gpu_gib - 0.01,
          f"{config} {extra}: longest context {tokens} plans {inside} GiB, {tokens + 256} plans "
          f"{beyond} GiB on a {gpu_gib} GiB GPU")
# A context that does not fit one GPU: the smallest context-parallel size that makes it fit.
text = plan("llama3_8b_shape.pbtxt", "--gpu-memory", "80", "--set", "train.sequence_length=524288")
match = re.search(r"they fit at parallel.context_parallel_size=(\d+)", text)
check(match is not None, f"no context-parallel suggestion for the 8B shape at 512K:\n{text}")
cp = int(match.group(1))


def fits(cp_size):
    return total_and_reserved("llama3_8b_shape.pbtxt", 524288, 80,
                              ["--set", f"parallel.context_parallel_size={cp_size}"]) <= 80.01


check(cp > 1 and fits(cp) and not fits(cp // 2),
      f"suggested context_parallel_size {cp}: fits {fits(cp)}, half of it fits {fits(cp // 2)}")
# The model's own limit caps the longest context where memory would hold more.
tiny = plan("tiny.pbtxt", "--gpu-memory", "80")
check(longest(tiny) == 4096 and "model.max_context" in tiny,
      f"tiny.pbtxt (max_context 4096) on 80 GiB:\n{tiny}")
process = run([binary, "plan", "--config", os.path.join(source, "configs", "qwen2_5_3b_shape.pbtxt"),
               "--world-size", "3", "--set", "parallel.context_parallel_size=2"], binary)
check(process.returncode == 2 and process.stderr.count("\n") == 1 and "--world-size" in
      process.stderr, "a world size that cp does not divide must be refused in one line",
      process)
print("PASSED")
