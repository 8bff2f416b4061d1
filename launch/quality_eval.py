#!/usr/bin/env python3
"""Evaluates checkpoints exported by `sparsering export-hf` on long-context tasks (quality.sh).

  .venv/bin/python3 launch/quality_eval.py --corpus runs/quality/corpus \
      --model pretrain=runs/quality/hf/pretrain --model dense=runs/quality/hf/dense \
      --lengths 4096,8192,16384,32768 --output runs/quality/eval.json

Every model (a Hugging Face Llama directory) is loaded with transformers (sdpa attention, bf16
on a GPU, fp32 on the CPU) and measured on the same held-out data and the same samples:
  perplexity  per position bucket (0-4K, 4-8K, ...) over the first --ppl-length tokens of the
              held-out documents that long (--ppl-docs of them);
  suite       RULER-style tasks at each of --lengths, --samples sequences per task and length,
              the needle depths spread evenly over [0, 1]: single needle, multi-key needles,
              multi-value needles, variable tracking, common-word extraction, associative recall
              (launch/quality_tasks.py); haystacks are held-out text;
  heatmap     single-needle accuracy over --heatmap-depths depths x --lengths, --heatmap-samples
              sequences per cell (the suite's single-needle score is the mean of its row);
  probe       the training mix's own retrieval tasks (passkey, multi-key needles, key-value
              lookup, repeated random tokens) at each of --lengths, --samples sequences each, on
              held-out haystacks with new values: in distribution, so it shows whether a model
              learnt retrieval at all where the suite (other wording, keys and formats) shows
              nothing; with the accuracy, the answer tokens' mean loss, which falls before
              whole answers come out right.
Answers are scored by teacher-forced greedy decoding: an answer item is right when the model's
argmax is the reference token at every one of its positions (what greedy generation would
produce), a multi-item answer scores the fraction of items right. Writes --output (JSON) and
prints one line per model. Bad input ends with status 2 and one line.
"""
import json
import math
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality_tasks  # noqa: E402
from quality_tasks import OneLineParser, TaskError  # noqa: E402

HEADER = struct.Struct("<8sIIQQQ")


class UserError(Exception):
    pass


def log(message):
    print(f"quality_eval: {message}", flush=True)


def read_shard(path):
    """(tokens, document offsets) of a .srtok shard as numpy arrays."""
    import numpy as np
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise UserError(f"{path}: {error.strerror}; run the corpus stage first") from None
    if len(data) < HEADER.size or data[:8] != b"SRTOKENS":
        raise UserError(f"{path}: not a token shard; rebuild the corpus")
    _, _, width, count, documents, _ = HEADER.unpack_from(data)
    tokens = np.frombuffer(data, dtype=np.uint16 if width == 2 else np.uint32, count=count,
                           offset=HEADER.size)
    index = HEADER.size + count * width
    index += -index % 8
    offsets = np.frombuffer(data, dtype=np.uint64, count=documents + 1, offset=index)
    return tokens.astype(np.int64), offsets.astype(np.int64)


def build_samples(args, enc, stream):
    """{task: {length: [Sample]}} and the heatmap grid {length: {depth: [Sample]}}."""
    common_words = enc.single_token_words(quality_tasks.CWE_WORDS)
    suite, heatmap = {}, {}
    depths = quality_tasks.spread_depths(args.samples)
    for task, build in quality_tasks.EVAL_TASKS.items():
        if task == "single_needle":
            continue
        suite[task] = {}
        for length in args.lengths:
            samples = []
            for i, depth in enumerate(depths):
                rng = quality_tasks.rng_for(args.seed, task, length, i)
                extra = (common_words,) if task == "common_words" else ()
                samples.append(build(enc, stream, rng, length, depth, *extra))
            suite[task][length] = samples
    grid = quality_tasks.spread_depths(args.heatmap_depths)
    for length in args.lengths:
        heatmap[length] = {}
        for d, depth in enumerate(grid):
            heatmap[length][depth] = [
                quality_tasks.eval_single_needle(
                    enc, stream, quality_tasks.rng_for(args.seed, "needle", length, d, s),
                    length, depth)
                for s in range(args.heatmap_samples)]
    probe = {task: {length: [quality_tasks.probe_sample(
                        task, enc, stream, quality_tasks.rng_for(args.seed, "probe", task, length, i),
                        length) for i in range(args.samples)]
                    for length in args.lengths}
             for task in sorted(quality_tasks.TRAIN_TASKS)}
    for samples in [s for t in suite.values() for s in t.values()] + \
            [s for row in heatmap.values() for s in row.values()] + \
            [s for t in probe.values() for s in t.values()]:
        for sample in samples:
            assert len(sample.ids) == len(samples[0].ids), "samples of one cell differ in length"
    return suite, heatmap, probe, len(common_words)


class Evaluator:
    def __init__(self, args, hf_dir):
        import torch
        import transformers
        self.torch = torch
        self.device = args.device
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            self.model = transformers.LlamaForCausalLM.from_pretrained(
                hf_dir, dtype=dtype, attn_implementation="sdpa").to(self.device).eval()
        except (OSError, ValueError) as error:
            raise UserError(f"{hf_dir}: cannot load the model ({str(error).splitlines()[0]}); "
                            "export it with `sparsering export-hf`") from None
        self.tokens_per_batch = args.tokens_per_batch

    def hidden(self, batch):
        ids = self.torch.tensor(batch, dtype=self.torch.long, device=self.device)
        with self.torch.no_grad():
            return self.model.model(input_ids=ids).last_hidden_state

    def scored_logits(self, samples):
        """Per sample: its scored positions (sorted) and the logits that predict them."""
        torch = self.torch
        length = len(samples[0].ids)
        batch_size = max(1, self.tokens_per_batch // length)
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            hidden = self.hidden([s.ids for s in chunk])
            for row, sample in enumerate(chunk):
                positions = sorted({p for item in sample.items for p in item} |
                                   set(sample.set_items[0] if sample.set_items else []))
                index = torch.tensor([p - 1 for p in positions], device=self.device)
                with torch.no_grad():
                    logits = self.model.lm_head(hidden[row, index]).float()
                yield sample, positions, logits

    def score(self, samples):
        return self.score_and_answer_loss(samples)[0]

    def score_and_answer_loss(self, samples):
        """The score and the mean loss (nats) of the answer tokens: the loss shows retrieval
        being learnt (it falls below that of guessing the answer's tokens) long before whole
        answers come out right. Predictions are per sample {scored position: argmax id}."""
        predictions, total, count = [], 0.0, 0
        for sample, positions, logits in self.scored_logits(samples):
            predictions.append(dict(zip(positions, logits.argmax(-1).tolist())))
            targets = self.torch.tensor([sample.ids[p] for p in positions], device=self.device)
            total += self.torch.nn.functional.cross_entropy(logits, targets,
                                                            reduction="sum").item()
            count += len(positions)
        return score_samples(samples, predictions), total / max(count, 1)

    def perplexity(self, sequences, bucket):
        torch = self.torch
        length = len(sequences[0])
        sums = [0.0] * math.ceil((length - 1) / bucket)
        counts = [0] * len(sums)
        for sequence in sequences:
            hidden = self.hidden([sequence])[0]
            targets = torch.tensor(sequence[1:], device=self.device)
            for begin in range(0, length - 1, 4096):
                end = min(length - 1, begin + 4096)
                with torch.no_grad():
                    logits = self.model.lm_head(hidden[begin:end]).float()
                    nll = torch.nn.functional.cross_entropy(logits, targets[begin:end],
                                                            reduction="none").double().cpu()
                # The token at position p + 1 is predicted from position p.
                positions = torch.arange(begin + 1, end + 1)
                for b in range(len(sums)):
                    mask = (positions >= b * bucket) & (positions < (b + 1) * bucket)
                    sums[b] += nll[mask].sum().item()
                    counts[b] += int(mask.sum())
        return [{"start": b * bucket, "end": min(length, (b + 1) * bucket),
                 "loss": sums[b] / counts[b], "perplexity": math.exp(sums[b] / counts[b]),
                 "tokens": counts[b]} for b in range(len(sums)) if counts[b]]


def score_samples(samples, predictions):
    """Mean score of `samples` (each in [0, 1]) given per sample {position: argmax id}."""
    scores = []
    for sample, predicted in zip(samples, predictions):
        items = [all(predicted[p] == sample.ids[p] for p in item) for item in sample.items]
        if sample.set_items:
            positions, allowed = sample.set_items
            remaining = set(allowed)
            for p in positions:  # any target not given earlier in the (reference) answer
                items.append(predicted[p] in remaining)
                remaining.discard(sample.ids[p])
        scores.append(sum(items) / len(items))
    return sum(scores) / len(scores)


def kilo(tokens):
    return f"{tokens // 1024}K" if tokens and tokens % 1024 == 0 else str(tokens)


def parse_lengths(text):
    try:
        lengths = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--lengths {text}: give comma-separated token counts") from None
    if not lengths or lengths[0] < 128:
        raise UserError(f"--lengths {text}: give lengths >= 128")
    return lengths


def evaluate(args):
    args.lengths = parse_lengths(args.lengths)
    models = []
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"--model {item}: give NAME=DIR of a Hugging Face model directory "
                            "(config.json + safetensors)")
        models.append((name, path))
    try:
        import torch
        from tokenizers import Tokenizer
    except ImportError as error:
        raise UserError(f"{error}; run launch/setup.sh (torch, tokenizers, transformers)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is visible; use --device cpu")
    tokenizer_path = os.path.join(args.corpus, "tokenizer.json")
    if not os.path.isfile(tokenizer_path):
        raise UserError(f"{tokenizer_path}: missing; run the corpus stage first")
    enc = quality_tasks.Encoder(Tokenizer.from_file(tokenizer_path))
    tokens, offsets = read_shard(os.path.join(args.corpus, "heldout", "shard_00000.srtok"))
    stream = tokens.tolist()

    start = time.monotonic()
    suite, heatmap, probe, n_common = build_samples(args, enc, stream)
    ppl_length = args.ppl_length or args.lengths[-1]
    long_docs = [(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])
                 if b - a >= ppl_length]
    if long_docs:
        ppl_source = f"held-out documents of >= {ppl_length} tokens"
        ppl_sequences = [stream[a:a + ppl_length] for a, _ in long_docs[:args.ppl_docs]]
    else:  # no document is that long: consecutive windows of the held-out stream
        if len(stream) < ppl_length:
            raise UserError(f"the held-out documents hold {len(stream)} tokens, fewer than "
                            f"--ppl-length {ppl_length}; use a larger corpus")
        ppl_source = "windows of the concatenated held-out documents (none is long enough)"
        count = min(args.ppl_docs, len(stream) // ppl_length)
        ppl_sequences = [stream[i * ppl_length:(i + 1) * ppl_length] for i in range(count)]
    log(f"{sum(len(v) for t in suite.values() for v in t.values())} suite, "
        f"{sum(len(v) for r in heatmap.values() for v in r.values())} heatmap and "
        f"{sum(len(v) for t in probe.values() for v in t.values())} probe sequences, "
        f"{len(ppl_sequences)} perplexity sequences of {ppl_length} ({ppl_source}); "
        f"device {args.device} ({time.monotonic() - start:.0f} s)")

    results = {"settings": {"lengths": args.lengths, "samples": args.samples,
                            "heatmap_depths": quality_tasks.spread_depths(args.heatmap_depths),
                            "heatmap_samples": args.heatmap_samples, "seed": args.seed,
                            "ppl_length": ppl_length, "ppl_sequences": len(ppl_sequences),
                            "ppl_source": ppl_source, "bucket_tokens": args.bucket,
                            "device": args.device, "common_word_vocabulary": n_common,
                            "scoring": "teacher-forced greedy exact match per answer item"},
               "models": {}}
    for name, path in models:
        began = time.monotonic()
        evaluator = Evaluator(args, path)
        result = {"hf_dir": path}
        result["perplexity"] = evaluator.perplexity(ppl_sequences, args.bucket)
        grid = quality_tasks.spread_depths(args.heatmap_depths)
        result["heatmap"] = {
            "depths": grid, "lengths": args.lengths,
            "accuracy": [[evaluator.score(heatmap[length][depth]) for depth in grid]
                         for length in args.lengths]}
        tasks = {"single_needle": [sum(row) / len(row) for row in result["heatmap"]["accuracy"]]}
        for task, by_length in suite.items():
            tasks[task] = [evaluator.score(by_length[length]) for length in args.lengths]
        result["suite"] = {"lengths": args.lengths, "tasks": tasks,
                           "mean": [sum(t[i] for t in tasks.values()) / len(tasks)
                                    for i in range(len(args.lengths))]}
        probe_scored = {task: [evaluator.score_and_answer_loss(by_length[length])
                               for length in args.lengths] for task, by_length in probe.items()}
        probe_tasks = {task: [score for score, _ in cells] for task, cells in probe_scored.items()}
        result["probe"] = {"lengths": args.lengths, "tasks": probe_tasks,
                           "mean": [sum(t[i] for t in probe_tasks.values()) / len(probe_tasks)
                                    for i in range(len(args.lengths))],
                           "answer_loss": {task: [loss for _, loss in cells]
                                           for task, cells in probe_scored.items()}}
        result["seconds"] = round(time.monotonic() - began, 1)
        results["models"][name] = result
        ppl = result["perplexity"]
        log(f"{name}: perplexity {ppl[0]['perplexity']:.2f} (first bucket) -> "
            f"{ppl[-1]['perplexity']:.2f} (last); suite mean "
            + ", ".join(f"{kilo(length)} {100 * m:.1f}%"
                        for length, m in zip(args.lengths, result["suite"]["mean"]))
            + "; training-format probe "
            + ", ".join(f"{kilo(length)} {100 * m:.1f}%"
                        for length, m in zip(args.lengths, result["probe"]["mean"]))
            + " (answer loss "
            + ", ".join(f"{task} {min(losses):.2f}-{max(losses):.2f}"
                        for task, losses in result["probe"]["answer_loss"].items())
            + f" nats) ({result['seconds']:.0f} s)")
        del evaluator
        if args.device == "cuda":
            torch.cuda.empty_cache()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(args.output + ".tmp", args.output)
    log(f"wrote {args.output}")


def main():
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="the corpus directory (quality_corpus)")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                        help="a Hugging Face model directory to evaluate (repeatable)")
    parser.add_argument("--lengths", default="4096,8192,16384,32768",
                        help="suite and heatmap context lengths in tokens")
    parser.add_argument("--samples", type=int, default=8,
                        help="sequences per task and length (default 8)")
    parser.add_argument("--heatmap-depths", type=int, default=11)
    parser.add_argument("--heatmap-samples", type=int, default=2)
    parser.add_argument("--ppl-docs", type=int, default=8)
    parser.add_argument("--ppl-length", type=int, default=0,
                        help="perplexity sequence length (default the largest of --lengths)")
    parser.add_argument("--bucket", type=int, default=4096, help="perplexity bucket (tokens)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tokens-per-batch", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=4242,
                        help="seed of the evaluation samples (default 4242)")
    parser.add_argument("--output", required=True, help="the JSON file to write")
    args = parser.parse_args()
    for flag in ("samples", "heatmap_depths", "heatmap_samples", "ppl_docs", "bucket",
                 "tokens_per_batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    try:
        evaluate(args)
    except (UserError, TaskError) as error:
        sys.stderr.write(f"quality_eval.py: error: {error}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
