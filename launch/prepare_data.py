#!/usr/bin/env python3
"""Tokenizes .txt and .jsonl files into SparseRing token shards (*.srtok, see data/token_shard.h).

  .venv/bin/python3 launch/prepare_data.py corpus/ --output shards/ --vocab-size 32000
  .venv/bin/python3 launch/prepare_data.py a.jsonl b.txt --output shards/ --tokenizer tok.json
  .venv/bin/python3 launch/prepare_data.py corpus/ --output shards/ --hf-dir Qwen2.5-3B/

Inputs are files or directories (searched recursively for *.txt and *.jsonl, in name order). A
.txt file is one document; each line of a .jsonl file is one document, its "text" field. Every
document ends with the end-of-text token. Without --tokenizer, a byte-level BPE tokenizer of
--vocab-size tokens is trained on the inputs (nothing is downloaded). With --hf-dir, the tokenizer
is the Hugging Face model directory's tokenizer.json (the checkpoint `sparsering import-hf` reads),
and a vocabulary larger than its config.json's vocab_size (the embedding) is refused. The
tokenizer used is saved as OUTPUT/tokenizer.json. Train on the shards with
  data { source: TOKEN_SHARDS path: "OUTPUT" }  and  model.vocab_size >= the printed size.
Bad input ends with status 2 and one line naming the file and the fix.
"""
import argparse
import array
import json
import os
import struct
import sys
import time

MAGIC = b"SRTOKENS"
VERSION = 1
HEADER = struct.Struct("<8sIIQQQ")  # magic, version, bytes per token, tokens, documents, vocab
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
assert sys.byteorder == "little", "token shards are little-endian"


class UserError(Exception):
    """Bad input: reported as one line, status 2."""


class ShardWriter:
    """Streams documents into one shard; the file gets its name only when finish() succeeds."""

    def __init__(self, path, vocab_size):
        self.path, self.vocab_size = path, vocab_size
        self.bytes_per_token = 2 if vocab_size <= 1 << 16 else 4
        self.offsets = array.array("Q", [0])
        self.file = open(path + ".tmp", "wb")
        self.file.write(bytes(HEADER.size))  # rewritten by finish()

    @property
    def token_count(self):
        return self.offsets[-1]

    def add_document(self, tokens):
        array.array("H" if self.bytes_per_token == 2 else "I", tokens).tofile(self.file)
        self.offsets.append(self.offsets[-1] + len(tokens))

    def finish(self):
        token_bytes = self.token_count * self.bytes_per_token
        self.file.write(bytes(-token_bytes % 8))  # pads tokens so the index is 8-byte aligned
        self.offsets.tofile(self.file)
        self.file.seek(0)
        self.file.write(HEADER.pack(MAGIC, VERSION, self.bytes_per_token, self.token_count,
                                    len(self.offsets) - 1, self.vocab_size))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path + ".tmp", self.path)

    def abandon(self):
        try:
            self.file.close()  # may fail again on a full disk: the .tmp goes either way
        except OSError:
            pass
        os.remove(self.path + ".tmp")


def write_shard(path, documents, vocab_size):
    """Writes `documents` (lists of token ids) as one shard."""
    writer = ShardWriter(path, vocab_size)
    for document in documents:
        writer.add_document(document)
    writer.finish()


def input_files(inputs):
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(directory, name)
                           for directory, _, names in os.walk(item) for name in names
                           if name.endswith((".txt", ".jsonl")))
            if not found:
                raise UserError(f"{item}: no .txt or .jsonl files in the directory")
            files += found
        elif os.path.isfile(item):
            if not item.endswith((".txt", ".jsonl")):
                raise UserError(f"{item}: not a .txt or .jsonl file; give text or JSON lines")
            files.append(item)
        else:
            raise UserError(f"{item}: no such file or directory")
    return files


def documents(files, progress=None):
    """Yields the text of every document of `files`, in order, skipping empty ones."""
    for path in files:
        try:
            with open(path, "rb") as f:
                if path.endswith(".txt"):
                    data = f.read()
                    if progress:
                        progress.advance(len(data))
                    text = data.decode("utf-8")
                    if text:
                        yield text
                    continue
                for number, line in enumerate(f, 1):
                    if progress:
                        progress.advance(len(line))
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise UserError(f"{path}:{number}: not a JSON object ({error.msg}); "
                                        "each line must be {\"text\": ...}") from None
                    text = record.get("text") if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise UserError(f"{path}:{number}: no string field \"text\"; each line "
                                        "must be {\"text\": ...}")
                    if text:
                        yield text
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                            "convert it to UTF-8") from None


def human_bytes(count):
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000


class Progress:
    """One stderr line, rewritten at most 5 times a second."""

    line_open = False  # a progress line without its newline is on stderr

    def __init__(self, label, total_bytes):
        self.label, self.total, self.done = label, max(total_bytes, 1), 0
        self.documents = self.tokens = 0
        self.last = 0.0

    def advance(self, nbytes):
        self.done += nbytes
        self.show()

    def show(self, final=False):
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        line = (f"\r{self.label}: {100 * self.done / self.total:5.1f}% "
                f"({human_bytes(self.done)} of {human_bytes(self.total)})")
        if self.documents:
            line += f", {self.documents:,} documents, {self.tokens:,} tokens"
        sys.stderr.write(line + ("\n" if final else ""))
        sys.stderr.flush()
        Progress.line_open = not final


def load_tokenizer(args, files, total_bytes):
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise UserError("the Python package 'tokenizers' is missing; run launch/setup.sh or "
                        ".venv/bin/pip install tokenizers") from None
    if args.hf_dir:
        args.tokenizer = os.path.join(args.hf_dir, "tokenizer.json")
        if not os.path.isfile(args.tokenizer):
            raise UserError(f"--hf-dir {args.hf_dir}: no tokenizer.json; give the Hugging Face "
                            "model directory with its tokenizer.json, or --tokenizer FILE")
    if args.tokenizer:
        try:
            return Tokenizer.from_file(args.tokenizer)
        except Exception as error:  # the Rust side raises plain Exception
            raise UserError(f"{args.tokenizer}: not a tokenizer.json ({error}); give a Hugging "
                            "Face tokenizer.json file") from None
    if args.vocab_size < 257:
        raise UserError(f"--vocab-size {args.vocab_size}: must be >= 257 (256 bytes + the "
                        "end-of-text token)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                                  special_tokens=[EOS_CANDIDATES[0]], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    progress = Progress("training BPE", total_bytes)
    tokenizer.train_from_iterator(documents(files, progress), trainer=trainer)
    progress.show(final=True)
    return tokenizer


def model_vocab_size(hf_dir):
    """vocab_size of the HF directory's config.json: the rows of the model's embedding."""
    path = os.path.join(hf_dir, "config.json")
    try:
        with open(path) as f:
            vocab = json.load(f).get("vocab_size")
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read it ({error}); give a Hugging Face model "
                        "directory") from None
    if not isinstance(vocab, int) or vocab < 1:
        raise UserError(f"{path}: no integer vocab_size; give a Hugging Face model directory")
    return vocab


def eos_id(tokenizer, requested):
    if requested == "":
        return None
    candidates = EOS_CANDIDATES if requested is None else (requested,)
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise UserError(f"the tokenizer has no end-of-text token {' or '.join(candidates)}; name it "
                    "with --eos-token TOKEN, or --eos-token '' for none")


def prepare(args):
    files = input_files(args.inputs)
    os.makedirs(args.output, exist_ok=True)
    stale = sorted(name for name in os.listdir(args.output) if name.endswith(".srtok"))
    if stale and not args.overwrite:
        raise UserError(f"{args.output}: already holds {len(stale)} shards; give an empty "
                        "directory or --overwrite")
    for name in stale:
        os.remove(os.path.join(args.output, name))
    total_bytes = sum(os.path.getsize(path) for path in files)
    tokenizer = load_tokenizer(args, files, total_bytes)
    # Replaced whole or not at all, as the shards are.
    tokenizer_path = os.path.join(args.output, "tokenizer.json")
    tokenizer.save(tokenizer_path + ".tmp")
    os.replace(tokenizer_path + ".tmp", tokenizer_path)
    # Every id the tokenizer can emit is below the vocabulary size the shards declare.
    vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    embedding = model_vocab_size(args.hf_dir) if args.hf_dir else None
    if embedding is not None and vocab_size > embedding:
        raise UserError(f"{args.tokenizer}: ids up to {vocab_size - 1} but the model's embedding "
                        f"has {embedding} rows (vocab_size in {args.hf_dir}/config.json); use "
                        "the checkpoint's own tokenizer.json")
    eos = eos_id(tokenizer, args.eos_token)

    progress = Progress("tokenizing", total_bytes)
    shards, writer, batch = [], None, []

    def flush():
        nonlocal writer
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            ids = encoding.ids + ([eos] if eos is not None else [])
            if writer is None:
                shards.append(os.path.join(args.output, f"shard_{len(shards):05d}.srtok"))
                writer = ShardWriter(shards[-1], vocab_size)
            writer.add_document(ids)
            progress.documents += 1
            progress.tokens += len(ids)
            # Documents stay whole: a shard ends at the first document that reaches the limit.
            if writer.token_count >= args.shard_tokens:
                writer.finish()
                writer = None
        batch.clear()
        progress.show()

    try:
        for text in documents(files, progress):
            batch.append(text)
            if len(batch) == args.batch_documents:
                flush()
        flush()
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None:
        writer.finish()
    progress.show(final=True)
    if not shards:
        raise UserError(f"{' '.join(args.inputs)}: no non-empty documents")
    dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"
    # With a checkpoint the model's vocabulary is its embedding's, which may exceed the tokenizer's.
    model_vocab = embedding if embedding is not None else vocab_size
    plural = "s" if len(shards) > 1 else ""
    print(f"wrote {len(shards)} shard{plural} ({progress.documents:,} documents, "
          f"{progress.tokens:,} tokens, {dtype}) and tokenizer.json to {args.output}; vocabulary "
          f"{vocab_size}: train with data.source=TOKEN_SHARDS data.path={args.output} "
          f"model.vocab_size{'=' if embedding is not None else '>='}{model_vocab}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help=".txt / .jsonl files or directories of them")
    parser.add_argument("--output", required=True, help="directory for the *.srtok shards")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tokenizer", help="a Hugging Face tokenizer.json to use")
    source.add_argument("--hf-dir", help="a Hugging Face model directory: its tokenizer.json, "
                        "checked against its config.json's vocab_size")
    source.add_argument("--vocab-size", type=int, default=32000,
                        help="train a byte-level BPE of this many tokens (default 32000)")
    parser.add_argument("--min-frequency", type=int, default=2,
                        help="BPE: pairs seen fewer times are not merged (default 2)")
    parser.add_argument("--eos-token", default=None,
                        help="token appended to every document (default: the tokenizer's "
                             f"first of {', '.join(EOS_CANDIDATES)}; '' = none)")
    parser.add_argument("--shard-tokens", type=int, default=1 << 28,
                        help="tokens per shard before a new one starts (default 2^28)")
    parser.add_argument("--batch-documents", type=int, default=256,
                        help="documents encoded together (default 256)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace *.srtok shards already in --output")
    args = parser.parse_args()
    if args.shard_tokens < 1 or args.batch_documents < 1:
        parser.error("--shard-tokens and --batch-documents must be >= 1")
    try:
        prepare(args)
    except (UserError, OSError) as error:
        # A full disk or an unwritable --output is one line too; the shard being written stays a
        # .tmp file (finished shards are only ever renamed into place), so nothing is damaged.
        if isinstance(error, OSError):
            error = (f"{error.filename or args.output}: {error.strerror or error}; free space "
                     "or choose another --output")
        end_progress = "\n" if Progress.line_open else ""
        sys.stderr.write(f"{end_progress}prepare_data.py: error: {error}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        end_progress = "\n" if Progress.line_open else ""
        sys.stderr.write(f"{end_progress}prepare_data.py: interrupted; finished shards are "
                         "complete, rerun with --overwrite to redo them\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
