"""CLIP BPE tokenizer (reads bpe_simple_vocab*.txt[.gz] or vocab.json + merges.txt) and a BPE learner writing that format."""
import collections
import gzip
import html
import json
import os
import re
import unicodedata
from typing import Dict, List, Optional, Tuple

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
CLIP_MERGES = 49152 - 256 - 2  # lines of bpe_simple_vocab_16e6.txt used by CLIP (after its header)
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


BYTE_ENCODER = bytes_to_unicode()


def clean(text: str) -> str:
    """html-unescape twice, collapse whitespace, strip, lowercase."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip().lower()


def _is_letter(c: str) -> bool:
    return unicodedata.category(c).startswith("L")


def _is_number(c: str) -> bool:
    return unicodedata.category(c).startswith("N")


def pretokenize(text: str) -> List[str]:
    """CLIP's pattern, applied left to right: specials | contractions | letters+ | one digit | other non-space+."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        matched = None
        for sp in (SOT, EOT):
            if text.startswith(sp, i):
                matched = sp
                break
        if matched is None:
            for ct in CONTRACTIONS:
                if text.startswith(ct, i):
                    matched = ct
                    break
        if matched is not None:
            out.append(matched)
            i += len(matched)
        elif _is_letter(c):
            j = i + 1
            while j < n and _is_letter(text[j]):
                j += 1
            out.append(text[i:j])
            i = j
        elif _is_number(c):
            out.append(c)
            i += 1
        elif c.isspace():
            i += 1
        else:
            j = i + 1
            while j < n and not (text[j].isspace() or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _word_symbols(token: str) -> Tuple[str, ...]:
    chars = [BYTE_ENCODER[b] for b in token.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def base_vocab() -> List[str]:
    v = list(BYTE_ENCODER.values())
    return v + [x + "</w>" for x in v]


class Tokenizer:
    """CLIP BPE. `merges` in rank order; ids: 256 bytes, 256 bytes + </w>, one per merge, then SOT, EOT."""

    def __init__(self, merges: List[Tuple[str, str]], pad_id: Optional[int] = None, max_length: int = 77):
        self.merges = merges
        self.ranks = {m: i for i, m in enumerate(merges)}
        vocab = base_vocab() + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.vocab_size = len(vocab)
        self.sot_id = self.encoder[SOT]
        self.eot_id = self.encoder[EOT]
        self.pad_id = self.eot_id if pad_id is None else pad_id
        self.max_length = max_length
        self.cache: Dict[str, List[str]] = {SOT: [SOT], EOT: [EOT]}

    @classmethod
    def from_files(cls, path: str, merges_count: Optional[int] = None, **kw) -> "Tokenizer":
        """Loads a bpe_simple_vocab file (.txt or .txt.gz; CLIP's count of merges by default) or a folder or
        vocab.json path with merges.txt beside it."""
        if os.path.isdir(path):
            path = os.path.join(path, "merges.txt")
        if path.endswith("vocab.json"):
            path = os.path.join(os.path.dirname(path), "merges.txt")
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            lines = f.read().decode("utf-8").split("\n")
        body = lines[1:] if lines and lines[0].startswith(("#", '"')) else lines
        body = [ln for ln in body if ln.strip()]
        if merges_count is None and "bpe_simple_vocab" in os.path.basename(path):
            merges_count = CLIP_MERGES
        if merges_count is not None:
            body = body[:merges_count]
        merges = [tuple(ln.split()) for ln in body]
        tok = cls(merges, **kw)
        vj = os.path.join(os.path.dirname(path), "vocab.json")
        if path.endswith("merges.txt") and os.path.exists(vj):
            with open(vj, encoding="utf-8") as f:
                given = json.load(f)
            if given != tok.encoder:
                raise ValueError("%s does not match the vocabulary implied by %s" % (vj, path))
        return tok

    def bpe(self, token: str) -> List[str]:
        if token in self.cache:
            return self.cache[token]
        word = list(_word_symbols(token))
        while len(word) > 1:
            pairs = [(self.ranks.get((word[i], word[i + 1]), 1 << 60), i) for i in range(len(word) - 1)]
            rank, _ = min(pairs)
            if rank == 1 << 60:
                break
            first, second = self.merges[rank]
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[token] = word
        return word

    def encode(self, text: str) -> List[int]:
        """Token ids of the text, without the start and end tokens."""
        ids = []
        for tok in pretokenize(clean(text)):
            ids.extend(self.encoder[s] for s in self.bpe(tok))
        return ids

    def input_ids(self, text: str) -> List[int]:
        """SD 1.x input: [SOT] + ids[:max-2] + [EOT], padded to max_length with pad_id."""
        ids = [self.sot_id] + self.encode(text)[: self.max_length - 2] + [self.eot_id]
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def write(self, folder: str) -> None:
        """Writes vocab.json and merges.txt (CLIP / Hugging Face layout) into folder."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.encoder, f, ensure_ascii=False)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for a, b in self.merges:
                f.write("%s %s\n" % (a, b))


def learn(texts: List[str], max_merges: int = 10000) -> Tokenizer:
    """Learns BPE merges from texts (most frequent adjacent pair first, ties broken by the pair itself) until
    every word is one symbol or max_merges is reached. Returns the tokenizer."""
    words = collections.Counter()
    for t in texts:
        for tok in pretokenize(clean(t)):
            words[_word_symbols(tok)] += 1
    merges = []
    vocab = dict(words)
    while len(merges) < max_merges:
        pairs = collections.Counter()
        for w, c in vocab.items():
            for i in range(len(w) - 1):
                pairs[(w[i], w[i + 1])] += c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        new = {}
        for w, c in vocab.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        vocab = new
    return Tokenizer(merges)
