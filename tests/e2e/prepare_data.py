"""launch/prepare_data.py end to end: text and JSON lines become valid token shards that decode
back to the input, with a trained BPE, a given tokenizer.json or a Hugging Face model directory's
(refused when larger than its embedding); bad input gives one error line.

The shards are read by a small reader here that checks what data/token_shard.cpp checks (magic,
version, token type, file size, document index), and the writer's bytes are compared with the
bytes tests/token_shard_test.cpp pins for the C++ writer."""
import array
import importlib.util
import json
import os
import struct
import subprocess
import sys

from e2e_common import arguments, check, temporary_directory

_, source = arguments()
python = os.path.join(source, ".venv", "bin", "python3")
tool = os.path.join(source, "launch", "prepare_data.py")
# The tool and the decoding checks below need the venv's `tokenizers` (launch/setup.sh).
check(os.path.exists(python), f"{python} is missing; run launch/setup.sh")
if os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(source, ".venv")):
    os.execv(python, [python, *sys.argv])

# The 72 bytes of documents {1, 2}, {3} (uint16, vocabulary 10): kGoldenShard of the C++ test.
GOLDEN_SHARD = bytes.fromhex(
    "5352544f4b454e53" "01000000" "02000000" "0300000000000000" "0200000000000000"
    "0a00000000000000" "010002000300" "0000" "0000000000000000" "0200000000000000"
    "0300000000000000")


def read_shard(path):
    """(vocab_size, documents as lists of ids) of a shard, validated like the C++ reader."""
    with open(path, "rb") as f:
        data = f.read()
    magic, version, width, tokens, count, vocab = struct.unpack_from("<8sIIQQQ", data)
    check(magic == b"SRTOKENS" and version == 1 and width in (2, 4), f"{path}: bad header")
    token_bytes = tokens * width
    index_at = 40 + token_bytes + (-token_bytes % 8)
    check(len(data) == index_at + 8 * (count + 1), f"{path}: size does not match its header")
    ids = array.array("H" if width == 2 else "I", data[40:40 + token_bytes])
    offsets = array.array("Q", data[index_at:])
    check(offsets[0] == 0 and offsets[-1] == tokens and list(offsets) == sorted(offsets),
          f"{path}: bad document index")
    check(all(token < vocab for token in ids), f"{path}: token beyond the vocabulary")
    return vocab, [list(ids[offsets[d]:offsets[d + 1]]) for d in range(count)]


def read_shards(directory):
    names = sorted(name for name in os.listdir(directory) if name.endswith(".srtok"))
    check(names, f"{directory}: no shards written")
    vocab, documents = None, []
    for name in names:
        vocab, shard_documents = read_shard(os.path.join(directory, name))
        documents += shard_documents
    return names, vocab, documents


def prepare(*options):
    command = [python, tool, *options]
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


with temporary_directory() as tmp:
    inputs = os.path.join(tmp, "corpus")
    os.makedirs(os.path.join(inputs, "sub"))
    texts = ["The quick brown fox jumps over the lazy dog. " * 100 + "Ünïcödé ✓ — end.\n"]
    with open(os.path.join(inputs, "a.txt"), "w", encoding="utf-8") as f:
        f.write(texts[0])
    with open(os.path.join(inputs, "b.jsonl"), "w", encoding="utf-8") as f:
        for i in range(3):
            texts.append(f"Document {i}: " + "lorem ipsum dolor sit amet, " * (10 * i + 1))
            f.write(json.dumps({"text": texts[-1], "id": i}) + "\n")
        f.write("\n")  # blank lines are skipped
    texts.append("The last file.\nIt has two lines.\n")
    with open(os.path.join(inputs, "sub", "c.txt"), "w", encoding="utf-8") as f:
        f.write(texts[-1])

    # A byte-level BPE trained on the corpus.
    trained = os.path.join(tmp, "trained")
    process = prepare(inputs, "--output", trained, "--vocab-size", "300")
    check(process.returncode == 0, "prepare_data.py with --vocab-size failed", process)
    check("tokenizing: 100.0%" in process.stderr, "no progress line on stderr", process)
    check("model.vocab_size>=" in process.stdout, "no summary naming model.vocab_size", process)
    names, vocab, documents = read_shards(trained)
    check(vocab <= 300, f"trained vocabulary {vocab} > --vocab-size 300")
    check(len(documents) == len(texts), f"{len(documents)} documents, expected {len(texts)}")
    from tokenizers import Tokenizer  # the venv runs this test's tokenizer checks
    tokenizer = Tokenizer.from_file(os.path.join(trained, "tokenizer.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")
    for document, text in zip(documents, texts):
        check(document[-1] == eos, "a document does not end with <|endoftext|>")
        check(tokenizer.decode(document[:-1]) == text, f"decoding does not give back {text[:30]!r}")
    total_tokens = sum(len(document) for document in documents)
    check(total_tokens < sum(len(text.encode()) for text in texts) / 2, "BPE did not merge")

    # The saved tokenizer.json again, small shards: the same tokens, documents kept whole.
    given = os.path.join(tmp, "given")
    process = prepare(inputs, "--output", given, "--tokenizer",
                      os.path.join(trained, "tokenizer.json"), "--shard-tokens", "100")
    check(process.returncode == 0, "prepare_data.py with --tokenizer failed", process)
    names, _, documents_again = read_shards(given)
    check(len(names) > 1, "--shard-tokens 100 should split into several shards")
    check(documents_again == documents, "the given tokenizer gave other tokens")
    process = prepare(inputs, "--output", given, "--vocab-size", "300")
    check(process.returncode == 2 and "--overwrite" in process.stderr,
          "stale shards in --output must be refused", process)

    # A Hugging Face model directory: its tokenizer.json, checked against its embedding size.
    hf_dir = os.path.join(tmp, "hf_model")
    os.makedirs(hf_dir)
    with open(os.path.join(trained, "tokenizer.json")) as f:
        tokenizer_text = f.read()
    with open(os.path.join(hf_dir, "tokenizer.json"), "w") as f:
        f.write(tokenizer_text)
    for embedding, ok in ((vocab + 64, True), (vocab - 1, False)):
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump({"model_type": "qwen2", "vocab_size": embedding}, f)
        out = os.path.join(tmp, f"from_hf_{embedding}")
        process = prepare(inputs, "--output", out, "--hf-dir", hf_dir)
        if ok:
            check(process.returncode == 0 and f"model.vocab_size={embedding}" in process.stdout,
                  "prepare_data.py --hf-dir failed or did not name the model's vocab_size",
                  process)
            check(read_shards(out)[2] == documents, "--hf-dir gave other tokens")
        else:
            check(process.returncode == 2 and "embedding has" in process.stderr
                  and len(process.stderr.strip().splitlines()) == 1,
                  "a tokenizer larger than the model's embedding must be refused", process)

    # The Python writer's bytes are the C++ writer's.
    spec = importlib.util.spec_from_file_location("prepare_data", tool)
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    golden = os.path.join(tmp, "golden.srtok")
    prepare_data.write_shard(golden, [[1, 2], [3]], 10)
    with open(golden, "rb") as f:
        check(f.read() == GOLDEN_SHARD, "the Python writer's bytes differ from the C++ writer's")

    # Bad input: status 2 and one line naming the file and line.
    bad = os.path.join(tmp, "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"text": "fine"}\n{"body": "no text"}\n')
    broken = os.path.join(tmp, "broken.jsonl")
    with open(broken, "w") as f:
        f.write('{"text": "fine"}\n{"text": \n')
    tokenizer_json = os.path.join(trained, "tokenizer.json")
    for arguments_, expected in [
            # One document per batch: the shard is open when the error comes, and is removed.
            ([bad, "--tokenizer", tokenizer_json, "--batch-documents", "1"],
             "bad.jsonl:2: no string field \"text\""),
            ([broken], "broken.jsonl:2: not a JSON object"),
            ([os.path.join(tmp, "missing.txt")], "missing.txt: no such file"),
            ([inputs, "--tokenizer", bad], "bad.jsonl: not a tokenizer.json")]:
        process = prepare(*arguments_, "--output", os.path.join(tmp, "out-bad"), "--overwrite")
        errors = [line for line in process.stderr.splitlines() if "error" in line]
        check(process.returncode == 2, f"{arguments_}: status {process.returncode}", process)
        check(len(errors) == 1 and expected in errors[0], f"{arguments_}: expected one error "
              f"line with {expected!r}", process)
    check(not any(name.endswith(".tmp") for name in os.listdir(os.path.join(tmp, "out-bad"))),
          "a failed run left a temporary shard")
print("PASSED")
