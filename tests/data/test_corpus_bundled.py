"""The bundled corpus and tokenizer: reproducible from the generator, the right size and vocabulary."""

from __future__ import annotations

import hashlib

import pytest
from tokenizers import Tokenizer

from anekit.model.config import preset
from anekit.train import corpus
from anekit.train.corpus import (
    BOS_ID,
    DEFAULT_SEED,
    DEFAULT_STORIES,
    EOS_ID,
    SPECIAL_TOKENS,
    STORY_SEPARATOR,
    corpus_text,
    data_path,
    generate_stories,
    train_tokenizer,
)


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (only this test hashes shipped files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def shipped_text() -> str:
    return data_path("stories.txt").read_text(encoding="utf-8")


def test_regenerating_with_the_default_seed_reproduces_the_shipped_stories(shipped_text):
    regenerated = corpus_text(DEFAULT_STORIES, DEFAULT_SEED).encode("utf-8")
    assert hashlib.sha256(regenerated).hexdigest() == sha256_file(data_path("stories.txt"))


def test_retraining_the_tokenizer_on_the_shipped_text_reproduces_the_shipped_tokenizer(shipped_text):
    # Compare through the library's own serialisation, so a different `tokenizers` version that
    # formats the JSON differently still compares the vocabulary and merges, not the bytes.
    shipped = Tokenizer.from_file(str(data_path("tokenizer.json")))
    assert train_tokenizer(shipped_text).to_str() == shipped.to_str()


def test_the_cli_writes_both_files(tmp_path, capsys):
    corpus.main(["--out", str(tmp_path), "--stories", "900", "--seed", "7"])
    text = (tmp_path / "stories.txt").read_text(encoding="utf-8")
    assert text == corpus_text(900, 7)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.get_vocab_size() == 512
    assert "stories: 900" in capsys.readouterr().out


def test_shipped_tokenizer_has_exactly_the_tiny_presets_vocab_with_llama2c_specials():
    tok = Tokenizer.from_file(str(data_path("tokenizer.json")))
    assert tok.get_vocab_size() == preset("tiny").vocab_size == 512
    assert [tok.id_to_token(i) for i in range(3)] == list(SPECIAL_TOKENS)
    assert tok.token_to_id("<s>") == BOS_ID == 1 and tok.token_to_id("</s>") == EOS_ID == 2


def test_shipped_corpus_size_and_shape(shipped_text):
    stories = shipped_text.rstrip("\n").split(STORY_SEPARATOR)
    assert len(stories) == DEFAULT_STORIES
    assert 1_000_000 <= len(shipped_text.encode()) <= 2_000_000
    assert shipped_text.isascii()
    assert all(s and "\n" not in s and s[-1] in '."!' for s in stories)
    assert len(set(stories)) > 0.99 * len(stories)  # nearly every story is different


def test_seed_changes_the_stories_and_the_same_seed_does_not():
    assert generate_stories(20, seed=1) == generate_stories(20, seed=1)
    assert generate_stories(20, seed=1) != generate_stories(20, seed=2)


def test_stories_have_an_arc_and_consistent_grammar():
    stories = generate_stories(400, seed=3)
    openings = ("Once upon a time", "There was once", "Once there was")
    assert all(s.startswith(openings) for s in stories)
    text = " ".join(stories)
    for bad in (" a a", " a e", " a i", " a o", " a u", "  ", " .", "{", "}"):
        assert bad not in text, bad
