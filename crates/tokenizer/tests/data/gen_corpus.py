#!/usr/bin/env python3
"""Writes corpus.json: the test strings for the tokenizer corpus tests (GGUF vocabularies
against llama.cpp's llama-tokenize, tokenizer.model against SentencePiece / tiktoken).

Deterministic: run `python3 gen_corpus.py` in this directory; no inputs."""
import json
import os

here = os.path.dirname(os.path.abspath(__file__))

c = []
# plain English, punctuation, casing
c += [
    "Hello world",
    "Q: What is the largest animal?\nA:",
    "The blue whale is the largest animal known to have ever lived.",
    "It can grow to 30 meters and weigh up to 199 tonnes, yet it feeds almost entirely on krill.",
    "hello",
    "HELLO WORLD",
    "hElLo WoRlD",
    "a",
    " ",
    "Hello, world! How are you? I'm fine; thanks.",
    "e.g. i.e. etc. Mr. Smith vs. Dr. Jones",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX",
    "supercalifragilisticexpialidocious",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "Wait... what?!",
    "(parentheses) [brackets] {braces} <angles>",
    "\"double quotes\" and 'single quotes' and `backticks`",
    "semi;colon:colon,comma.period",
    "hyphen-ated and en–dash and em—dash",
    "under_score and CamelCase and snake_case_name and kebab-case-name",
    "email@example.com http://example.com/path?query=1&x=2#frag",
    "C:\\Users\\name\\file.txt",
    "/usr/local/bin/python3 --version",
    "50% off! $19.99 only, #1 deal @ store & more ^_^ ~tilde~ |pipe|",
    "+-*/=<>!&|^%",
]
# whitespace: leading/trailing, runs, tabs, newlines, carriage returns
c += [
    " leading space",
    "  two leading spaces",
    "   three leading",
    "trailing space ",
    "trailing spaces   ",
    " both sides ",
    "a  b   c    d     e      f",
    "x" + " " * 10 + "y",
    "x" + " " * 31 + "y",
    "x" + " " * 40 + "y",
    "tabs\tand\nnewlines\r\n",
    "\ttab first",
    "tab\t\tdouble\t\t\ttriple",
    "\t" * 5 + "deep",
    "line1\nline2\nline3",
    "para1\n\npara2\n\n\npara3",
    "\n",
    "\n\n",
    "\n" * 5,
    "\n" * 31,
    "\n" * 40,
    "a\n" * 10,
    "\r\n\r\n",
    "windows\r\nline\r\nendings\r\n",
    "mixed \t \n \r\n spaces",
    "  \n  indented after newline",
    "end with newline\n",
    " \n \n ",
    "   ",
    "\t",
    "\u00a0non-breaking\u00a0space",
    "ideographic\u3000space",
    "em\u2003space and thin\u2009space",
    "line\u2028separator",
    "next\u0085line",
    "zero\u200bwidth\u200bspace",
    "soft\u00adhyphen",
    "\ufeffbyte order mark",
    "vertical\x0btab and form\x0cfeed",
]
# digits
c += [
    "1", "12", "123", "1234", "12345", "123456", "1234567",
    "12345678901234567890",
    "3.14159",
    "1,000,000",
    "1 000 000",
    "0x1F 0b1010 0o777",
    "2024-01-15T12:34:56Z",
    "+1 (555) 123-4567",
    "version 1.2.3-beta.4",
    "a1b2c3d4",
    "42nd street, 3rd floor",
    "x²+y³ = z⁴",
    "½ ¼ ¾",
    "Ⅻ Roman numeral twelve",
    "Arabic-Indic ٠١٢٣٤٥٦٧٨٩",
    "Devanagari digits ०१२३",
    "fullwidth １２３",
]
# contractions and quotes
c += [
    "don't you're we'll I'm",
    "DON'T YOU'RE WE'LL I'M",
    "it's they've she'd he'll",
    "'s 't 're 've 'm 'll 'd",
    "''quoted''",
    "rock 'n' roll",
    "the dog's bone, the dogs' bones",
    "I'M'S'T",
    "can't won't shan't",
    "y'all'd've",
    "’curly’ “quotes”",
]
# unicode scripts
c += [
    "naïve café 中文 🦙",
    "Ångström résumé façade",
    "e\u0301 combining acute",
    "Straße groß",
    "İstanbul ıi",
    "Ελληνικά: Γειά σου Κόσμε",
    "Русский: Привет, мир!",
    "العربية: مرحبا بالعالم",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया",
    "ไทย: สวัสดีชาวโลก",
    "한국어: 안녕하세요 세계",
    "日本語: こんにちは世界、カタカナ",
    "中文：你好，世界！这是一个测试。",
    "繁體中文：你好，世界",
    "Tiếng Việt: Xin chào thế giới",
    "ქართული ენა",
    "Հայերեն",
    "አማርኛ",
    "ᚠᚢᚦᚨᚱᚲ runes",
    "𓀀𓀁 hieroglyphs",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙",
    "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ",
    "ﬁ ligature ﬂ",
    "Ⓐⓑⓒ circled",
]
# emoji and symbols
c += [
    "🦙",
    "👍🏽 thumbs up medium skin",
    "👨‍👩‍👧‍👦 family",
    "🇫🇷🇯🇵 flags",
    "❤️ heart with selector",
    "😀😃😄😁😆😅😂🤣",
    "emoji🙂inside🙃words",
    "∑∫∂√∞≠≤≥ math",
    "€£¥₹₿ currency",
    "→←↑↓ arrows ⇒",
    "┌─┬─┐ box │ drawing └─┴─┘",
    "©®™ §¶ †‡ •",
    "♠♣♥♦ ♪♫",
    "\ue000 private use",
    "\u0378 unassigned",
    "\x00 nul",
    "\x07 bell \x1b[31m escape",
    "del \x7f char",
]
# code
c += [
    "def hello(name):\n    print(f\"Hello, {name}!\")\n    return None\n",
    "fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "if x == 1 and y != 2 or not z:\n        pass\n",
    "const f = (a, b) => a + b; // arrow\n/* block */",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "<html><body><div class=\"x\">Hello</div></body></html>",
    "<a href=\"#\">link</a><br/><img src=\"x.png\">",
    "$ ls -la | grep '^d' && echo \"done\" > /dev/null 2>&1",
    "    indented four\n        indented eight\n",
    "\tdef tabbed():\n\t\treturn 1\n",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "a->b; c::d; e=>f; g<=h; i!==j; k===l",
    "import numpy as np\nimport torch.nn.functional as F\n",
    "// TODO: fix this!!!\n# FIXME\n-- comment",
    "@decorator\nclass Foo(Bar):\n    __slots__ = ()\n",
    "0.5f + 1e-5 - 3.0E+10",
    "```python\nprint('hi')\n```",
    "| col1 | col2 |\n|------|------|\n| a    | b    |",
    "key: value\nlist:\n  - item1\n  - item2\n",
    "\\begin{equation} E = mc^2 \\end{equation}",
    "regex: ^[a-zA-Z0-9_]+@\\w+\\.(com|org)$",
]
# repeated characters
c += [
    "a" * 100,
    "=" * 40,
    "-" * 64,
    "." * 20,
    "!!!???",
    "ab" * 30,
    "_" * 16,
    "*" * 10 + " stars",
    "#" * 6 + " heading",
    "0" * 50,
    "é" * 20,
    "中" * 20,
]
# special-token text (parsed by llama.cpp: control tokens of each model, user-defined ones)
c += [
    "<bos>",
    "<eos>",
    "<pad>",
    "<unk>",
    "<mask>",
    "[multimodal]",
    "<unused5>",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nHi<end_of_turn>",
    "text <start_of_turn> in the middle",
    "<start_of_turn",
    "<start_of_turn><end_of_turn>",
    "<start_of_image> image <end_of_image>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_start",
    "|im_end|>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "<|endoftext|><|endoftext|>",
    "before<|im_end|>after",
    "<s> literal special token text </s>",
    "<div>hello</div> <span>x</span>",
    "<h1>Title</h1>\n<p>para</p>",
    "<b>bold</b><i>it</i><u>u</u>",
    "<table><tr><td>1</td></tr></table>",
    "<code>x</code> <pre>y</pre>",
    "   <bos>   spaces around   ",
    "\n<eos>\n",
]
# longer texts
ppl = open(os.path.join(here, "../../../../tests/data/ppl-text.txt"), encoding="utf-8").read()
c += [
    ppl[:400],
    ppl[1000:1800],
    ppl[5000:5600],
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. " * 3,
    "Mixed: English, Français, Deutsch, Español, 日本語, 한국어, Русский, العربية, हिन्दी 🦙🚀",
    "Numbers in text: 1st, 2nd, 3rd, 4th... 100th; 12:30pm; 3/4 cups; 98.6°F; -40°C",
    "A sentence with    irregular\tspacing\n\nand  blank lines.\n\n\n\nEnd.",
]
# assorted single characters and short pieces
c += [
    "?", "!", ".", ",", "'", "\"", "-", "_", "@", "#", "$", "%", "&", "*", "(", ")",
    "é", "ß", "中", "あ", "ア", "한", "\u2581", "\u2581\u2581", "Ġ", "Ċ",
    " a", "a ", " a ", "  a", "I", " I", " '", "''", "' '",
    "<0x41>", "<0xE4>",
]

import collections
assert len(c) == len(set(c)), [k for k, v in collections.Counter(c).items() if v > 1]
assert all(isinstance(s, str) and s for s in c)
with open(os.path.join(here, "corpus.json"), "w", encoding="utf-8") as f:
    json.dump(c, f, ensure_ascii=True, indent=0)
    f.write("\n")
print(len(c), "strings")
