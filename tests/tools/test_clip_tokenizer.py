"""Tests of tools/clip_tokenizer.py: the reference CLIP vectors, the learned vocabulary and its files."""
import json
import os

import pytest

import clip_tokenizer as ct
import shapes
from conftest import CLIP_VOCAB, SHARED

VECTORS = os.path.join(SHARED, "clip", "vectors.json")


@pytest.fixture(scope="module")
def clip():
    return ct.Tokenizer.from_files(CLIP_VOCAB)


def test_clip_vocabulary_layout(clip):
    assert clip.vocab_size == 49408
    assert (clip.sot_id, clip.eot_id, clip.pad_id) == (49406, 49407, 49407)


def test_reference_vectors(clip):
    with open(VECTORS) as f:
        vectors = json.load(f)
    assert len(vectors) > 10
    for v in vectors:
        assert clip.encode(v["text"]) == v["ids"], v["text"]
        assert clip.input_ids(v["text"]) == v["sd15_input_ids"], v["text"]


def test_truncation_keeps_end_token(clip):
    ids = clip.input_ids("word " * 200)
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407 and ids[75] != 49407


def test_pretokenize_rules():
    assert ct.pretokenize("don't 42x <|endoftext|>!?") == ["don", "'t", "4", "2", "x", "<|endoftext|>", "!?"]


def test_learned_vocabulary_round_trip(tmp_path):
    caps = [shapes.caption(shapes.sample_params(i)) for i in range(500)]
    tok = ct.learn(caps)
    for c in caps[:50]:  # every caption word is one token
        assert len(tok.encode(c)) == len(c.split())
    tok.write(str(tmp_path))
    back = ct.Tokenizer.from_files(str(tmp_path))
    assert back.encoder == tok.encoder and back.vocab_size == tok.vocab_size
    assert back.input_ids(caps[0]) == tok.input_ids(caps[0])
    with open(tmp_path / "vocab.json") as f:
        vocab = json.load(f)
    assert vocab["<|endoftext|>"] == tok.vocab_size - 1
    # unseen words still tokenize, through the byte symbols
    assert len(back.encode("zebra")) >= 1


def test_vocab_json_must_match_merges(tmp_path):
    tok = ct.learn(["a red star", "a blue star"])
    tok.write(str(tmp_path))
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    with pytest.raises(ValueError, match="does not match"):
        ct.Tokenizer.from_files(str(tmp_path))
