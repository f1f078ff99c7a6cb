#!/usr/bin/python3
"""Randomized differential test of the C tokenizer (core/tokenizer.c) against tools/clip_tokenizer.py.

Usage: /usr/bin/python3 tests/core/check_tokenizer_diff.py BUILD/tests/core/tokenize_hex VOCAB [--count N]
           [--fresh N] [--seed S]
Generates N strings (3000) from a fixed seed and N fresh ones (500) from a seed drawn now and printed (--seed
replays one), mixing what the tokenizer must get exactly right: ASCII words and specials in any case, Greek with
capital sigmas in and out of the Final_Sigma context, SpecialCasing letters (Turkish dotted I), combining and other
case-ignorable marks, CJK, emoji, every kind of white space, control characters, HTML character references (named,
numeric, nested, broken) and random code points of every plane. Each is encoded by both tokenizers (the C one
through tokenize_hex, which reads hex-encoded UTF-8 lines). Prints how many differ and the first few that do (with
the seed that made them); exits 1 when any differs.
"""
import argparse
import os
import random
import re
import subprocess
import sys
import time
import unicodedata

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import clip_tokenizer  # noqa: E402

FIXED_SEED = 20261201
WORDS = ["a", "red", "star", "on", "the", "hill", "photo", "of", "cat", "dog's", "it'll", "we're", "don't", "x",
         "HELLO", "World", "DSLR", "4k", "8K", "v2", "<|startoftext|>", "<|endoftext|>", "<|STARTOFTEXT|>",
         "<|EndOfText|>", "'S", "'LL", "'Re", "I'M", "'VE", "'D", "'T", "caf\u00e9", "na\u00efve", "STRASSE"]
GREEK = ["\u039f\u0394\u039f\u03a3", "\u03a3", "\u03a3\u0391\u03a3", "\u039c\u0391\u03a3\u039f\u03a3",
         "\u0391\u03a3'", "\u0391\u03a3.\u0392", "\u03b1\u03a3\u0301", "\u0391\u0301\u03a3\u0301\u0392", "\u03c3\u03c2",
         "\u1f08\u03a3", "\u03a3\u03a3\u03a3", "\u0391\u03a3\u0345", "\u0399\u03a3\u00ad\u0391", "\u03a31",
         "\u03a3\u03a3", "\u0391\u03a3\u200d", "\u0391\u03a3:\u03a3", "\u0391\u03a3\u02b0", "\u03a3\u0391",
         "\u0391\u0392\u0393", "\u1fbc\u03a3", "\u0130\u03a3", "\u2126\u03a3", "\u01c5\u03a3", "\u2160\u03a3",
         "\u24b6\u03a3", "\U0001d400\u03a3", "\u0391\u03a3\u2019\u0392", "\u0391\u03a3\u00b7"]
SPECIAL = ["\u0130", "\u0130stanbul", "\u0131", "I\u0307", "\u1e9e", "\u00df", "\u212a", "\u212b", "\u2126",
           "\u01c5", "\u01c8", "\u1f88", "\u1fbc", "\u0149", "\u1e96", "\ufb00", "\u0390", "\u24b6", "\u2160",
           "\U00010400", "\U0001e900", "\u10a0", "\u13a0", "\uab70", "\u2c2f", "\ua7c0", "\u0345", "\u0587"]
MARKS = ["\u0300", "\u0301", "\u0307", "\u0308", "\u0345", "\u0483", "\u05b0", "\u064b", "\u093c", "\u0e31",
         "\u200b", "\u200c", "\u200d", "\u2060", "\ufe0f", "\ufe00", "\u00ad", "\u02b0", "\u02c6", "\u3099", "\u309b",
         "\U000e0001", "\U000e0041", "\U0001f3fb", "'", ".", ":", "^", "`", "\u00a8", "\u00b7", "\u2019", "\u2024"]
CJK = ["\u732b", "\u5c71\u306e\u4e0a", "\u30ab\u30bf\u30ab\u30ca", "\ud55c\uad6d\uc5b4", "\u4e00\u4e8c\u4e09",
       "\u3007", "\u3042\u3099", "\uff21\uff22\uff23", "\uff41", "\uff11\uff12", "\u0e20\u0e32\u0e29\u0e32",
       "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0939\u093f\u0928\u094d\u0926\u0940"]
EMOJI = ["\U0001f600", "\U0001f408", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f44d\U0001f3fd",
         "\u2764\ufe0f", "\U0001f1eb\U0001f1f7", "\u263a", "\U0001f3f3\ufe0f\u200d\U0001f308", "#\ufe0f\u20e3",
         "\U0001faf6", "\u2b50"]
SPACES = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680",
          "\u2000", "\u2005", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\r\n", "  \t "]
CONTROLS = [chr(c) for c in list(range(0, 9)) + [0x0e, 0x1b, 0x7f, 0x80, 0x9f]] + ["\u180e", "\ufeff", "\ufffd",
                                                                                     "\ufffe", "\uffff", "\U0010ffff"]
ENTITIES = ["&amp;", "&amp", "&lt;", "&gt", "&quot;", "&nbsp;", "&Sigma;", "&sigma;", "&#931;", "&#x3a3;", "&#X3A3",
            "&amp;Sigma;", "&amp;amp;lt;", "&amp;#931;", "&notit;", "&notin;", "&noti", "&#0;", "&#128;", "&#x80;",
            "&#x110000;", "&#xd800;", "&#55296;", "&#1114111;", "&#99999999999999999999;", "&#x;", "&#;", "&#",
            "&", "&;", "&&amp;", "&Idot;", "&#304;", "&ampamp;", "&AMP;", "&Amp;", "&#65;&#66", "&#x1F600;",
            "&#x0d;", "&#13;", "&#x85;", "&#133;", "&#x2028;", "&#9;", "&#32;", "&#160;", "&nbsp", "&Tab;", "&NewLine;",
            "&#xfffe;", "&#xffff;", "&#1;", "&#x7f;", "&#x8d;", "&#150;", "&lt;|endoftext|&gt;", "&apos;s",
            "&#39;ll", "&#x27;S", "&acE;", "&Aacute", "&aacute;x", "&sup2;", "&frac12;", "&#x2160;", "&ohm;", "&Aacute\x00", "&amp\x00;",
            "&\x00amp;", "&lt\x00gt", "&notin\x00", "&#65\x00"]
DIGITS = ["0", "42", "2024", "3.14", "\u0661\u0662", "\u00b2", "\u00bd", "\u2460", "\u2167", "\U0001d7ce",
          "\u0f33", "\u4e07", "\u2070", "\u2150"]
PUNCT = [",", "!", "?", "-", "_", "(", ")", "[", "]", "{", "}", "/", "\\", "@", "#", "$", "%", "*", "+", "=", "|",
         "~", "<", ">", ";", "\"", "...", "--", "\u2014", "\u00bf", "\u00a1", "\u3001", "\u3002", "\u00ab\u00bb"]
POOLS = [(WORDS, 10), (GREEK, 6), (SPECIAL, 4), (MARKS, 4), (CJK, 3), (EMOJI, 3), (SPACES, 5), (CONTROLS, 2),
         (ENTITIES, 5), (DIGITS, 3), (PUNCT, 4)]


def random_cp(rng: random.Random) -> str:
    """A random code point that is not a surrogate: mostly from the first planes, sometimes anywhere."""
    while True:
        r = rng.random()
        hi = 0x800 if r < 0.4 else 0x10000 if r < 0.8 else 0x30000 if r < 0.95 else 0x110000
        cp = rng.randrange(hi)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def piece(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return "".join(random_cp(rng) for _ in range(rng.randint(1, 4)))
    pool = rng.choices([p for p, _ in POOLS], weights=[w for _, w in POOLS])[0]
    s = rng.choice(pool)
    if rng.random() < 0.2:
        s = s.upper() if rng.random() < 0.5 else s.title()
    return s


def random_string(rng: random.Random) -> str:
    """Up to 16 pieces, glued directly or with white space; sometimes the string is empty or all white space."""
    r = rng.random()
    if r < 0.01:
        return ""
    if r < 0.03:
        return "".join(rng.choice(SPACES) for _ in range(rng.randint(1, 4)))
    out = []
    for _ in range(rng.randint(1, 16)):
        out.append(piece(rng))
        if rng.random() < 0.4:
            out.append(rng.choice(SPACES) if rng.random() < 0.5 else " ")
    if rng.random() < 0.2:
        out.insert(0, rng.choice(SPACES))
    return "".join(out)


def c_ids(driver: str, vocab: str, texts: list) -> list:
    """The C tokenizer's ids for each text (None where the driver reported an error)."""
    inp = "".join(t.encode("utf-8").hex() + "\n" for t in texts)
    p = subprocess.run([driver, vocab], input=inp, capture_output=True, text=True, timeout=600)
    lines = p.stdout.split("\n")[:-1]
    if len(lines) != len(texts):
        sys.exit("tokenize_hex: %d lines for %d texts (exit %d): %s" % (len(lines), len(texts), p.returncode,
                                                                          p.stderr.strip()))
    return [None if ln.startswith("error") else [int(x) for x in ln.split()] for ln in lines]


def compare(tok, driver: str, vocab: str, seed: int, count: int) -> int:
    """Encodes count strings from seed with both tokenizers. Prints a summary and the first differences; returns
    the number of strings that differ."""
    rng = random.Random(seed)
    texts = [random_string(rng) for _ in range(count)]
    want = [tok.encode(t) for t in texts]
    got = c_ids(driver, vocab, texts)
    bad = [i for i in range(count) if want[i] != got[i]]
    print("seed %d: %d of %d strings differ (%d ids from Python)" % (seed, len(bad), count, sum(map(len, want))))
    for i in bad[:8]:
        print("  string %d of seed %d: %s\n    python %s\n    c      %s" % (i, seed, ascii(texts[i]), want[i], got[i]))
    return len(bad)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("driver", help="tokenize_hex from the build")
    ap.add_argument("vocab", help="vocabulary (bpe_simple_vocab_16e6.txt.gz or merges.txt)")
    ap.add_argument("--count", type=int, default=3000, help="strings from the fixed seed")
    ap.add_argument("--fresh", type=int, default=500, help="strings from a seed drawn now")
    ap.add_argument("--seed", type=int, help="the fresh strings' seed (to replay a failure)")
    a = ap.parse_args()
    tables = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "core", "unicode_data.c")
    with open(tables, encoding="utf-8") as f:
        head = f.read(400)
    made = re.search(r"\(Unicode ([0-9.]+)\)", head)
    if not made or made.group(1) != unicodedata.unidata_version:
        print("core/unicode_data.c was generated from Unicode %s, this Python has %s: the tokenizers cannot agree;"
              " regenerate it with tools/gen_unicode.py" % (made.group(1) if made else "?", unicodedata.unidata_version))
        return 1
    tok = clip_tokenizer.Tokenizer.from_files(a.vocab)
    bad = compare(tok, a.driver, a.vocab, FIXED_SEED, a.count)
    if a.fresh:
        seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
        bad += compare(tok, a.driver, a.vocab, seed, a.fresh)
    print("%d strings differ" % bad)
    return 1 if bad else 0


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print("%.1f s" % (time.time() - t0))
    sys.exit(rc)
