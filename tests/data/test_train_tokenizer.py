"""`train_bpe` and `anekit train-tokenizer`: a byte-level BPE of the size asked, with the bundled
tokenizer's conventions, written atomically; every bad input a clear error before any work."""

from __future__ import annotations

import json
import os

import pytest
import typer
from typer.testing import CliRunner

from anekit.cli.tokenizer import train_tokenizer
from anekit.errors import AnekitError
from anekit.train import tokenizers as tokmod
from anekit.train.corpus import data_path
from anekit.train.tokenizers import (
    BPE_MAX_VOCAB,
    BPE_MIN_VOCAB,
    TokenizerError,
    bundled_tokenizer,
    load_tokenizer,
    train_bpe,
)

SAMPLES = [
    "Once upon a time, Lily found a red ball in the park.",
    "  two spaces,\ttabs\nand new lines\r\n",
    "héllo wörld: naïve café, 漢字 and emoji 🙂 are bytes too",
    "",
]
SMALL_TEXT = ["the cat sat on the mat. " * 50, "a dog ran in the fog. " * 50]


@pytest.fixture(scope="module")
def trained_1024(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tok1024.json"
    return train_bpe(data_path("stories.txt"), 1024, out), out


def test_bundled_stories_at_1024_load_and_round_trip(trained_1024):
    result, out = trained_1024
    assert result.path == out and result.vocab_size == 1024 and result.sources == 1
    assert result.characters == len(data_path("stories.txt").read_text(encoding="utf-8"))
    tok = load_tokenizer(out)
    assert tok.vocab_size == 1024 and (tok.bos_id, tok.eos_id) == (1, 2)
    for text in SAMPLES:
        ids = tok.encode(text, bos=True, eos=True)
        assert ids[0] == 1 and ids[-1] == 2 and all(0 <= i < 1024 for i in ids)
        assert 0 not in ids  # <unk> never appears: every byte has an id
        assert tok.decode(ids) == text


def test_same_layout_as_the_bundled_tokenizer(trained_1024):
    from tokenizers import Tokenizer

    _, out = trained_1024
    ours, bundled = Tokenizer.from_file(str(out)), Tokenizer.from_file(str(data_path("tokenizer.json")))
    assert [ours.id_to_token(i) for i in range(259)] == [bundled.id_to_token(i) for i in range(259)]
    assert json.loads(out.read_text())["pre_tokenizer"] == json.loads(bundled.to_str())["pre_tokenizer"]
    # more merges than the bundled 512-id vocabulary: the same stories take fewer tokens
    story = data_path("stories.txt").read_text(encoding="utf-8")[:20_000]
    assert len(load_tokenizer(out).encode(story)) < 0.9 * len(bundled_tokenizer().encode(story))


def test_iterators_and_lists_of_files(tmp_path):
    a = train_bpe(iter(SMALL_TEXT), 270, tmp_path / "it.json")
    assert a.sources == 2 and load_tokenizer(a.path).vocab_size == 270
    files = []
    for i, text in enumerate(SMALL_TEXT):
        files.append(tmp_path / f"{i}.txt")
        files[-1].write_text(text, encoding="utf-8")
    b = train_bpe(files, 270, tmp_path / "files.json")
    assert b.sources == 2 and b.characters == sum(map(len, SMALL_TEXT))
    tok = load_tokenizer(b.path)
    assert tok.decode(tok.encode("the cat ran")) == "the cat ran"


@pytest.mark.parametrize("vocab", [0, BPE_MIN_VOCAB - 1, BPE_MAX_VOCAB + 1, -5])
def test_vocab_out_of_range(tmp_path, vocab):
    with pytest.raises(TokenizerError, match=f"vocab_size {vocab} is out of range: .* at least 259"):
        train_bpe(iter(SMALL_TEXT), vocab, tmp_path / "t.json")


@pytest.mark.parametrize("vocab", [True, 1024.0, "1024", None])
def test_vocab_not_an_integer(tmp_path, vocab):
    with pytest.raises(TokenizerError, match="vocab_size must be an integer"):
        train_bpe(iter(SMALL_TEXT), vocab, tmp_path / "t.json")


def test_bad_sources(tmp_path):
    out = tmp_path / "t.json"
    with pytest.raises(TokenizerError, match=r"missing\.txt: no such file"):
        train_bpe(tmp_path / "missing.txt", 300, out)
    with pytest.raises(TokenizerError, match="is a directory; give a UTF-8 text file"):
        train_bpe(tmp_path, 300, out)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TokenizerError, match=r"fifo: is a FIFO \(named pipe\), not a regular file"):
        train_bpe(fifo, 300, out)  # refused before opening: reading a fifo would block
    with pytest.raises(TokenizerError, match="source is a str"):
        train_bpe("some text", 300, out)
    with pytest.raises(TokenizerError, match="text 1 of the iterator is bytes, not str"):
        train_bpe(iter(["ok", b"bytes"]), 300, out)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 3)
    with pytest.raises(TokenizerError, match=r"latin1\.txt: not UTF-8 text \(byte 0xe9"):
        train_bpe(tmp_path / "latin1.txt", 300, out)
    assert not out.exists()


def test_empty_and_too_small_text(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text(" \n\n\t \n")
    for name in ("empty.txt", "blank.txt"):
        with pytest.raises(TokenizerError, match="the text is empty"):
            train_bpe(tmp_path / name, 300, tmp_path / "t.json")
    with pytest.raises(
        TokenizerError, match=r"enough repeated pairs for only \d+ ids, not 5000: .* at most \d+"
    ):
        train_bpe(iter(SMALL_TEXT), 5000, tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path):
    out = tmp_path / "tok.json"
    out.write_text("precious")
    with pytest.raises(TokenizerError, match=r"already exists; .* \(--overwrite\)"):
        train_bpe(iter(SMALL_TEXT), 270, out)
    assert out.read_text() == "precious"
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")  # dangling: still "exists" for a writer
    with pytest.raises(TokenizerError, match="already exists"):
        train_bpe(iter(SMALL_TEXT), 270, link)
    train_bpe(iter(SMALL_TEXT), 270, out, overwrite=True)
    assert load_tokenizer(out).vocab_size == 270
    train_bpe(iter(SMALL_TEXT), 270, link, overwrite=True)  # replaces the link, never writes through it
    assert not link.is_symlink() and not (tmp_path / "elsewhere.json").exists()
    (tmp_path / "d").mkdir()
    with pytest.raises(TokenizerError, match="is a directory"):
        train_bpe(iter(SMALL_TEXT), 270, tmp_path / "d", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenizerError, match="cannot be created"):
        train_bpe(iter(SMALL_TEXT), 270, tmp_path / "file" / "tok.json")
    nested = train_bpe(iter(SMALL_TEXT), 270, tmp_path / "new" / "dir" / "tok.json")
    assert nested.path.is_file()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "tok.json"
    out.write_text("old")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokmod.os, "replace", disk_full)
    with pytest.raises(TokenizerError, match="cannot write: No space left on device; nothing was changed"):
        train_bpe(iter(SMALL_TEXT), 270, out, overwrite=True)
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["tok.json"]


def test_errors_are_anekit_errors():
    assert issubclass(TokenizerError, AnekitError) and issubclass(TokenizerError, ValueError)
    with pytest.raises(TokenizerError, match="no such tokenizer file"):
        load_tokenizer("/nonexistent/tokenizer.json")


# -- the command -------------------------------------------------------------------------------


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("train-tokenizer")(train_tokenizer)
    app.command("other")(lambda: None)  # two commands, so the name is needed as in `anekit`
    return app


def test_command_trains_and_refuses_bad_input(tmp_path):
    runner = CliRunner()
    text = tmp_path / "my.txt"
    text.write_text("\n".join(SMALL_TEXT), encoding="utf-8")
    out = tmp_path / "tok.json"
    args = ["train-tokenizer", str(text), "--vocab-size", "270", "--out", str(out)]
    ok = runner.invoke(_app(), args)
    assert ok.exit_code == 0, ok.output
    assert "270 ids" in ok.output and "--tokenizer" in ok.output
    assert load_tokenizer(out).vocab_size == 270

    for bad_args, message in (
        (args, "already exists"),
        (["train-tokenizer", str(tmp_path / "nope.txt"), "--vocab-size", "270", "--out", str(tmp_path / "x.json")],
         "no such file"),
        (["train-tokenizer", str(tmp_path), "--vocab-size", "270", "--out", str(tmp_path / "x.json")],
         "is a directory"),
        (["train-tokenizer", str(text), "--vocab-size", "100", "--out", str(tmp_path / "x.json")],
         "out of range"),
    ):  # fmt: skip
        res = runner.invoke(_app(), bad_args)
        output = res.output + (res.stderr if res.stderr_bytes is not None else "")
        assert res.exit_code == 1 and message in output, output
        assert "Traceback" not in output and not isinstance(res.exception, AnekitError)
    assert runner.invoke(_app(), [*args, "--overwrite"]).exit_code == 0


def test_command_defaults_to_the_bundled_stories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(_app(), ["train-tokenizer", "--vocab-size", "600"])
    assert res.exit_code == 0, res.output
    assert "stories.txt" in res.output
    assert load_tokenizer(tmp_path / "tokenizer.json").vocab_size == 600
