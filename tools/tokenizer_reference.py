#!/usr/bin/env python3
"""Reference data for kiln's tokenizer tests, from HF `tokenizers` (run on a machine that has it).

    python3 tools/tokenizer_reference.py --tokenizer PATH/tokenizer.json \
        --data tests/data/tokenizer --out OUT_DIR

Reads the corpus written by tools/tokenizer_corpus.py and writes into OUT_DIR:
  deepseek_corpus_ids.npy        int32, the ids of every corpus document, concatenated
  deepseek_corpus_offsets.npy    int64, ndocs+1 offsets into the ids (document d is
                                 ids[offsets[d]:offsets[d+1]])
  deepseek_cases.json            decode of random id sequences (with and without special
                                 tokens), encode with encode_special_tokens=True, and
                                 the pre-tokenizer class of every code point (see below)
  synthetic_<name>.json          small tokenizers trained here that exercise what DeepSeek's
                                 file does not use, each with strings and their ids
  versions.json                  tokenizers / Python / unicodedata versions
Add tokens are encoded with add_special_tokens=False (DeepSeek's post-processor adds none).
"""
import argparse
import json
import os
import random
import struct
import sys
import unicodedata

import tokenizers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, normalizers, trainers, AddedToken, Regex


def write_npy(path, values, code):  # code: 'i' int32 or 'q' int64
    descr = {"i": "<i4", "q": "<i8"}[code]
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%d,), }" % (descr, len(values))
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(struct.pack("<%d%s" % (len(values), code), *values))


def codepoint_classes(tok):
    """How DeepSeek's pre-tokenizer treats each code point >= 0x80, from four probes.

    The three Split regexes only distinguish these classes of a character: digit (\\p{N}),
    letter or mark, punctuation or symbol, white space (\\s), and anything else. Splitting
    "a"+c, c+"a", c+"." and c+"\\n" tells them apart (piece counts):
      N (2,2,2,2)  LM (1,1,2,2)  PS (2,2,1,1)  WS (2,1,2,1)  other (2,1,2,2)
    Returns run-length ranges [first, last, class] over 0x80..0x10FFFF (surrogates skipped).
    """
    pt = tok.pre_tokenizer
    sig = {(2, 2, 2, 2): "N", (1, 1, 2, 2): "LM", (2, 2, 1, 1): "PS", (2, 1, 2, 1): "WS", (2, 1, 2, 2): "O"}
    ranges = []
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        key = (len(pt.pre_tokenize_str("a" + c)), len(pt.pre_tokenize_str(c + "a")),
               len(pt.pre_tokenize_str(c + ".")), len(pt.pre_tokenize_str(c + "\n")))
        cls = sig.get(key, "?" + "".join(map(str, key)))
        if ranges and ranges[-1][2] == cls and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        elif ranges and ranges[-1][2] == cls and ranges[-1][1] == 0xD7FF and cp == 0xE000:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, cls])
    return ranges


def deepseek(tok_path, data, out):
    tok = Tokenizer.from_file(tok_path)
    blob = open(os.path.join(data, "corpus.txt"), "rb").read()
    index = json.load(open(os.path.join(data, "corpus_index.json")))["documents"]
    texts = [blob[o:o + n].decode("utf-8") for o, n, _ in index]
    encs = tok.encode_batch(texts, add_special_tokens=False)
    ids, offsets = [], [0]
    bad_roundtrip = 0
    for text, e in zip(texts, encs):
        ids.extend(e.ids)
        offsets.append(len(ids))
        if tok.decode(e.ids, skip_special_tokens=False) != text:
            bad_roundtrip += 1
    write_npy(os.path.join(out, "deepseek_corpus_ids.npy"), ids, "i")
    write_npy(os.path.join(out, "deepseek_corpus_offsets.npy"), offsets, "q")
    print(flush=True)
    print(f"corpus: {len(texts)} documents, {len(blob)} bytes, {len(ids)} ids, HF round trip failures: {bad_roundtrip}")

    # Decode of random id sequences: split multi-byte characters, special tokens, ids
    # out of range, lone continuation bytes.
    r = random.Random(7)
    n = tok.get_vocab_size(with_added_tokens=True)
    decode_cases = []
    for k in range(300):
        length = r.randrange(0, 40)
        seq = []
        for _ in range(length):
            x = r.random()
            if x < 0.7:
                seq.append(r.randrange(0, 128000))
            elif x < 0.8:
                seq.append(r.choice([0, 1, 2, 128803, 128804, 128805, 128814, 128799, 128000, 128821, 128822, 129279]))
            elif x < 0.97:
                seq.append(r.randrange(3, 259))  # the 256 single-byte tokens
            else:
                seq.append(r.choice([129280, 130000, 200000]))  # not in the vocabulary
        decode_cases.append({"ids": seq, "text": tok.decode(seq, skip_special_tokens=False),
                             "text_skip_special": tok.decode(seq, skip_special_tokens=True)})
    # Single ids decoded alone (every 61st: all of them were checked once, see the report).
    single = [[i, tok.decode([i], skip_special_tokens=False)] for i in range(0, n, 61)]

    special_strings = [texts[i] for i, (_, _, kind) in enumerate(index) if kind in ("special", "edge")][:40]
    special_strings = sorted(special_strings, key=len)[:20]  # the shortest, to keep the test data small
    tok.encode_special_tokens = True
    split_special = [{"text": s, "ids": tok.encode(s, add_special_tokens=False).ids} for s in special_strings]
    tok.encode_special_tokens = False

    with open(os.path.join(out, "deepseek_cases.json"), "w") as f:
        json.dump({"decode": decode_cases, "decode_single": single, "encode_special_tokens": split_special},
                  f, ensure_ascii=False, separators=(",", ":"))
    import time
    t0 = time.time()
    classes = codepoint_classes(Tokenizer.from_file(tok_path))
    print(f"code point classes: {len(classes)} ranges in {time.time() - t0:.1f} s", flush=True)
    with open(os.path.join(out, "deepseek_codepoint_classes.json"), "w") as f:
        json.dump(classes, f, separators=(",", ":"))


def train_bpe(texts, vocab_size, pre, normalizer=None, byte_level_alphabet=True, special_tokens=(), **model_kw):
    t = Tokenizer(models.BPE(**model_kw))
    if normalizer is not None:
        t.normalizer = normalizer
    t.pre_tokenizer = pre
    kw = {}
    if byte_level_alphabet:
        kw["initial_alphabet"] = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=list(special_tokens), **kw)
    t.train_from_iterator(texts, trainer=trainer)
    return t


def synthetic(data, out):
    blob = open(os.path.join(data, "corpus.txt"), "rb").read()
    index = json.load(open(os.path.join(data, "corpus_index.json")))["documents"]
    texts = [blob[o:o + n].decode("utf-8") for o, n, _ in index]
    r = random.Random(11)
    train = texts[::3]
    probes = [texts[i][:1500] for i in sorted(r.sample(range(len(texts)), 40))]
    probes += ["", " ", "Hello world", " Hello  world ", "a-b-c 1-2-3", "x [MASK] y", "x[MASK]y", "  [MASK]  z",
               "word words sword word.", "<|special|>word<|special|>", "don't stop", "ﬁne ｆｕｌｌ",
               "naïve café 東京 😀👍🏽", "``quoted''", "<norm> a<norm>b", "tab\tsep\r\nline",
               "1234567890 12 3", "ÀÉÎÕÜ", "\u0085\u2028\u00a0 x"]

    import traceback

    def gpt2():
        # GPT-2 style: ByteLevel with its own regex and a prefix space; added tokens with
        # lstrip/rstrip/single_word/normalized; merges saved as [a, b] pairs.
        t = train_bpe(train, 800, pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True))
        t.decoder = decoders.ByteLevel()
        t.add_special_tokens([AddedToken("<|special|>", special=True, normalized=False)])
        t.add_tokens([AddedToken("[MASK]", lstrip=True, rstrip=True, normalized=False),
                      AddedToken("word", single_word=True), AddedToken("<norm>", normalized=True)])
        return t

    def splits():
        # Split behaviours and invert, Digits, a String pattern, ByteLevel without regex.
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
            pre_tokenizers.Split("-", behavior="merged_with_previous"),
            pre_tokenizers.Split(Regex(r"[0-9]"), behavior="merged_with_next"),
            pre_tokenizers.Split(Regex(r"[aeiou]+"), behavior="contiguous", invert=True),
            pre_tokenizers.Split(Regex(r"[\p{P}]"), behavior="isolated", invert=True),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        t = train_bpe(train, 600, pre)
        t.decoder = decoders.ByteLevel()
        return t

    def bytefallback():
        # Byte fallback and a fused unknown token, no byte-level mapping.
        ascii_train = ["".join(ch for ch in s if ord(ch) < 128) for s in train]
        t = train_bpe(ascii_train, 400, pre_tokenizers.Split(Regex(r" ?[^ ]+"), behavior="isolated"),
                      byte_level_alphabet=False, special_tokens=["<unk>"], byte_fallback=True, unk_token="<unk>",
                      fuse_unk=True)
        t.add_special_tokens([AddedToken("<unk>", special=True)])
        return t

    def normalizer():
        # Normalizers kiln supports (Replace, Prepend), normalized added tokens, Digits
        # individual, ignore_merges.
        norm = normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.Replace(Regex(r"\t+"), " "),
                                     normalizers.Prepend("▁")])
        t = train_bpe(train, 500, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                           pre_tokenizers.ByteLevel(add_prefix_space=False)]),
                      normalizer=norm, ignore_merges=True)
        t.decoder = decoders.ByteLevel()
        t.add_tokens([AddedToken("<norm>", normalized=True), AddedToken("▁x", normalized=True)])
        return t

    cases = {}
    for name, fn in (("gpt2", gpt2), ("splits", splits), ("bytefallback", bytefallback), ("normalizer", normalizer)):
        try:
            cases[name] = fn()
        except Exception:  # noqa: BLE001
            print(f"synthetic {name} FAILED to build")
            traceback.print_exc()

    for name, t in cases.items():
      try:
        js = json.loads(t.to_str())
        if name == "bytefallback":  # add <0x00>..<0xFF> except a few, so both fallback paths run
            vocab = js["model"]["vocab"]
            nxt = max(vocab.values()) + 1
            for b in range(256):
                if b in (0xE4, 0xF0):
                    continue
                vocab["<0x%02X>" % b] = nxt
                nxt += 1
            for a in js["added_tokens"]:
                a["id"] = vocab[a["content"]] if a["content"] in vocab else a["id"]
        if name == "splits":  # merges as "a b" strings (the other files keep [a, b] pairs)
            js["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in js["model"]["merges"]]
        text = json.dumps(js, ensure_ascii=False)
        t2 = Tokenizer.from_str(text)
        enc = [{"text": s, "ids": t2.encode(s, add_special_tokens=False).ids} for s in probes]
        dec = []
        for e in enc[:10]:
            dec.append({"ids": e["ids"], "text": t2.decode(e["ids"], skip_special_tokens=False)})
        # Keep the test data small: 18 corpus probes of <= 900 characters, and the handmade ones.
        enc = [e for e in enc[:40] if len(e["text"]) <= 900][:18] + enc[40:]
        with open(os.path.join(out, f"synthetic_{name}.json"), "w") as f:
            json.dump({"tokenizer": js, "encode": enc, "decode": dec}, f, ensure_ascii=False, separators=(",", ":"))
        print(f"synthetic {name}: vocab {t2.get_vocab_size()}")
      except Exception:  # noqa: BLE001
        print(f"synthetic {name} FAILED")
        traceback.print_exc()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-deepseek", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "versions.json"), "w") as f:
        json.dump({"tokenizers": tokenizers.__version__, "python": sys.version,
                   "unidata": unicodedata.unidata_version}, f)
    import traceback
    try:
        synthetic(a.data, a.out)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    if not a.skip_deepseek:
        deepseek(a.tokenizer, a.data, a.out)


if __name__ == "__main__":
    main()
