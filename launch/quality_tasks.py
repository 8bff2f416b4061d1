"""Retrieval sequences of the quality pipeline (launch/quality.sh), built at the token level.

Two disjoint families share the helpers here:
- the TRAINING mix (quality_corpus.py mixes it into the pretraining and extension shards):
  passkey, multi-key needles, key-value lookup and repeated random tokens in train-split
  haystacks; quality_eval.py also runs it as an in-distribution probe on held-out haystacks with
  new values, which tells a model that never learnt retrieval from one whose retrieval does not
  transfer to the suite;
- the EVALUATION suite (quality_eval.py), RULER-style: single needle, multi-key needles,
  multi-value needles, variable tracking, common-word extraction and associative recall in
  held-out haystacks.
Their wording, key vocabularies, value formats and haystacks differ, so the suite does not test
memorised templates. Haystacks are slices of a token stream of real documents; needles are
encoded separately and inserted at token positions.
"""
import argparse
import random
import string
import sys

# Keys of the training mix and of the suite: disjoint word lists.
TRAIN_KEY_WORDS = (
    "apple banana cherry grape lemon mango melon olive peach pear plum berry walnut almond "
    "carrot onion garlic pepper tomato potato radish celery ginger basil mint sage thyme "
    "river ocean forest desert valley canyon island meadow glacier orchard prairie lagoon"
).split()
EVAL_ADJECTIVES = (
    "silent crimson hollow gentle frozen golden bitter rapid ancient brave curious distant "
    "eager fragile humble lively narrow proud quiet rusty shiny sleepy smooth tiny wild"
).split()
EVAL_NOUNS = (
    "falcon lantern violin compass harbor beacon anchor saddle marble ribbon kettle ladder "
    "mirror pillow rocket bucket tunnel wagon helmet button candle feather hammer jacket"
).split()
# Common-word extraction: candidates, of which the tokenizer's single-token ones are used.
CWE_WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an not have "
    "but all can which one there their if will has more when other so what some time into "
    "than only out new use then each about also after two way many these first any would "
    "make like long look write number people could over see water call word find day may "
    "down side been now did get come made part list file data name value type line code test "
    "set path class error return string object result model table node user key text size "
    "format index input output state field image block window sound color paper music "
    "house point world school story night money month power light table"
).split()
assert not set(TRAIN_KEY_WORDS) & set(EVAL_ADJECTIVES + EVAL_NOUNS)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (the program's name, the problem) and status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}; see --help\n")
        sys.exit(2)


class TaskError(Exception):
    """A sequence cannot be built (too short, tokenizer too small): one line for the user."""


class Encoder:
    """Memoised text -> token ids with a Hugging Face tokenizers.Tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache = {}

    def __call__(self, text):
        ids = self.cache.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            if len(self.cache) < 100000:
                self.cache[text] = ids
        return list(ids)

    def single_token_words(self, words):
        """The words of `words` (in order, distinct) that are one token with a leading space."""
        seen, out = set(), []
        for word in words:
            if word not in seen and len(self(" " + word)) == 1:
                seen.add(word)
                out.append(word)
        return out


def haystack(stream, rng, count):
    """`count` consecutive tokens of `stream` (a sequence of ids) from a random offset."""
    if count <= 0:
        return []
    if len(stream) < count:
        raise TaskError(f"the haystack stream has {len(stream)} tokens, fewer than the "
                        f"{count} a sequence needs; use a larger corpus")
    start = rng.randrange(0, len(stream) - count + 1)
    return [int(t) for t in stream[start:start + count]]


def insert_at_depths(hay, needles):
    """`hay` with each (depth in [0, 1], token list) of `needles` inserted; returns the tokens and
    the start of each needle (in the order given)."""
    order = sorted(range(len(needles)), key=lambda i: needles[i][0])
    out, starts, cursor = [], [0] * len(needles), 0
    for i in order:
        depth, tokens = needles[i]
        cut = max(cursor, min(len(hay), round(depth * len(hay))))
        out += hay[cursor:cut]
        cursor = cut
        starts[i] = len(out)
        out += tokens
    out += hay[cursor:]
    return out, starts


def assemble(context, question, answers, separator):
    """context + question + answers (token lists joined by `separator`); returns the ids and the
    positions of each answer."""
    ids = list(context) + list(question)
    spans = []
    for k, answer in enumerate(answers):
        if k:
            ids += separator
        spans.append(list(range(len(ids), len(ids) + len(answer))))
        ids += answer
    return ids, spans


def fit(length, parts, what):
    """The haystack size that makes a sequence of `parts` tokens exactly `length` long."""
    room = length - parts
    if room < 0:
        raise TaskError(f"{what}: {parts} tokens of needles and question do not fit in "
                        f"{length}; use a longer sequence")
    return room


def random_digits(rng, digits):
    return str(rng.randrange(10 ** (digits - 1), 10 ** digits))


# ---------------------------------------------------------------- training mix


# Each returns (ids, answer spans) of exactly `length` tokens or fewer (kv_lookup, repeat).


def train_passkey(enc, stream, rng, length):
    key = random_digits(rng, rng.choice((5, 6)))
    needle = enc(f"\nThe pass key is {key}. Remember it. {key} is the pass key.\n")
    question = enc("\nWhat is the pass key? The pass key is")
    answer = enc(" " + key)
    hay = haystack(stream, rng, fit(length, len(needle) + len(question) + len(answer), "passkey"))
    context, _ = insert_at_depths(hay, [(rng.random(), needle)])
    return assemble(context, question, [answer], [])


def ask_each(context, queries):
    """context followed by every (question, answer) of `queries`; returns the ids and the
    positions of each answer. Several questions per sequence give the training mix several
    supervised retrievals per haystack instead of one (the one-question mix left the ~55M
    pretraining at 0% even on its own format)."""
    ids, spans = list(context), []
    for question, answer in queries:
        ids += question
        spans.append(list(range(len(ids), len(ids) + len(answer))))
        ids += answer
    return ids, spans


def train_multikey(enc, stream, rng, length):
    """Four keyed needles, then a question for each key in a random order (as many as fit a
    short sequence, at least one)."""
    keys = rng.sample(TRAIN_KEY_WORDS, 4)
    values = [random_digits(rng, 6) for _ in keys]
    needles = [enc(f"\nOne of the special magic numbers for {k} is: {v}.\n")
               for k, v in zip(keys, values)]
    queries = [(enc(f"\nWhat is the special magic number for {keys[i]} mentioned in the "
                    f"provided text? The special magic number for {keys[i]} is"),
                enc(" " + values[i])) for i in rng.sample(range(len(keys)), len(keys))]
    def parts():
        return sum(map(len, needles)) + sum(len(q) + len(a) for q, a in queries)

    while parts() > length and len(queries) > 1:
        queries.pop()
    hay = haystack(stream, rng, fit(length, parts(), "multi-key needles"))
    context, _ = insert_at_depths(hay, [(rng.random(), n) for n in needles])
    return ask_each(context, queries)


KV_LOOKUP_QUERIES = 16


def train_kv_lookup(enc, stream, rng, length):
    """A JSON object of random hex keys and values, then up to KV_LOOKUP_QUERIES of its keys to
    look up, each once (no haystack)."""
    def hex8():
        return "".join(rng.choice("0123456789abcdef") for _ in range(8))

    head, close = enc("JSON data:\n{"), enc("}")
    pairs, used = [], len(head) + len(close)
    while True:
        key, value = hex8(), hex8()
        piece = enc(f'"{key}": "{value}", ')
        if used + len(piece) > length and pairs:
            break
        pairs.append((key, value, piece))
        used += len(piece)
    asked = rng.sample(range(len(pairs)), min(KV_LOOKUP_QUERIES, len(pairs)))
    queries = [(pairs[i], enc(f'\nKey: "{pairs[i][0]}"\nThe value associated with the specified '
                              "key is:"), enc(f' "{pairs[i][1]}"')) for i in asked]
    total = used + sum(len(q) + len(a) for _, q, a in queries)
    # Make room for the questions: drop pairs nobody asks for, then the last questions (never
    # the first, nor its pair).
    asked_keys = {pair[0] for pair, _, _ in queries}
    unasked = [pair for pair in pairs if pair[0] not in asked_keys]
    while total > length and (unasked or len(queries) > 1):
        if unasked:
            pair = unasked.pop()
        else:
            pair, question, answer = queries.pop()
            total -= len(question) + len(answer)
        pairs.remove(pair)
        total -= len(pair[2])
    ids = head + [t for _, _, piece in pairs for t in piece] + close
    ids, spans = ask_each(ids, [(q, a) for _, q, a in queries])
    if len(ids) > length:
        raise TaskError(f"key-value lookup: {len(ids)} tokens do not fit in {length}")
    return ids, spans


REPEAT_ITEM_TOKENS = 8
REPEAT_MIN_BLOCK_TOKENS = 16
REPEAT_BLOCK_TOKENS = 512


def train_repeat(enc, stream, rng, length):
    """A block of distinct tokens drawn from the text, then the same block again as often as the
    sequence holds, each copy scored in items of REPEAT_ITEM_TOKENS. The tokens of a block are
    distinct, so each has one successor: the copies are predictable by looking back for the
    current token and taking what followed it (an induction head, the mechanism every retrieval
    task needs), and by nothing else. The needle tasks alone give too few such tokens for a small
    model to learn it.

    Block lengths are log-uniform in [REPEAT_MIN_BLOCK_TOKENS, REPEAT_BLOCK_TOKENS] (as far as the
    sequence holds two copies). A short block recurs every few dozen tokens, so a head that
    attends evenly over its causal prefix already puts a large share of its weight on earlier
    copies of the current token: the gradient toward induction is strong from the first steps,
    where one 512-token block in 4K tokens dilutes it ~30 times (the fixed 512-token block formed
    no induction head in 600 pretraining steps). The long blocks make it look far back."""
    head, again = enc("\nRandom tokens:\n"), enc("\nThe same tokens again:\n")
    most = max(1, min(REPEAT_BLOCK_TOKENS, (length - len(head) - len(again)) // 2))
    least = min(REPEAT_MIN_BLOCK_TOKENS, most)
    count = round(least * (most / least) ** rng.random())
    block, seen = [], set()
    for _ in range(50 * max(count, 1)):  # a text with fewer distinct tokens gives a shorter block
        if len(block) == count:
            break
        token = int(stream[rng.randrange(len(stream))])
        if token not in seen:
            seen.add(token)
            block.append(token)
    if len(block) < REPEAT_ITEM_TOKENS:
        raise TaskError(f"repeat: {length} tokens of sequence and the haystack text leave fewer "
                        f"than {REPEAT_ITEM_TOKENS} distinct tokens to repeat; use a longer "
                        "sequence or a larger corpus")
    ids, spans = head + block, []
    while len(ids) + len(again) < length:
        ids += again
        copy = block[:length - len(ids)]
        for start in range(0, len(copy), REPEAT_ITEM_TOKENS):
            item = copy[start:start + REPEAT_ITEM_TOKENS]
            spans.append(list(range(len(ids), len(ids) + len(item))))
            ids += item
    return ids, spans


TRAIN_TASKS = {"passkey": train_passkey, "multikey": train_multikey, "kv_lookup": train_kv_lookup,
               "repeat": train_repeat}


# ---------------------------------------------------------------- evaluation suite


class Sample:
    """One evaluation sequence: ids and its scored items.

    items: list of position lists; an item is right when the model's argmax at every position p
    (predicted from p - 1, teacher-forced) is ids[p]. set_items: (positions, allowed token ids)
    for answers whose order is free: slot j is right when the argmax is one of the targets not
    given before it (common-word extraction)."""

    def __init__(self, ids, items, set_items=None, depth=None):
        self.ids, self.items, self.set_items, self.depth = ids, items, set_items, depth


def _code_key(rng):
    return f"{rng.choice(EVAL_ADJECTIVES)} {rng.choice(EVAL_NOUNS)}"


def _distinct_keys(rng, count):
    keys = set()
    while len(keys) < count:
        keys.add(_code_key(rng))
    return sorted(keys, key=lambda _: rng.random())


def eval_single_needle(enc, stream, rng, length, depth):
    key, value = _code_key(rng), random_digits(rng, 7)
    needle = enc(f"\nThe secret code of the {key} is {value}.\n")
    question = enc(f"\nWhat is the secret code of the {key}? The secret code of the {key} is")
    answer = enc(" " + value)
    hay = haystack(stream, rng, fit(length, len(needle) + len(question) + len(answer),
                                    "single needle"))
    context, _ = insert_at_depths(hay, [(depth, needle)])
    ids, spans = assemble(context, question, [answer], [])
    return Sample(ids, spans, depth=depth)


def eval_multikey(enc, stream, rng, length, depth):
    keys = _distinct_keys(rng, 4)
    values = [random_digits(rng, 7) for _ in keys]
    needles = [enc(f"\nThe secret code of the {k} is {v}.\n") for k, v in zip(keys, values)]
    # The queried needle at `depth`, the three distractors anywhere.
    depths = [depth] + [rng.random() for _ in keys[1:]]
    question = enc(f"\nWhat is the secret code of the {keys[0]}? The secret code of the "
                   f"{keys[0]} is")
    answer = enc(" " + values[0])
    parts = sum(map(len, needles)) + len(question) + len(answer)
    hay = haystack(stream, rng, fit(length, parts, "multi-key needles"))
    context, _ = insert_at_depths(hay, list(zip(depths, needles)))
    ids, spans = assemble(context, question, [answer], [])
    return Sample(ids, spans, depth=depth)


def eval_multivalue(enc, stream, rng, length, depth):
    key = _code_key(rng)
    values = [random_digits(rng, 7) for _ in range(4)]
    needles = [enc(f"\nOne of the secret codes of the {key} is {v}.\n") for v in values]
    # The first value at `depth`, the others after it in order (answers in order of appearance).
    depths = sorted([depth] + [depth + (1 - depth) * rng.random() for _ in values[1:]])
    question = enc(f"\nWhat are all the secret codes of the {key}? The secret codes of the "
                   f"{key} are")
    answers = [enc(" " + v) for v in values]
    separator = enc(",")
    parts = (sum(map(len, needles)) + len(question) + sum(map(len, answers))
             + len(separator) * (len(answers) - 1))
    hay = haystack(stream, rng, fit(length, parts, "multi-value needles"))
    context, _ = insert_at_depths(hay, list(zip(depths, needles)))
    ids, spans = assemble(context, question, answers, separator)
    return Sample(ids, spans, depth=depth)


def eval_variable_tracking(enc, stream, rng, length, depth, hops=4):
    names = set()
    while len(names) < hops + 1:
        names.add("".join(rng.choice(string.ascii_uppercase) for _ in range(5)))
    names = sorted(names, key=lambda _: rng.random())
    value = random_digits(rng, 5)
    statements = [f"\nVAR {names[0]} = {value}.\n"]
    statements += [f"\nVAR {names[i]} = VAR {names[i - 1]}.\n" for i in range(1, hops + 1)]
    needles = [enc(s) for s in statements]
    depths = sorted([depth] + [depth + (1 - depth) * rng.random() for _ in statements[1:]])
    question = enc(f"\nQuestion: Find all variables that are assigned the value {value} in the "
                   f"text above. Answer: According to the chain of variable assignments in the "
                   f"text above, {hops + 1} variables are assigned the value {value}, they are:")
    answers = [enc(" " + name) for name in names]
    parts = sum(map(len, needles)) + len(question) + sum(map(len, answers))
    hay = haystack(stream, rng, fit(length, parts, "variable tracking"))
    context, _ = insert_at_depths(hay, list(zip(depths, needles)))
    ids, spans = assemble(context, question, answers, [])
    return Sample(ids, spans, depth=depth)


def eval_common_words(enc, stream, rng, length, depth, common_words):
    """A numbered list of words: `common` words 30 times each (fewer in short lists), made-up
    words 3 times each; asks for the common ones (any order). `depth` is unused."""
    del stream, depth
    count = min(10, len(common_words) // 2)
    if count < 3:
        raise TaskError("common-word extraction: the tokenizer has fewer than 6 single-token "
                        "common words; use a larger vocabulary")
    chosen = rng.sample(common_words, count)
    question = enc(f"\nQuestion: What are the {count} most common words in the above list? "
                   f"Answer: The top {count} words that appear most often in the list are:")
    answers = [enc(" " + w) for w in chosen]
    separator = enc(",")
    tail = len(question) + sum(map(len, answers)) + len(separator) * (count - 1)
    budget = length - tail
    entry_tokens = 5  # about: " 12. word"
    entries = max(1, budget // entry_tokens)
    frequency = max(2, min(30, entries // (2 * count)))
    words = [w for w in chosen for _ in range(frequency)]
    while len(words) < entries:
        made_up = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 8)))
        words += [made_up] * 3
    rng.shuffle(words)
    context, n = enc("Below is a numbered list of words."), 0
    for word in words:
        piece = enc(f" {n + 1}. {word}")
        if len(context) + len(piece) > budget:
            break
        context += piece
        n += 1
    if len(context) < budget:  # newlines after the list make the length exact
        context += (enc("\n") * (budget - len(context)))[:budget - len(context)]
    ids, spans = assemble(context, question, answers, separator)
    allowed = {a[0] for a in answers}
    return Sample(ids, [], set_items=([s[0] for s in spans], allowed), depth=None)


def eval_associative_recall(enc, stream, rng, length, depth):
    """Lines "word-word: number" filling the context; asks for the value of the key at
    `depth` of the list."""
    del stream
    question_probe = enc("\nWhat number is paired with the key silent-falcon? Answer:")
    budget = length - len(question_probe) - 8
    lines, used, seen = [], 0, set()
    while True:
        key = f"{rng.choice(EVAL_ADJECTIVES)}-{rng.choice(EVAL_NOUNS)}-{rng.randrange(100)}"
        if key in seen:
            continue
        value = random_digits(rng, 4)
        piece = enc(f"\n{key}: {value}")
        if used + len(piece) > budget and lines:
            break
        seen.add(key)
        lines.append((key, value, piece))
        used += len(piece)
    target = min(len(lines) - 1, round(depth * (len(lines) - 1)))
    key, value, _ = lines[target]
    question = enc(f"\nWhat number is paired with the key {key}? Answer:")
    answer = enc(" " + value)
    # Drop lines from the end (never the queried one) until the question and answer fit.
    while used + len(question) + len(answer) > length and len(lines) > target + 1:
        used -= len(lines.pop()[2])
    context = [t for _, _, piece in lines for t in piece]
    ids, spans = assemble(context, question, [answer], [])
    if len(ids) > length:
        raise TaskError(f"associative recall: {len(ids)} tokens do not fit in {length}")
    if len(ids) < length:  # pad the list's front with newlines so the length is exact
        pad = enc("\n") * (length - len(ids))
        ids, spans = assemble(pad + context, question, [answer], [])
    return Sample(ids, spans, depth=depth)


EVAL_TASKS = {
    "single_needle": eval_single_needle,
    "multikey_needle": eval_multikey,
    "multivalue_needle": eval_multivalue,
    "variable_tracking": eval_variable_tracking,
    "common_words": eval_common_words,
    "associative_recall": eval_associative_recall,
}


def probe_sample(task, enc, stream, rng, length):
    """One training-format sequence (TRAIN_TASKS[task]) as a scored Sample, padded at the front
    with haystack to exactly `length` tokens (key-value lookup may come out shorter)."""
    ids, spans = TRAIN_TASKS[task](enc, stream, rng, length)
    pad = haystack(stream, rng, length - len(ids))
    return Sample(pad + ids, [[p + len(pad) for p in span] for span in spans])


def spread_depths(count):
    """`count` depths spread evenly over [0, 1] (both ends included when count > 1)."""
    return [0.5] if count == 1 else [i / (count - 1) for i in range(count)]


def rng_for(seed, *labels):
    return random.Random(f"{seed}:" + ":".join(map(str, labels)))
