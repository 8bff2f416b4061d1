#!/usr/bin/env python3
"""Builds the quality pipeline's corpus from text and code on this machine (launch/quality.sh).

  .venv/bin/python3 launch/quality_corpus.py --output runs/quality/corpus --max-mb 64 \
      --vocab-size 16384 --extend-length 32768

Sources, in this order: the Python standard library and the installed packages of the running
Python, C/C++ headers under /usr/include, documentation under /usr/share/doc (.gz files
decompressed). A document is one package or source tree (a top-level directory of a source, its
text files concatenated in path order, each under a "# file: PATH" line); the loose files at a
source's top level form documents of up to --doc-max-mb in name order. Documents are visited in
the order of the SHA-256 of their names (a fixed pseudo-random order that mixes the sources) and
taken until --max-mb; duplicate files (same bytes) are kept once. --heldout-fraction of the documents
(at least one; evenly spaced in that order among those at least as long as the median document,
so long-context perplexity has long documents) are held out. Writes to --output:
  files.tsv      every file used: document, path, bytes, SHA-256
  manifest.json  sources, documents (split, bytes, tokens), the file list's SHA-256, shards
  tokenizer.json byte-level BPE of --vocab-size tokens trained on the training documents
  pretrain/      --pretrain-length-token sequences: the training documents cut to that length,
                 with retrieval sequences (passkey, multi-key needles, key-value lookup,
                 repeated random tokens; quality_tasks) mixed in as --pretrain-retrieval-fraction
                 of the tokens, aligned to whole sequences, the tasks in turn as weighted by
                 --retrieval-tasks (0: the documents as they are, each ending with <|endoftext|>)
  extend/        --extend-length-token sequences, the same with --retrieval-fraction
  heldout/       the held-out documents as a token shard
Bad input ends with status 2 and one line.
"""
import array
import gzip
import hashlib
import json
import os
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prepare_data import ShardWriter, UserError  # noqa: E402
import quality_tasks  # noqa: E402
from quality_tasks import OneLineParser  # noqa: E402

TEXT_EXTENSIONS = {
    ".py", ".pyi", ".pyx", ".pxd", ".h", ".hh", ".hpp", ".hxx", ".h++", ".c", ".cc", ".cpp",
    ".cxx", ".cu", ".cuh", ".inc", ".inl", ".tcc", ".ipp", ".txt", ".md", ".rst", ".toml",
    ".cfg", ".ini", ".yaml", ".yml", ".sh", ".pl", ".pm", ".tex", ".def", ".proto", ".cmake",
}
SKIP_NAMES = {"__pycache__", "site-packages", "dist-packages", "lib-dynload", ".git"}
EOS = "<|endoftext|>"


def log(message):
    print(f"quality_corpus: {message}", flush=True)


def sources():
    """(name, root) of every source, in the fixed order."""
    paths = sysconfig.get_paths()
    out = [("python-stdlib", paths["stdlib"]), ("site-packages", paths["purelib"])]
    if paths["platlib"] != paths["purelib"]:
        out.append(("site-packages-platform", paths["platlib"]))
    out += [("usr-include", "/usr/include"), ("usr-share-doc", "/usr/share/doc")]
    return [(name, os.path.realpath(root)) for name, root in out if os.path.isdir(root)]


def wanted(name):
    base, ext = os.path.splitext(name)
    if ext == ".gz":
        return wanted(base) or "." not in base
    return ext in TEXT_EXTENSIONS or ext == ""


def read_text(path, file_max):
    """The file's text, or None when it is not a small UTF-8 text file."""
    try:
        if os.path.islink(path) or os.path.getsize(path) > file_max:
            return None
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            with gzip.GzipFile(fileobj=__import__("io").BytesIO(data)) as g:
                data = g.read(file_max + 1)
            if len(data) > file_max:
                return None
    except (OSError, EOFError, ValueError):
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8"), data
    except UnicodeDecodeError:
        return None


def candidate_documents(file_max_bytes, doc_max_bytes):
    """(document name, list of file paths or a directory to walk) for every source entry."""
    docs = []
    for source, root in sources():
        try:
            entries = sorted(os.listdir(root))
        except OSError:
            continue
        loose, group, group_bytes = [], [], 0
        for entry in entries:
            path = os.path.join(root, entry)
            if entry in SKIP_NAMES or entry.endswith((".dist-info", ".egg-info")) or \
                    entry.startswith("config-") or os.path.islink(path):
                continue
            if os.path.isdir(path):
                docs.append((f"{source}/{entry}", path, root, source))
            elif os.path.isfile(path) and wanted(entry):
                size = os.path.getsize(path)
                if size > file_max_bytes:
                    continue
                if group and group_bytes + size > doc_max_bytes:
                    loose.append(group)
                    group, group_bytes = [], 0
                group.append(path)
                group_bytes += size
        if group:
            loose.append(group)
        for i, files in enumerate(loose):
            docs.append((f"{source}/_files_{i:03d}", files, root, source))
    return docs


def walk_files(target):
    if isinstance(target, list):
        yield from target
        return
    for directory, dirs, names in os.walk(target):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_NAMES and
                         not os.path.islink(os.path.join(directory, d)))
        for name in sorted(names):
            if wanted(name):
                yield os.path.join(directory, name)


def build_document(target, root, source, seen, file_max, doc_max):
    """The document's text and its files [(path, bytes, sha256)]; skips files seen before."""
    parts, files, size = [], [], 0
    for path in walk_files(target):
        read = read_text(path, file_max)
        if read is None:
            continue
        text, data = read
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen or not text.strip():
            continue
        if size + len(data) > doc_max:
            if files:
                break
            continue
        seen.add(digest)
        parts.append(f"# file: {source}/{os.path.relpath(path, root)}\n{text}\n")
        files.append((path, len(data), digest))
        size += len(data)
    return "".join(parts), files


def select_documents(args):
    file_max = int(args.file_max_kb * 1000)
    doc_max = int(args.doc_max_mb * 1e6)
    candidates = candidate_documents(file_max, doc_max)
    if not candidates:
        raise UserError("no source directories found (Python library, /usr/include, "
                        "/usr/share/doc); run on a machine that has them")
    candidates.sort(key=lambda c: hashlib.sha256(c[0].encode()).hexdigest())
    seen, docs, total = set(), [], 0
    budget = args.max_mb * 1e6
    for name, target, root, source in candidates:
        text, files = build_document(target, root, source, seen, file_max, doc_max)
        if len(text.encode()) < args.doc_min_kb * 1000:
            continue
        docs.append({"name": name, "text": text, "files": files})
        total += len(text.encode())
        if total >= budget:
            break
    if len(docs) < 2:
        raise UserError(f"only {len(docs)} documents found; need at least 2 (one held out)")
    # Held out: evenly spaced (in the hash order) among the documents at least as long as the
    # median one, so the held-out set has long documents for long-context perplexity.
    held = max(1, round(len(docs) * args.heldout_fraction))
    median = sorted(len(d["text"]) for d in docs)[len(docs) // 2]
    long_docs = [i for i, d in enumerate(docs) if len(d["text"]) >= median]
    held_indices = {long_docs[int((j + 0.5) * len(long_docs) / held)] for j in range(held)}
    for i, doc in enumerate(docs):
        doc["split"] = "heldout" if i in held_indices else "train"
    return docs, total


def train_tokenizer(docs, args):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, min_frequency=2,
                                  special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    budget = args.bpe_sample_mb * 1e6

    def sample():
        used = 0
        for doc in docs:
            if doc["split"] != "train":
                continue
            for start in range(0, len(doc["text"]), 1 << 16):  # 64K-character pieces
                piece = doc["text"][start:start + (1 << 16)]
                yield piece
                used += len(piece)
                if used >= budget:
                    return

    tokenizer.train_from_iterator(sample(), trainer=trainer)
    return tokenizer


def write_shard(path, documents, vocab_size):
    writer = ShardWriter(path, vocab_size)
    try:
        for document in documents:
            writer.add_document(document)
    except BaseException:
        writer.abandon()
        raise
    writer.finish()
    return writer.token_count


def parse_task_weights(text):
    """{task: weight} of --retrieval-tasks (TASK=WEIGHT,...; every TRAIN_TASKS name once, whole
    numbers, one at least > 0)."""
    tasks = sorted(quality_tasks.TRAIN_TASKS)
    items = [item.strip().partition("=") for item in text.split(",")]
    weights = {name: int(value) for name, sep, value in items if sep and value.isdecimal()}
    if sorted(name for name, _, _ in items) != tasks or len(weights) != len(tasks) or \
            not any(weights.values()):
        raise UserError(f"--retrieval-tasks {text}: give each of {', '.join(tasks)} once as "
                        "TASK=WEIGHT (a whole number), one weight above 0")
    return weights


def mixed_sequences(train_docs, enc, eos, length, fraction, weights, seed, label):
    """Yields lists of documents (token lists) that fill exactly `length` tokens each: pieces of
    the training stream, or a retrieval sequence (quality_tasks.TRAIN_TASKS, in turn by
    `weights`) followed by stream pieces, so retrieval tokens are about `fraction` of all.
    `label` seeds the draws."""
    stream = array.array("I", (t for doc in train_docs for t in doc))  # haystacks: training text
    rng = quality_tasks.rng_for(seed, label)
    names = sorted(quality_tasks.TRAIN_TASKS)
    turns = [name for name in names for _ in range(weights[name])]
    doc_index, offset = 0, 0
    total = synthetic = 0
    counts = {name: 0 for name in names}

    def natural(count):
        nonlocal doc_index, offset
        pieces = []
        while count > 0 and doc_index < len(train_docs):
            doc = train_docs[doc_index]
            take = min(count, len(doc) - offset)
            pieces.append(doc[offset:offset + take])
            offset += take
            count -= take
            if offset == len(doc):
                doc_index, offset = doc_index + 1, 0
        return pieces if count == 0 else None

    while True:
        pieces = []
        if synthetic < fraction * (total + length):
            task = turns[sum(counts.values()) % len(turns)]
            size = rng.randint(min(length, max(length // 8, 256)), length)
            ids = quality_tasks.TRAIN_TASKS[task](enc, stream, rng, size - 1)[0] + [eos]
            counts[task] += 1
            synthetic += len(ids)
            pieces.append(ids)
        rest = natural(length - sum(map(len, pieces)))
        if rest is None:
            return counts, synthetic, total
        total += length
        yield pieces + rest


def write_mixed_shard(args, split, train_docs, enc, eos, vocab, length, fraction, option):
    """The `split` shard of `length`-token sequences with `fraction` retrieval tokens."""
    os.makedirs(os.path.join(args.output, split), exist_ok=True)
    path = os.path.join(args.output, split, "shard_00000.srtok")
    writer = ShardWriter(path, vocab)
    # Each shard draws from its own seeded stream (labelled by the split), so adding the
    # pretraining mix leaves the extension's draws as they were.
    generator = mixed_sequences(train_docs, enc, eos, length, fraction,
                                parse_task_weights(args.retrieval_tasks), args.seed, split)
    sequences = 0
    try:
        while True:
            try:
                pieces = next(generator)
            except StopIteration as stop:
                counts, synthetic, total = stop.value
                break
            for piece in pieces:
                writer.add_document(piece)
            sequences += 1
    except BaseException:
        writer.abandon()
        raise
    if sequences == 0:
        writer.abandon()
        raise UserError(f"the training documents hold fewer than {length} tokens; raise --max-mb "
                        f"or lower {option}")
    writer.finish()
    log(f"{split} shard: {sequences} sequences of {length} tokens, "
        f"{100 * synthetic / max(total, 1):.1f}% retrieval tokens "
        f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    return {"path": path, "tokens": writer.token_count, "sequences": sequences,
            "sequence_length": length, "retrieval_sequences": counts,
            "retrieval_token_fraction": synthetic / max(total, 1)}


def prepare(args):
    start = time.monotonic()
    os.makedirs(args.output, exist_ok=True)
    docs, total_bytes = select_documents(args)
    n_files = sum(len(d["files"]) for d in docs)
    held = [d for d in docs if d["split"] == "heldout"]
    log(f"{len(docs)} documents ({len(held)} held out), {n_files} files, "
        f"{total_bytes / 1e6:.1f} MB of text ({time.monotonic() - start:.0f} s)")
    lines = [f"{d['name']}\t{path}\t{size}\t{digest}\n"
             for d in docs for path, size, digest in d["files"]]
    files_tsv = "".join(lines)
    with open(os.path.join(args.output, "files.tsv"), "w") as f:
        f.write("document\tpath\tbytes\tsha256\n" + files_tsv)
    corpus_sha = hashlib.sha256(files_tsv.encode()).hexdigest()

    tokenizer = train_tokenizer(docs, args)
    tokenizer_path = os.path.join(args.output, "tokenizer.json")
    tokenizer.save(tokenizer_path)
    vocab = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    eos = tokenizer.token_to_id(EOS)
    log(f"BPE vocabulary {vocab} trained ({time.monotonic() - start:.0f} s)")

    encodings = tokenizer.encode_batch([d["text"] for d in docs], add_special_tokens=False)
    for doc, encoding in zip(docs, encodings):
        doc["ids"] = encoding.ids + [eos]
        del doc["text"]
    train_docs = [d["ids"] for d in docs if d["split"] == "train"]
    held_docs = [d["ids"] for d in docs if d["split"] == "heldout"]
    log(f"tokenized: {sum(map(len, train_docs)):,} training and {sum(map(len, held_docs)):,} "
        f"held-out tokens ({time.monotonic() - start:.0f} s)")

    shards = {}
    splits = [("heldout", held_docs)]
    if args.pretrain_retrieval_fraction == 0:
        splits.insert(0, ("pretrain", train_docs))
    for split, documents in splits:
        os.makedirs(os.path.join(args.output, split), exist_ok=True)
        path = os.path.join(args.output, split, "shard_00000.srtok")
        shards[split] = {"path": path, "tokens": write_shard(path, documents, vocab),
                         "documents": len(documents)}

    enc = quality_tasks.Encoder(tokenizer)
    mixes = [("extend", args.extend_length, args.retrieval_fraction, "--extend-length")]
    if args.pretrain_retrieval_fraction > 0:
        mixes.insert(0, ("pretrain", args.pretrain_length, args.pretrain_retrieval_fraction,
                         "--pretrain-length"))
    for split, length, fraction, option in mixes:
        shards[split] = write_mixed_shard(args, split, train_docs, enc, eos, vocab, length,
                                          fraction, option)

    with open(tokenizer_path, "rb") as f:
        tokenizer_sha = hashlib.sha256(f.read()).hexdigest()
    manifest = {
        "sources": [{"name": n, "root": r} for n, r in sources()],
        "settings": corpus_settings(args),
        "files": n_files, "bytes": total_bytes, "files_sha256": corpus_sha,
        "tokenizer_sha256": tokenizer_sha, "vocab_size": vocab, "eos_id": eos,
        "documents": [{"name": d["name"], "split": d["split"], "files": len(d["files"]),
                       "bytes": sum(s for _, s, _ in d["files"]), "tokens": len(d["ids"])}
                      for d in docs],
        "shards": shards,
        "seconds": round(time.monotonic() - start, 1),
    }
    with open(os.path.join(args.output, "manifest.json.tmp"), "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(os.path.join(args.output, "manifest.json.tmp"),
               os.path.join(args.output, "manifest.json"))
    log(f"done: {args.output}/manifest.json, files SHA-256 {corpus_sha[:16]}..., vocabulary "
        f"{vocab} ({time.monotonic() - start:.0f} s)")


def corpus_settings(args):
    """The options that decide the corpus's content (the manifest records them)."""
    return {k: v for k, v in vars(args).items() if k not in ("output", "check_existing")}


def check_existing(args):
    """Exits 2 with one line unless OUTPUT/manifest.json was built with these options."""
    path = os.path.join(args.output, "manifest.json")
    try:
        with open(path) as f:
            built = json.load(f).get("settings", {})
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: {error}; remove {args.output}")
    differ = [f"{k} {built.get(k)} (now {v})" for k, v in corpus_settings(args).items()
              if built.get(k) != v]
    if differ:
        raise UserError(f"{args.output} was built with other corpus options: {', '.join(differ)}; "
                        "remove it or use another output directory")


def main():
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="directory for the corpus")
    parser.add_argument("--max-mb", type=float, default=64, help="text to collect (MB)")
    parser.add_argument("--doc-max-mb", type=float, default=2.0, help="largest document (MB)")
    parser.add_argument("--doc-min-kb", type=float, default=1.0, help="smallest document (kB)")
    parser.add_argument("--file-max-kb", type=float, default=512, help="largest file (kB)")
    parser.add_argument("--vocab-size", type=int, default=16384, help="BPE vocabulary")
    parser.add_argument("--bpe-sample-mb", type=float, default=24,
                        help="training text the BPE is trained on (MB)")
    parser.add_argument("--heldout-fraction", type=float, default=0.05)
    parser.add_argument("--extend-length", type=int, default=32768,
                        help="tokens per sequence of the extension shard")
    parser.add_argument("--retrieval-fraction", type=float, default=0.15,
                        help="share of the extension tokens in retrieval sequences")
    parser.add_argument("--pretrain-length", type=int, default=4096,
                        help="tokens per sequence of the pretraining shard (with a mix)")
    parser.add_argument("--pretrain-retrieval-fraction", type=float, default=0.0,
                        help="share of the pretraining tokens in retrieval sequences (0: none, "
                             "the documents as they are)")
    parser.add_argument("--retrieval-tasks", default="kv_lookup=1,multikey=1,passkey=1,repeat=1",
                        help="TASK=WEIGHT,...: how often each retrieval task comes in turn")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--check-existing", action="store_true",
                        help="build nothing: exit 2 unless --output holds a corpus built with "
                             "these options")
    args = parser.parse_args()
    problems = []
    if args.max_mb <= 0 or args.doc_max_mb <= 0 or args.file_max_kb <= 0:
        problems.append("--max-mb, --doc-max-mb and --file-max-kb must be > 0")
    if args.vocab_size < 300:
        problems.append(f"--vocab-size {args.vocab_size}: must be >= 300")
    if not 0 < args.heldout_fraction < 0.5:
        problems.append(f"--heldout-fraction {args.heldout_fraction}: must be in (0, 0.5)")
    if not 0 <= args.retrieval_fraction < 1:
        problems.append(f"--retrieval-fraction {args.retrieval_fraction}: must be in [0, 1)")
    if not 0 <= args.pretrain_retrieval_fraction < 1:
        problems.append(f"--pretrain-retrieval-fraction {args.pretrain_retrieval_fraction}: must "
                        "be in [0, 1)")
    try:
        parse_task_weights(args.retrieval_tasks)
    except UserError as error:
        problems.append(str(error))
    if args.pretrain_length < 256:
        problems.append(f"--pretrain-length {args.pretrain_length}: must be >= 256")
    if args.extend_length < 256:
        problems.append(f"--extend-length {args.extend_length}: must be >= 256")
    if problems:
        sys.stderr.write(f"quality_corpus.py: error: {problems[0]}\n")
        sys.exit(2)
    try:
        if args.check_existing:
            check_existing(args)
        else:
            prepare(args)
    except (UserError, quality_tasks.TaskError) as error:
        sys.stderr.write(f"quality_corpus.py: error: {error}\n")
        sys.exit(2)
    except ImportError as error:
        sys.stderr.write(f"quality_corpus.py: error: {error}; run launch/setup.sh\n")
        sys.exit(2)
    except OSError as error:
        sys.stderr.write(f"quality_corpus.py: error: {error}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
