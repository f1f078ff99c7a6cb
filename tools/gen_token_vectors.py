#!/usr/bin/python3
"""Writes token-id vectors from the Python reference tokenizer, for the C tokenizer's tests.

Usage: /usr/bin/python3 tools/gen_token_vectors.py VOCAB [--merges-count N] > tests/core/data/NAME.json
Each entry: hex (the input's UTF-8 bytes, possibly invalid), ids (without specials), input_ids (77).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_tokenizer  # noqa: E402
import shapes  # noqa: E402

TRICKY = [
    b"", b"   ", b"A  RED\tstar\n\non a  blue background ", b"&amp;&amp;amp; &lt;b&gt; &notit; &amp &ampx &#65;&#x42;&#0;",
    b"&#128; &#x110000; &#xD800; &#1; &#99999999999999999999; &# &#x; &;", b"\xc3\x9cber \xc4\xb0stanbul \xe1\xba\x9e",
    b"bad \xff\xfe utf8 \xe2\x82 \xf0\x9f\x98", b"emoji \xf0\x9f\x98\x80\xf0\x9f\x8e\xa8 done", b"<|startoftext|>hi<|endoftext|>x",
    b"it's I'M we'Ve 'll 'd 's", b"numbers 1234 \xd9\xa3\xd9\xa4 \xe2\x85\xa7 \xc2\xb2", b"\xe2\x80\x83em\xe2\x80\x83space\xc2\xa0nbsp",
    b"a...b!!?c--d", b"caf\xc3\xa9 na\xc3\xafve", b"\xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97", b"x" * 300,
    b"a \xcc\x81 combining", b"&AMP; &Amp; &LT &lt", b"the " * 100,
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vocab")
    ap.add_argument("--merges-count", type=int)
    ap.add_argument("--captions", type=int, default=0, help="also this many shapes captions")
    a = ap.parse_args()
    tok = clip_tokenizer.Tokenizer.from_files(a.vocab, a.merges_count)
    inputs = list(TRICKY) + [shapes.caption(shapes.sample_params(i)).encode() for i in range(a.captions)]
    out = []
    for raw in inputs:
        text = raw.decode("utf-8", errors="replace")
        out.append({"hex": raw.hex(), "ids": tok.encode(text), "input_ids": tok.input_ids(text)})
    json.dump(out, sys.stdout, indent=0)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
