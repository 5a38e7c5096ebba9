"""`anekit train-tokenizer`: learn a byte-level BPE vocabulary of a chosen size from your own text."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, stdout_console


def train_tokenizer(
    data: Path = typer.Argument(
        None,
        metavar="DATA",
        help="UTF-8 text file to learn the vocabulary from (default: the bundled stories).",
    ),
    vocab_size: int = typer.Option(
        ..., "--vocab-size", help="Ids in the vocabulary (259-262144); the model's vocab_size must equal it."
    ),
    out: Path = typer.Option(Path("tokenizer.json"), help="The tokenizer.json to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Train a byte-level BPE tokenizer (Hugging Face tokenizers) with exactly VOCAB_SIZE ids on DATA.

    It follows the bundled tokenizer's conventions (ids 0, 1, 2 = <unk>, <s> BOS, </s> EOS, then the
    256 bytes, then merges), so `anekit train --tokenizer OUT` reads it like the bundled one. OUT is
    written atomically: a failure leaves no half-written file and an existing one intact.
    """
    from ..errors import AnekitError
    from ..train.corpus import data_path
    from ..train.tokenizers import train_bpe

    source = data if data is not None else data_path("stories.txt")
    console = stdout_console()
    try:
        result = train_bpe(source, vocab_size, out, overwrite=overwrite)
    except AnekitError as e:
        raise fail(str(e)) from None
    console.print(
        f"wrote {result.path}: {result.vocab_size:,} ids (BOS <s> = 1, EOS </s> = 2), learned from "
        f"{result.characters:,} characters of {source} in {result.seconds:.1f} s"
    )
    console.print(
        f"use it with a model whose vocab_size is {result.vocab_size}: "
        f"anekit train --config model.toml --tokenizer {result.path} --data {source}"
    )
