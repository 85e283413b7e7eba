#!/usr/bin/env python3
"""Builds the tokenizer test corpus deterministically (fixed seed, word lists below).

    python3 tools/tokenizer_corpus.py [OUT_DIR]      (default tests/data/tokenizer)

Writes
  corpus.txt          the documents, concatenated (UTF-8, no separators)
  corpus_index.json   {"documents": [[byte_offset, byte_length, kind], ...]}

The mix: English prose, source code (Python, C++, JavaScript, JSON, shell, Markdown),
Chinese, Japanese, Korean, other scripts (Cyrillic, Greek, Arabic, Hebrew, Devanagari,
Thai, Vietnamese, combining marks), emoji (skin tones, ZWJ sequences, flags, keycaps,
emoji newer than Unicode 14), whitespace runs (tabs, newlines, CRLF, lone CR, NBSP,
U+0085, U+2028, U+3000, zero-width characters), long digit runs and non-ASCII digits,
punctuation runs, mixed scripts, DeepSeek special-token text embedded in prose (whole
and truncated), and random code points from every plane. Output depends only on this
file: no other input is read.
"""
import json
import os
import random
import sys

SEED = 20261122
TARGET_BYTES = 1_100_000

EN_WORDS = """the of and to in a is that for it as was with be by on not he i this are or his from at
which but have an they you were her she there been one all we their has would when if so no
what can more about other into some could them time these two may then do first any my now such
like our over man me even most made after also did many before must through back years where much
your way well down should because each just those people how too little state good very make world
still own see men work long get here between both life being under never day same another know
while last might us great old year off come since against go came right used take three small
kernel tensor model server request token stream batch latency throughput memory cache weight
expert router attention layer gradient matrix vector quantized compressed sparse dense window
function variable pointer compiler runtime thread mutex socket buffer protocol parser encoder
decoder channel signal archive library package version release branch commit merge rebase
mountain river ocean forest desert valley island harbor village castle bridge tower garden
coffee bread cheese apple orange banana tomato potato onion garlic pepper butter honey sugar
happy quickly slowly brightly quietly loudly gently roughly carefully easily barely nearly
Monday Tuesday January February London Paris Tokyo Berlin Madrid Rome Seoul Beijing Cairo
don't can't won't isn't it's we're they've I'm you'll she'd O'Neil rock'n'roll""".split()

ZH_WORDS = """我们 你们 他们 今天 明天 昨天 时间 问题 学生 老师 学校 中国 北京 上海 世界 经济 发展
社会 文化 历史 科学 技术 计算机 程序 模型 数据 训练 推理 服务器 内存 显卡 网络 系统 用户 助手
你好 谢谢 对不起 没关系 可以 不可以 喜欢 知道 觉得 已经 还是 因为 所以 但是 如果 虽然 而且
一个 两个 三个 很多 非常 特别 重要 简单 复杂 快速 安全 开放 源代码 人工智能 深度学习 自然语言
春天 夏天 秋天 冬天 山水 花草 龙 凤 鱼 鸟 马 牛 羊 猫 狗 书 笔 纸 墨 茶 酒 饭 菜 汤 面包
深度求索 大语言模型 混合专家 注意力机制 量化 张量 梯度 矩阵 向量 龘 靐 齉 爨""".split()
ZH_PUNCT = list("，。！？、；：“”‘’（）《》【】…—·")

JA_WORDS = """こんにちは ありがとう ございます すみません おはよう こんばんは さようなら わたし あなた
かれ かのじょ ともだち せんせい がくせい にほん とうきょう おおさか きょうと カタカナ ひらがな
コンピュータ プログラム データ モデル サーバー メモリ ネットワーク システム ユーザー アシスタント
日本語 東京 大阪 京都 天気 電車 新幹線 会社 学校 先生 学生 時間 問題 仕事 勉強 料理 映画 音楽
食べる 飲む 行く 来る 見る 聞く 話す 読む 書く 思う 分かる ください でしょう ですね ましょう
ｶﾀｶﾅ ﾊﾝｶｸ ヴァイオリン ゐゑ ゝゞ ヽヾ ー""".split()
JA_PUNCT = list("、。「」『』・！？（）〜")

KO_WORDS = """안녕하세요 감사합니다 죄송합니다 사랑해요 한국어 서울 부산 대한민국 학교 선생님 학생
컴퓨터 프로그램 데이터 모델 서버 메모리 네트워크 시스템 사용자 도우미 오늘 내일 어제 시간 문제
먹다 마시다 가다 오다 보다 듣다 말하다 읽다 쓰다 생각하다 알다 그리고 하지만 그래서 왜냐하면
똠방각하 뷁 쀍 ᄀᄁᄂ ㄱㄴㄷ""".split()

OTHER_SCRIPT_WORDS = """Привет мир Москва Санкт-Петербург ёжик съешь ещё этих мягких французских булок
Γειά σου κόσμε Αθήνα ψυχή ΑΒΓΔ αβγδ ς
مرحبا بالعالم القاهرة اللغة العربية كتاب ٠١٢٣٤٥٦٧٨٩
שלום עולם ירושלים עברית
नमस्ते दुनिया हिन्दी भारत क्षत्रिय ज्ञान
สวัสดีชาวโลก ภาษาไทย กรุงเทพมหานคร
Xin chào thế giới Tiếng Việt Hà Nội người đường
Ⴀ ქართული Հայաստան ትግርኛ ᏣᎳᎩ ᠮᠣᠩᠭᠣᠯ ꦗꦮ 𐌰𐌱𐌲 𓀀𓂀 𒀀""".split()

EMOJI = ["😀", "😂", "🥲", "🫠", "🤖", "🔥", "✨", "❤️", "❤", "👍", "👍🏻", "👍🏽", "👍🏿", "👋🏼",
         "👩‍💻", "👨‍👩‍👧‍👦", "🧑🏾‍🚀", "🏳️‍🌈", "🏴‍☠️", "👁️‍🗨️", "🧔🏻‍♀️", "🫱🏼‍🫲🏿",
         "🇯🇵", "🇺🇸", "🇨🇳", "🇰🇷", "🇩🇪", "1️⃣", "#️⃣", "*️⃣", "©️", "™️", "↔️", "☺️",
         "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🩷", "🩵", "🫨", "🪿", "🫎", "🛜", "🐦‍🔥", "🍋‍🟩", "🙂‍↔️", "⛓️‍💥",
         "🫩", "🫆", "🪾", "🫜", "🪉", "🪏", "🫟"]  # the last rows: Unicode 15.0, 15.1, 16.0

ODD_SPACES = ["\u00a0", "\u0085", "\u1680", "\u2000", "\u2003", "\u2009", "\u200a", "\u2028",
              "\u2029", "\u202f", "\u205f", "\u3000", "\u200b", "\u200c", "\u200d", "\ufeff",
              "\u180e", "\u000b", "\u000c", "\u001c", "\u001f"]

DIGIT_BITS = ["１２３４５", "٠١٢٣", "۴۵۶", "०१२३", "๑๒๓", "²³¹", "½¾⅓", "ⅫⅣⅸ", "①②③",
              "𝟘𝟙𝟚", "〇一二", "፩፪"]

PUNCT_RUNS = ["...", "!!!", "???", "?!", "--", "---", "->", "=>", "<=", "==", "!==", "::", ";;",
              "```", "'''", '"""', "<<", ">>", "&&", "||", "**", "//", "/*", "*/", "#!", "@@", "$$",
              "«", "»", "—", "–", "…", "‽", "§", "¶", "†", "‡", "•", "°", "±", "×", "÷", "€",
              "£", "¥", "₿", "→", "⇒", "∀", "∃", "∑", "∫", "≈", "≠", "≤", "≥", "√", "∞", "¿", "¡",
              "(", ")", "[", "]", "{", "}", "<", ">", "'", '"', "`", "~", "^", "|", "\\", "%", "&"]

IDENTS = ["x", "y", "i", "j", "n", "idx", "count", "total", "buffer", "tokens", "model", "config",
          "request", "response", "self", "ctx", "data", "value", "result", "items", "batch_size",
          "num_heads", "hidden_dim", "maxLen", "getValue", "HTTPServer", "kMaxTokens", "__init__",
          "_private", "camelCaseName", "snake_case_name", "SCREAMING_CASE", "ünïcödé", "变量", "変数"]

CJK_EXTRA = "㐀㐁𠀀𠀁𪜀𫝀𬺰𰀀𰀁𱍐𲎯"  # Ext A, Ext B..H (the last ones are Unicode 13..15.1)

SPECIAL_TEXT = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>",
                "<｜Assistant｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<|EOT|>",
                "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
                "<｜tool▁call▁end｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
                "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁sep｜>",
                "<｜place▁holder▁no▁0｜>", "<｜place▁holder▁no▁17｜>", "<｜place▁holder▁no▁799｜>",
                "<think>", "</think>", "｜DSML｜", "<｜begin▁of", "<｜User", "｜>", "<｜", "▁",
                "<｜place▁holder▁no▁800｜>", "<|endoftext|>", "<s>", "</s>"]


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def pick(self, xs):
        return xs[self.r.randrange(len(xs))]

    def num(self):
        r = self.r.random()
        if r < 0.3:
            return str(self.r.randrange(10))
        if r < 0.6:
            return str(self.r.randrange(10 ** self.r.randrange(2, 7)))
        if r < 0.75:
            return f"{self.r.uniform(-1e4, 1e4):.{self.r.randrange(1, 6)}f}"
        if r < 0.85:
            return "".join(self.pick("0123456789") for _ in range(self.r.randrange(8, 120)))
        if r < 0.9:
            return f"{self.r.randrange(1, 999)},{self.r.randrange(1000):03d},{self.r.randrange(1000):03d}"
        if r < 0.95:
            return f"{self.r.randrange(1990, 2030)}-{self.r.randrange(1, 13):02d}-{self.r.randrange(1, 29):02d}"
        return f"{self.r.uniform(0, 1):.3e}"

    def english_sentence(self):
        n = self.r.randrange(4, 22)
        words = []
        for k in range(n):
            w = self.pick(EN_WORDS)
            r = self.r.random()
            if r < 0.05:
                w = self.num()
            elif r < 0.08:
                w = w.upper()
            elif r < 0.12:
                w = f'"{w}"'
            elif r < 0.14:
                w = f"({w})"
            elif r < 0.16:
                w = w + self.pick([",", ";", ":", " -", "'s", "s'"])
            words.append(w)
            if k + 1 < n and self.r.random() < 0.07:
                words.append(self.pick([",", "—", "-", "&", "/"]))
        s = " ".join(words)
        s = s[0].upper() + s[1:]
        return s + self.pick([".", ".", ".", "!", "?", "...", "?!", ":", ";"])

    def english(self):
        paras = []
        for _ in range(self.r.randrange(1, 6)):
            paras.append(" ".join(self.english_sentence() for _ in range(self.r.randrange(1, 7))))
            if self.r.random() < 0.2:
                paras[-1] += f" See https://example.com/{self.pick(IDENTS)}?q={self.num()}&lang=en#sec-{self.r.randrange(9)}"
            if self.r.random() < 0.1:
                paras[-1] += f" Mail {self.pick(IDENTS)}.{self.pick(IDENTS)}@example.org."
        return self.pick(["\n\n", "\n", "\r\n\r\n", "\n \n"]).join(paras)

    def python_code(self):
        name = self.pick(IDENTS)
        indent = self.pick(["    ", "  ", "\t"])
        lines = [f"def {name}_{self.r.randrange(100)}({self.pick(IDENTS)}, {self.pick(IDENTS)}={self.num()}):",
                 f'{indent}"""{self.english_sentence()}"""']
        for _ in range(self.r.randrange(2, 12)):
            kind = self.r.randrange(6)
            a, b = self.pick(IDENTS), self.pick(IDENTS)
            if kind == 0:
                lines.append(f"{indent}{a} = {b} + {self.num()}")
            elif kind == 1:
                lines.append(f"{indent}for {a} in range({self.num()}):")
                lines.append(f"{indent}{indent}{b}[{a}] += {a} ** 2  # {self.english_sentence()}")
            elif kind == 2:
                lines.append(f"{indent}if {a} is not None and {b} >= {self.num()}:")
                lines.append(f"{indent}{indent}raise ValueError(f\"bad {{{a}!r}}: {self.pick(ZH_WORDS)}\")")
            elif kind == 3:
                lines.append(f"{indent}{a} = [{', '.join(self.num() for _ in range(self.r.randrange(1, 8)))}]")
            elif kind == 4:
                lines.append("")
            else:
                lines.append(f"{indent}return {{'{a}': {b}, \"{self.pick(IDENTS)}\": None}}")
        sep = "\r\n" if self.r.random() < 0.15 else "\n"
        text = sep.join(lines) + sep
        if self.r.random() < 0.2:
            text += " " * self.r.randrange(1, 9) + sep * self.r.randrange(1, 4)
        return text

    def cpp_code(self):
        t = self.pick(["int", "float", "std::string", "std::vector<int>", "auto", "const char*", "uint64_t"])
        a, b = self.pick(IDENTS), self.pick(IDENTS)
        body = [f"#include <{self.pick(['vector', 'string', 'cstdint', 'algorithm'])}>",
                f"// {self.english_sentence()}",
                f"static {t} {a}_{self.r.randrange(99)}({t} {b}, int n) {{",
                f"  for (int i = 0; i < n; ++i) {{ {b} += i * {self.num()}; }}",
                f"  if ({b} != {self.num()} && n >= 0x{self.r.randrange(1 << 16):04X}) return {b};",
                f"  /* {self.pick(ZH_WORDS)} {self.pick(JA_WORDS)} */",
                f"  std::printf(\"%d\\n\", n); // ->  ::  <<  >>=  &&  ||",
                f"  return {b}{self.pick(['', '.size()', '->next', '[0]'])};",
                "}", ""]
        return "\n".join(body)

    def js_code(self):
        a = self.pick(IDENTS)
        return (f"const {a} = async ({self.pick(IDENTS)}) => {{\n\tconst res = await fetch(`/api/v1/{a}?id=${{{self.num()}}}`);\n"
                f"\tif (!res.ok) throw new Error('{self.english_sentence()}');\n\treturn res.json() ?? {{}};\n}};\n"
                f"export default {a}; // {self.pick(EMOJI)}\n")

    def json_doc(self):
        obj = {self.pick(IDENTS): self.num() for _ in range(self.r.randrange(1, 6))}
        obj["text"] = self.pick([self.english_sentence(), self.chinese(), self.pick(JA_WORDS)])
        obj["list"] = [self.r.randrange(-1000, 1000) for _ in range(self.r.randrange(0, 9))]
        obj["nested"] = {"ok": self.r.random() < 0.5, "none": None, "pi": 3.14159}
        indent = self.pick([None, 2, 4, "\t"])
        return json.dumps(obj, ensure_ascii=self.r.random() < 0.3, indent=indent) + "\n"

    def shell(self):
        return (f"$ {self.pick(['ls -la', 'git status', 'cmake --build build -j 16', 'python3 -m pip list'])} | grep {self.pick(IDENTS)}\n"
                f"export PATH=/usr/local/bin:$PATH && echo \"${{HOME}}/{self.pick(IDENTS)}\" >> ~/.bashrc\n"
                f"for f in *.txt; do wc -l \"$f\"; done 2>&1 | tee log-{self.num()}.txt\n")

    def markdown(self):
        out = [f"# {self.english_sentence()}", "", f"- **{self.pick(EN_WORDS)}**: {self.english_sentence()}",
               f"- _{self.pick(ZH_WORDS)}_ `{self.pick(IDENTS)}()`", "", "| a | b | c |", "|---|:-:|--:|",
               f"| {self.num()} | {self.pick(KO_WORDS)} | {self.pick(EMOJI)} |", "", "```python", self.python_code().rstrip(), "```", ""]
        return "\n".join(out)

    def cjk_text(self, words, punct, join=""):
        parts = []
        for _ in range(self.r.randrange(5, 60)):
            r = self.r.random()
            if r < 0.75:
                parts.append(self.pick(words))
            elif r < 0.9:
                parts.append(self.pick(punct))
            elif r < 0.95:
                parts.append(self.num())
            else:
                parts.append(" " + self.pick(EN_WORDS) + " ")
        return join.join(parts)

    def chinese(self):
        return self.cjk_text(ZH_WORDS, ZH_PUNCT)

    def japanese(self):
        return self.cjk_text(JA_WORDS, JA_PUNCT)

    def korean(self):
        return self.cjk_text(KO_WORDS, [".", ",", "?", "!", " "], join=" ")

    def other_scripts(self):
        words = [self.pick(OTHER_SCRIPT_WORDS) for _ in range(self.r.randrange(3, 30))]
        s = " ".join(words)
        if self.r.random() < 0.3:  # Zalgo: stacks of combining marks
            s += " " + "".join(c + "".join(chr(self.r.randrange(0x300, 0x370)) for _ in range(self.r.randrange(1, 6)))
                               for c in "zalgo text")
        if self.r.random() < 0.3:  # decomposed accents
            s += " e\u0301te\u0301 cafe\u0301 n\u0303 A\u030a"
        return s

    def emoji_text(self):
        parts = []
        for _ in range(self.r.randrange(3, 40)):
            r = self.r.random()
            if r < 0.5:
                parts.append(self.pick(EMOJI) * self.r.randrange(1, 4))
            elif r < 0.8:
                parts.append(" " + self.pick(EN_WORDS))
            elif r < 0.9:
                parts.append(self.pick(ZH_WORDS))
            else:
                parts.append(self.pick(["!", " ", "\n", "...", "1️⃣2️⃣", self.num()]))
        return "".join(parts)

    def whitespace_text(self):
        parts = []
        for _ in range(self.r.randrange(5, 40)):
            r = self.r.random()
            if r < 0.3:
                parts.append(" " * self.r.randrange(1, 40))
            elif r < 0.45:
                parts.append("\t" * self.r.randrange(1, 8))
            elif r < 0.6:
                parts.append(self.pick(["\n", "\r\n", "\r", "\n\n", "\r\n\r\n", " \n", "\t\n", "\n ", "\r\r\n"]) * self.r.randrange(1, 5))
            elif r < 0.75:
                parts.append("".join(self.pick(ODD_SPACES) for _ in range(self.r.randrange(1, 4))))
            else:
                parts.append(self.pick([self.pick(EN_WORDS), self.pick(ZH_WORDS), self.num(), self.pick(PUNCT_RUNS)]))
        return "".join(parts)

    def digits_text(self):
        parts = []
        for _ in range(self.r.randrange(3, 30)):
            r = self.r.random()
            if r < 0.6:
                parts.append(self.num())
            elif r < 0.8:
                parts.append(self.pick(DIGIT_BITS))
            else:
                parts.append(self.pick(EN_WORDS + PUNCT_RUNS))
            parts.append(self.pick(["", " ", ",", ".", "\n", "x", "元", "%"]))
        return "".join(parts)

    def punct_text(self):
        return "".join(self.pick(PUNCT_RUNS) + self.pick(["", "", " ", "a", "\n", "的", "Word"])
                       for _ in range(self.r.randrange(5, 60)))

    def mixed(self):
        pool = [lambda: self.pick(EN_WORDS), lambda: self.pick(ZH_WORDS), lambda: self.pick(JA_WORDS),
                lambda: self.pick(KO_WORDS), lambda: self.pick(OTHER_SCRIPT_WORDS), lambda: self.pick(EMOJI),
                self.num, lambda: self.pick(PUNCT_RUNS), lambda: self.pick(DIGIT_BITS), lambda: self.pick(CJK_EXTRA),
                lambda: self.pick(IDENTS), lambda: self.pick(ODD_SPACES)]
        return self.pick(["", " ", "  "]).join(self.pick(pool)() for _ in range(self.r.randrange(5, 50)))

    def special(self):
        parts = []
        for _ in range(self.r.randrange(3, 25)):
            r = self.r.random()
            if r < 0.4:
                parts.append(self.pick(SPECIAL_TEXT))
            elif r < 0.6:
                parts.append(self.english_sentence())
            elif r < 0.7:
                parts.append(self.chinese())
            else:
                parts.append(self.pick(["", " ", "\n", "  ", "\n\n", "\t", "x", "1"]))
        return "".join(parts)

    def random_codepoints(self):
        out = []
        for _ in range(self.r.randrange(5, 80)):
            r = self.r.random()
            if r < 0.4:
                cp = self.r.randrange(0x80, 0x3000)
            elif r < 0.6:
                cp = self.r.randrange(0x3000, 0x10000)
            elif r < 0.9:
                cp = self.r.randrange(0x10000, 0x32000)
            else:
                cp = self.r.randrange(0xE0000, 0x110000)
            if 0xD800 <= cp < 0xE000:
                cp = 0xFFFD
            out.append(chr(cp))
            if self.r.random() < 0.2:
                out.append(self.pick([" ", "a", "1", ".", "\n", "中"]))
        return "".join(out)


def build():
    g = Gen(SEED)
    kinds = [("english", g.english, 12), ("python", g.python_code, 8), ("cpp", g.cpp_code, 5),
             ("js", g.js_code, 3), ("json", g.json_doc, 4), ("shell", g.shell, 2), ("markdown", g.markdown, 3),
             ("chinese", g.chinese, 20), ("japanese", g.japanese, 10), ("korean", g.korean, 7),
             ("scripts", g.other_scripts, 5), ("emoji", g.emoji_text, 9), ("whitespace", g.whitespace_text, 7),
             ("digits", g.digits_text, 6), ("punct", g.punct_text, 5), ("mixed", g.mixed, 6),
             ("special", g.special, 4), ("codepoints", g.random_codepoints, 6)]
    weights = [w for _, _, w in kinds]
    docs = []
    total = 0
    while total < TARGET_BYTES:
        name, fn, _ = g.r.choices(kinds, weights)[0]
        n = 1 if g.r.random() < 0.7 else g.r.randrange(2, 12)  # some long documents
        text = "".join(fn() for _ in range(n))
        if g.r.random() < 0.05:
            text = " " + text
        docs.append((name, text))
        total += len(text.encode())
    # A few edge documents.
    edge = ["", " ", "\n", "a", "1234567", "<｜begin▁of▁sentence｜>", "<｜User｜><｜Assistant｜>",
            " " * 1000, "\n" * 100, "\r\n" * 50, "9" * 1000, "中" * 500, "😀" * 200, "ab" * 2000,
            "\t \t \n \r\n\u3000\u00a0 x"]
    docs.extend(("edge", t) for t in edge)
    return docs


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "tokenizer")
    os.makedirs(out, exist_ok=True)
    docs = build()
    blob = bytearray()
    index = []
    for kind, text in docs:
        b = text.encode("utf-8")
        index.append([len(blob), len(b), kind])
        blob += b
    with open(os.path.join(out, "corpus.txt"), "wb") as f:
        f.write(blob)
    with open(os.path.join(out, "corpus_index.json"), "w") as f:
        json.dump({"seed": SEED, "documents": index}, f, separators=(",", ":"))
        f.write("\n")
    counts = {}
    for kind, text in docs:
        c = counts.setdefault(kind, [0, 0])
        c[0] += 1
        c[1] += len(text.encode())
    print(f"{len(docs)} documents, {len(blob)} bytes")
    for k, (n, b) in sorted(counts.items(), key=lambda kv: -kv[1][1]):
        print(f"  {k:12s} {n:5d} docs {b:9d} bytes")


if __name__ == "__main__":
    main()
