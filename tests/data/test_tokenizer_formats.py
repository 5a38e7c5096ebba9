"""Tokenizers: the bundled BPE, Hugging Face tokenizer.json, llama2.c tokenizer.bin, and the picker."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anekit.train.tokenizers import (
    HFTokenizer,
    Llama2cTokenizer,
    Tokenizer,
    bundled_tokenizer,
    load_tokenizer,
    parse_llama2c_tokenizer,
    save_llama2c_tokenizer,
)

# ------------------------------------------------------------------------------------------------
# bundled / Hugging Face


@pytest.fixture(scope="module")
def bundled():
    return bundled_tokenizer()


def test_bundled_tokenizer_follows_the_protocol(bundled):
    assert isinstance(bundled, Tokenizer)
    assert (bundled.vocab_size, bundled.bos_id, bundled.eos_id) == (512, 1, 2)
    assert bundled.identity.startswith("bundled:sha256=")
    assert load_tokenizer(None).identity == bundled.identity


def test_bundled_encode_adds_bos_and_eos_on_request(bundled):
    ids = bundled.encode("Lily saw a dog.")
    assert ids[0] == 1 and 2 not in ids
    assert bundled.encode("Lily saw a dog.", bos=False) == ids[1:]
    assert bundled.encode("Lily saw a dog.", bos=False, eos=True)[-1] == 2
    assert bundled.encode("", bos=True, eos=True) == [1, 2]
    assert bundled.decode(bundled.encode("Lily saw a dog.", eos=True)) == "Lily saw a dog."


def test_bundled_tokenizer_compresses_the_stories(bundled):
    text = "Once upon a time, there was a little girl named Lily. She liked to play in the park."
    assert len(bundled.encode(text, bos=False)) < len(text) / 2.5


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_bundled_round_trips_any_text(text):
    tok = bundled_tokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 512 for i in ids)
    assert tok.decode(ids) == text


def _write_hf_tokenizer(path, specials):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainer=trainer)
    tok.save(str(path))


def test_hf_tokenizer_finds_gpt2_style_specials_and_tokenizer_config(tmp_path):
    a = tmp_path / "a" / "tokenizer.json"
    a.parent.mkdir()
    _write_hf_tokenizer(a, ["<|endoftext|>"])
    tok = load_tokenizer(a.parent)  # directory -> tokenizer.json
    assert isinstance(tok, HFTokenizer)
    assert tok.bos_id == tok.eos_id == 0  # GPT-2 convention: one token for both
    assert tok.decode(tok.encode("the cat", eos=True)) == "the cat"

    b = tmp_path / "b" / "tokenizer.json"
    b.parent.mkdir()
    _write_hf_tokenizer(b, ["[PAD]", "[BOS]", "[EOS]"])
    with pytest.raises(ValueError, match="no BOS token found"):
        HFTokenizer(b)
    (b.parent / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "[BOS]"}, "eos_token": "[EOS]"})
    )
    tok = HFTokenizer(b)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.identity.startswith("hf:sha256=")


def test_hf_tokenizer_rejects_bad_json(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid Hugging Face tokenizer.json"):
        load_tokenizer(p)


# ------------------------------------------------------------------------------------------------
# llama2.c tokenizer.bin


def _llama2c_vocab():
    """A small SentencePiece-like vocabulary: specials, 256 byte pieces, then scored pieces."""
    pieces = ["<unk>", "\n<s>\n", "\n</s>\n"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(pieces)
    # single characters first (low scores), then merges; a higher score merges first
    words = {
        " ": -100.0,
        "a": -101.0,
        "b": -102.0,
        "c": -103.0,
        "t": -104.0,
        "h": -105.0,
        "e": -106.0,
        "é": -107.0,
        "s": -108.0,
        "n": -109.0,
        " t": -1.0,
        "th": -2.0,
        "he": -3.0,
        " th": -4.0,
        " the": -5.0,
        "ab": -6.0,
        "bc": -6.0,
        "abc": -7.0,
        " a": -8.0,
        "es": -9.0,
    }
    for w, s in words.items():
        pieces.append(w)
        scores.append(s)
    return pieces, scores


@pytest.fixture
def l2c(tmp_path):
    pieces, scores = _llama2c_vocab()
    path = tmp_path / "tokenizer.bin"
    save_llama2c_tokenizer(path, pieces, scores)
    return Llama2cTokenizer(path)


def _naive_encode(pieces: list[bytes], scores: list[float], text: str) -> list[int]:
    """llama2.c's loop, literally: rescan for the best-scoring mergeable pair until none is left."""
    lookup = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)
    ids = []
    for ch in " " + text:
        b = ch.encode()
        if b in lookup:
            ids.append(lookup[b])
        else:
            ids += [lookup[f"<0x{x:02X}>".encode()] for x in b]
    while True:
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(ids) - 1):
            m = lookup.get(pieces[ids[i]] + pieces[ids[i + 1]])
            if m is not None and scores[m] > best:
                best, best_i, best_id = scores[m], i, m
        if best_i < 0:
            return ids
        ids[best_i : best_i + 2] = [best_id]


def test_llama2c_file_format_is_parsed_as_documented(tmp_path, l2c):
    raw = (tmp_path / "tokenizer.bin").read_bytes()
    (max_len,) = struct.unpack_from("<i", raw, 0)
    assert max_len == max(len(p.encode()) for p in _llama2c_vocab()[0])
    score, n = struct.unpack_from("<fi", raw, 4)
    assert (score, n, raw[12 : 12 + n]) == (0.0, 5, b"<unk>")
    assert l2c.vocab_size == len(_llama2c_vocab()[0]) and (l2c.bos_id, l2c.eos_id) == (1, 2)
    assert l2c.identity.startswith("llama2c:sha256=")
    assert isinstance(load_tokenizer(tmp_path / "tokenizer.bin"), Llama2cTokenizer)
    assert isinstance(load_tokenizer(tmp_path), Llama2cTokenizer)


def test_llama2c_merges_by_score_with_dummy_prefix(l2c):
    piece = {p.decode(): i for i, p in enumerate(l2c.pieces)}
    # [" ","t","h","e"]: " t" (-1) merges first; then "he" (-3) beats " th" (-4); then " t"+"he" = " the"
    assert l2c.encode("the", bos=False) == [piece[" the"]]
    # [" ","t","h","e","s"]: as above, then " the"+"s" is no piece, but "es" (-9) was consumed by "he"
    assert l2c.encode("thes", bos=False) == [piece[" the"], piece["s"]]
    # "abc": "ab" and "bc" tie at -6: the leftmost ("ab") merges, then "ab"+"c" -> "abc"
    assert l2c.encode("abc", bos=False) == [piece[" "], piece["abc"]]
    assert l2c.encode("", bos=True, eos=True) == [1, 2]


def test_llama2c_byte_fallback_and_decode_round_trip(l2c):
    ids = l2c.encode("a🙂é")
    emoji = "🙂".encode()
    assert ids[0] == 1
    assert [l2c.pieces[i] for i in ids[2:6]] == [f"<0x{b:02X}>".encode() for b in emoji]
    assert l2c.decode(ids) == "a🙂é"


def test_llama2c_decode_drops_the_space_after_bos_only(l2c):
    piece = {p.decode(): i for i, p in enumerate(l2c.pieces)}
    ids = [1, piece[" the"], piece[" a"], 2, 1, piece[" a"]]
    assert l2c.decode(ids) == "the aa"  # second BOS starts a new document: its leading space goes too
    assert l2c.decode([piece[" a"], piece[" a"]]) == "a a"  # start of sequence counts as after BOS


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet="abcthes né🙂", max_size=40))
def test_llama2c_heap_encoder_equals_the_literal_algorithm(tmp_path_factory, text):
    pieces, scores = _llama2c_vocab()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.bin"
    save_llama2c_tokenizer(path, pieces, scores)
    tok = Llama2cTokenizer(path)
    expected = _naive_encode(tok.pieces, tok.scores, text) if text else []
    assert tok.encode(text, bos=False) == expected
    assert tok.decode(tok.encode(text)) == text


def test_llama2c_parse_errors_are_specific(tmp_path):
    with pytest.raises(ValueError, match="too short"):
        parse_llama2c_tokenizer(b"\x01")
    with pytest.raises(ValueError, match="truncated entry for id 0"):
        parse_llama2c_tokenizer(struct.pack("<i", 8) + b"\x00\x00")
    with pytest.raises(ValueError, match="claims 100 bytes"):
        parse_llama2c_tokenizer(struct.pack("<ifi", 8, 0.0, 100) + b"abc")
    with pytest.raises(ValueError, match="not positive"):
        parse_llama2c_tokenizer(struct.pack("<i", -3))
    p = tmp_path / "t.bin"
    save_llama2c_tokenizer(p, [" ", "a"], [0.0, 0.0])
    with pytest.raises(ValueError, match="EOS id 2 is outside the vocabulary of 2"):
        Llama2cTokenizer(p)
    tok = Llama2cTokenizer(p, bos_id=0, eos_id=1)
    with pytest.raises(ValueError, match="no byte-fallback piece <0x7A>"):
        tok.encode("z")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="no such tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "sp.model").write_bytes(b"\x0a\x00")
    with pytest.raises(ValueError, match="SentencePiece"):
        load_tokenizer(tmp_path / "sp.model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no tokenizer.json or tokenizer.bin"):
        load_tokenizer(tmp_path / "empty")
