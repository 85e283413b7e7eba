"""The tokenizer oracle, computed at test time: HF `tokenizers` (PyPI, pinned in
scripts/python-requirements.txt) tokenizes freshly generated text with DeepSeek-V4's
tokenizer.json, and kiln's tokenizer must give the same ids and decoded text.

    python hf_oracle.py --tokenizer tokenizer.json --check KILN_TOKENIZER_HF_CHECK [--seed N] [--cases N]

Generates (from a seeded RNG) strings that stress the pre-tokenizer and the added
tokens: text decoded from random vocabulary ids, random code points from many scripts
(letters, marks, digits of other scripts, punctuation, symbols, every kind of white
space, emoji), added tokens spliced into text whole and cut short, digit runs, code.
Writes their HF ids (encode with and without encode_special_tokens) and HF decodes of
random id sequences to a JSON file, then runs the C++ checker
(tests/tools/tokenizer_hf_check.cpp) on it, which exits non-zero on any difference.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import tokenizers
from tokenizers import Tokenizer

# (first, last) code point ranges, each drawn with equal weight.
RANGES = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E),  # ASCII, three times as likely
    (0xA0, 0xFF), (0x100, 0x24F), (0x300, 0x36F),  # Latin-1, Latin extended, combining marks
    (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x660, 0x669),  # Greek .. Arabic-Indic digits
    (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F),  # Devanagari, Thai, Jamo, general punct.
    (0x20A0, 0x20CF), (0x2100, 0x214F), (0x2190, 0x21FF), (0x2200, 0x22FF),  # currency, letterlike, arrows, math
    (0x2460, 0x24FF), (0x2500, 0x257F), (0x3000, 0x303F), (0x3040, 0x30FF),  # enclosed, box, CJK punct., kana
    (0x4E00, 0x9FA5), (0x4E00, 0x9FA5), (0x9FA6, 0x9FFF), (0xAC00, 0xD7A3),  # CJK (twice), beyond 9FA5, Hangul
    (0xFF00, 0xFFEF), (0xFE00, 0xFE0F), (0x1F300, 0x1FAFF), (0x1D400, 0x1D7FF),  # full-width, selectors, emoji, math
    (0x10000, 0x1007F), (0x20000, 0x2A6DF), (0xE0000, 0xE007F),  # Linear B, CJK ext. B, tags
]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\n\n", " \n", "\u00a0", "\u3000", "\u2028", "\u2009", "\u200b", "\x0b", "\x0c"]
SNIPPETS = ["def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {", "SELECT * FROM t WHERE a='b';",
            "http://example.com/a?b=c&d=e", "3.14159", "1,234,567.89", "12345678901234567890", "x_1y2z3",
            "It's", "don't", "I'M", "we'll", "'s", "\"quoted\"", "(paren)", "<tag attr=\"v\">", "</think>",
            "<think>", "--flag=value", "a.b.c", "...", "!!!", "¿Qué?", "naïve café", "Ελληνικά", "Русский текст"]


def random_codepoints(rng, n):
    out = []
    for _ in range(n):
        lo, hi = rng.choice(RANGES)
        cp = rng.randint(lo, hi)
        out.append(chr(cp))
    return "".join(out)


def make_texts(rng, tok, count):
    vocab = tok.get_vocab_size(with_added_tokens=False)
    added = [t.content for t in tok.get_added_tokens_decoder().values()]
    texts = []
    while len(texts) < count:
        kind = len(texts) % 6
        if kind == 0:  # text decoded from random vocabulary ids
            ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
            texts.append(tok.decode(ids, skip_special_tokens=False))
        elif kind == 1:  # random code points
            texts.append(random_codepoints(rng, rng.randint(1, 60)))
        elif kind == 2:  # pieces joined by odd white space
            parts = [rng.choice([random_codepoints(rng, rng.randint(1, 6)), rng.choice(SNIPPETS),
                                 str(rng.randint(0, 10 ** rng.randint(1, 12)))]) for _ in range(rng.randint(2, 8))]
            texts.append("".join(p + rng.choice(SPACES) * rng.randint(1, 3) for p in parts))
        elif kind == 3:  # added tokens spliced in, whole or cut short, with and without surrounding space
            parts = []
            for _ in range(rng.randint(1, 6)):
                t = rng.choice(added)
                if rng.random() < 0.3:
                    t = t[: rng.randint(1, max(1, len(t) - 1))]
                parts.append(rng.choice(["", " ", "\n", rng.choice(SNIPPETS)]) + t)
            texts.append("".join(parts) + rng.choice(["", " x", "\n"]))
        elif kind == 4:  # digits, punctuation and letters in tight mixes
            alphabet = "0123456789.,;:-_+=/\\'\"()[]{}<>!?@#$%^&*~` aZ\u00e9\u4e2d\u0661\uff11"
            texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50))))
        else:  # longer mixed documents
            texts.append("".join(rng.choice([rng.choice(SNIPPETS), random_codepoints(rng, rng.randint(1, 20)),
                                             rng.choice(SPACES), rng.choice(added)])
                                 for _ in range(rng.randint(5, 40))))
    return texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--check", required=True, help="the tokenizer_hf_check binary")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("KILN_ORACLE_SEED", "20261206")))
    ap.add_argument("--cases", type=int, default=3000)
    args = ap.parse_args()
    if not os.path.exists(args.tokenizer):
        sys.exit(f"error: {args.tokenizer} does not exist (scripts/setup.sh installs DeepSeek-V4's tokenizer.json)")
    tok = Tokenizer.from_file(args.tokenizer)
    rng = random.Random(args.seed)
    texts = make_texts(rng, tok, args.cases)
    encode = [{"text": t, "ids": e.ids} for t, e in zip(texts, tok.encode_batch(texts, add_special_tokens=False))]
    tok.encode_special_tokens = True
    split = [{"text": t, "ids": e.ids, "split_special_tokens": True}
             for t, e in zip(texts[::5], tok.encode_batch(texts[::5], add_special_tokens=False))]
    n = tok.get_vocab_size(with_added_tokens=True)
    decode = []
    for _ in range(args.cases // 3):
        ids = [rng.randrange(n) for _ in range(rng.randint(1, 30))]
        decode.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                       "text_skip_special": tok.decode(ids, skip_special_tokens=True)})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "hf_oracle.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"tokenizers_version": tokenizers.__version__, "seed": args.seed,
                       "encode": encode + split, "decode": decode}, f, ensure_ascii=False)
        print(f"HF tokenizers {tokenizers.__version__}, seed {args.seed}: {len(encode) + len(split)} encode "
              f"and {len(decode)} decode cases", flush=True)
        sys.exit(subprocess.call([args.check, args.tokenizer, path]))


if __name__ == "__main__":
    main()
