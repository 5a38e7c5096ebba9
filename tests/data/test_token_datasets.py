"""Token datasets and samplers: llama2.c .bin files, text files, the bundled corpus, Batches, eval order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anekit.train import data as data_mod
from anekit.train.data import (
    Batches,
    DataError,
    TokenDataset,
    load_bundled,
    load_dataset,
    load_text_file,
    load_token_file,
    sequential_batches,
)
from anekit.train.tokenizers import bundled_tokenizer


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANEKIT_CACHE_DIR", str(tmp_path / "cache"))


def _bin(tmp_path, tokens, name="toks.bin"):
    p = tmp_path / name
    np.asarray(tokens, dtype="<u2").tofile(p)
    return p


# ------------------------------------------------------------------------------------------------
# llama2.c token files


def test_token_file_is_memory_mapped_little_endian_uint16(tmp_path):
    p = tmp_path / "t.bin"
    p.write_bytes(bytes([1, 0, 0x34, 0x12, 0xFF, 0xFF]))
    ds = load_dataset(p)
    assert isinstance(ds.tokens, np.memmap)
    assert ds.tokens.tolist() == [1, 0x1234, 0xFFFF]
    import hashlib

    sha = hashlib.sha256(p.read_bytes()).hexdigest()  # the fingerprint a resumed run is checked against
    assert ds.identity == {"kind": "uint16", "path": str(p), "bytes": 6, "n_tokens": 3, "sha256": sha}


def test_token_file_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="no such token file"):
        load_token_file(tmp_path / "missing.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_token_file(tmp_path / "empty.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(DataError, match="3 bytes is an odd length"):
        load_token_file(tmp_path / "odd.bin")
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(tmp_path)


def test_out_of_range_ids_name_the_max_id_and_the_vocab(tmp_path):
    ds = load_token_file(_bin(tmp_path, [5, 7, 31999, 3, 600]))
    ds.check_vocab(32000)
    with pytest.raises(DataError, match="token id 31999"):
        load_dataset(ds.identity["path"], vocab_size=512)
    with pytest.raises(
        DataError, match=r"token id 31999 is out of range for a model with vocab_size 512"
    ) as e:
        ds.check_vocab(512)
    assert "first out-of-range id at token 2" in str(e.value)
    assert "vocab_size >= 32000" in str(e.value)


def test_short_data_says_how_many_tokens_and_what_is_needed(tmp_path):
    ds = load_token_file(_bin(tmp_path, range(10)))
    ds.check_length(9)
    with pytest.raises(DataError, match=r"has 10 tokens, but one training window needs seq_len \+ 1 = 11"):
        Batches(ds, batch_size=2, seq_len=10)
    with pytest.raises(DataError, match="has 10 tokens"):
        next(sequential_batches(ds, 2, 10))


# ------------------------------------------------------------------------------------------------
# text files and the bundled corpus


def test_text_file_documents_get_bos_and_are_cached(tmp_path, monkeypatch):
    p = tmp_path / "stories.txt"
    p.write_text("Tom ran.\n\nLily sat.\n\n\n")
    tok = bundled_tokenizer()
    ds = load_text_file(p, tok)
    expected = tok.encode("Tom ran.") + tok.encode("Lily sat.")
    assert ds.tokens.tolist() == expected and ds.tokens.dtype == np.uint16
    assert ds.identity["tokenizer"] == tok.identity and ds.identity["n_tokens"] == len(expected)
    assert list((tmp_path / "cache").glob("tokens-*.npy"))

    def boom(*a, **k):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(data_mod, "tokenize_text", boom)
    assert load_text_file(p, tok).tokens.tolist() == expected
    p.write_text("Different text.")  # a changed file must miss the cache
    with pytest.raises(AssertionError, match="tokenized again"):
        load_text_file(p, tok)


def test_text_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        load_text_file(tmp_path / "missing.txt")
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_text_file(tmp_path / "bin.dat")
    (tmp_path / "blank.txt").write_text("\n\n  \n\n")
    with pytest.raises(DataError, match="no text"):
        load_text_file(tmp_path / "blank.txt")


def test_bundled_corpus_fits_the_tiny_vocab():
    ds = load_dataset(None)
    assert ds.source == "bundled stories" and ds.identity["kind"] == "bundled"
    assert 500_000 < len(ds) < 1_000_000
    ds.check_vocab(512)
    assert int(ds.tokens[0]) == 1 and int((ds.tokens == 1).sum()) == 3600  # one BOS per story
    assert load_bundled().tokens.tolist()[:50] == ds.tokens.tolist()[:50]  # cached path, same ids


def test_split_holds_out_the_tail():
    ds = TokenDataset(np.arange(100, dtype=np.uint16), "x")
    train, val = ds.split(0.1)
    assert len(train) == 90 and len(val) == 10 and val.tokens[0] == 90


# ------------------------------------------------------------------------------------------------
# samplers


def test_batches_are_shifted_windows_of_the_data():
    tokens = np.arange(1000, dtype=np.uint16)  # value == position, so windows are easy to check
    b = Batches(tokens, batch_size=8, seq_len=16, seed=3)
    for _ in range(20):
        x, y = next(b)
        assert x.shape == y.shape == (8, 16) and x.dtype == np.int64
        assert np.array_equal(y, x + 1)
        assert np.all(np.diff(x, axis=1) == 1) and x.min() >= 0 and y.max() <= 999


def test_batches_reach_the_last_window():
    starts = set()
    b = Batches(np.arange(20, dtype=np.uint16), batch_size=64, seq_len=4, seed=0)
    for _ in range(5):
        starts |= set(next(b)[0][:, 0].tolist())
    assert starts == set(range(16))  # every start 0..n-S-1 occurs; the last window ends at the last token


def test_batches_are_seeded():
    t = np.arange(5000, dtype=np.uint16)
    a, b, c = Batches(t, 4, 8, seed=1), Batches(t, 4, 8, seed=1), Batches(t, 4, 8, seed=2)
    xa, xb, xc = next(a)[0], next(b)[0], next(c)[0]
    assert np.array_equal(xa, xb) and not np.array_equal(xa, xc)


def test_batches_resume_exactly_through_json():
    t = np.arange(5000, dtype=np.uint16)
    run = Batches(t, 4, 8, seed=11)
    for _ in range(7):
        next(run)
    state = json.loads(json.dumps(run.state_dict()))
    assert state["batches_drawn"] == 7
    expected = [next(run)[0] for _ in range(5)]
    resumed = Batches(t, 4, 8, seed=999)  # the seed given here is overridden by the state
    resumed.load_state_dict(state)
    assert all(np.array_equal(e, next(resumed)[0]) for e in expected)
    assert resumed.batches_drawn == 12


def test_batches_refuse_a_state_from_other_data():
    state = Batches(np.arange(5000, dtype=np.uint16), 4, 8).state_dict()
    with pytest.raises(DataError, match="saved n_tokens is 5000, now it is 4000"):
        Batches(np.arange(4000, dtype=np.uint16), 4, 8).load_state_dict(state)
    with pytest.raises(DataError, match="saved seq_len is 8, now it is 16"):
        Batches(np.arange(5000, dtype=np.uint16), 4, 16).load_state_dict(state)


def test_sequential_batches_predict_every_token_once_in_order():
    n, S = 103, 10
    batches = list(sequential_batches(np.arange(n, dtype=np.uint16), batch_size=4, seq_len=S))
    targets = np.concatenate([y.reshape(-1) for _, y in batches])
    assert targets.tolist() == list(range(1, 101))  # (103 - 1) // 10 = 10 windows
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    assert len(list(sequential_batches(np.arange(n, dtype=np.uint16), 4, S, max_batches=2))) == 2
    assert [x.tolist() for x, _ in batches] == [x.tolist() for x, _ in sequential_batches(np.arange(n), 4, S)]
