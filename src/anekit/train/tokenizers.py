"""Tokenizers behind one small protocol: the bundled BPE, Hugging Face ``tokenizer.json``, llama2.c
``tokenizer.bin``.

Why one protocol: the data pipeline, the sampler and the CLI only need ``encode``/``decode`` and the
BOS/EOS ids; which file the vocabulary came from should not leak past `load_tokenizer`.

Conventions shared by all three (mirroring llama2.c, ane-private-api.md §5.1): a document is encoded
with BOS in front (``bos=True``) and, by default, no EOS; ``decode`` drops BOS/EOS.

`train_bpe` trains a byte-level BPE of a chosen size on the user's own text, with the conventions of
the bundled tokenizer (`anekit.train.corpus`), so `load_tokenizer` reads it like the bundled one.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from ..errors import AnekitError
from ..safe_dir import check_regular_file


class TokenizerError(AnekitError, ValueError):
    """A tokenizer file that cannot be read, or a tokenizer that cannot be trained as asked."""


@runtime_checkable
class Tokenizer(Protocol):
    """What anekit needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def identity(self) -> str:
        """A short stable string naming the vocabulary (kind and content hash), stored in checkpoints
        so a resumed run can tell it was given a different tokenizer."""
        ...

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json (and the bundled tokenizer, which is one)

_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>")


def _special_from_config(path: Path, key: str) -> str | None:
    """`bos_token`/`eos_token` from a ``tokenizer_config.json`` beside the tokenizer, if any."""
    cfg = path.with_name("tokenizer_config.json")
    if not cfg.is_file():
        return None
    try:
        value = json.loads(cfg.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` run by the `tokenizers` library.

    BOS/EOS are taken from the given token strings, else ``tokenizer_config.json`` beside the file,
    else the first of the usual names present (``<s>``/``</s>``, Llama 3's, GPT-2's
    ``<|endoftext|>``). The tokenizer's own post-processor (which may add BOS by itself) is bypassed:
    `encode` adds exactly what ``bos``/``eos`` ask for.
    """

    def __init__(
        self,
        path: str | Path,
        bos_token: str | None = None,
        eos_token: str | None = None,
        kind: str = "hf",
    ):
        from tokenizers import Tokenizer as _HFTok

        self.path = Path(path)
        try:
            data = self.path.read_bytes()
            self._tok = _HFTok.from_str(data.decode("utf-8"))
        except OSError as e:
            raise TokenizerError(f"{self.path}: cannot read tokenizer file: {e}") from e
        except Exception as e:  # tokenizers raises its own Exception subclass on bad JSON
            raise TokenizerError(f"{self.path}: not a valid Hugging Face tokenizer.json: {e}") from e
        self._identity = f"{kind}:sha256={_sha256_bytes(data)}"
        self._bos = self._find(bos_token or _special_from_config(self.path, "bos_token"), _BOS_NAMES, "BOS")
        self._eos = self._find(eos_token or _special_from_config(self.path, "eos_token"), _EOS_NAMES, "EOS")
        self._specials = {self._bos, self._eos}

    def _find(self, name: str | None, candidates: tuple[str, ...], what: str) -> int:
        tried = (name,) if name else candidates
        for cand in tried:
            tid = self._tok.token_to_id(cand)
            if tid is not None:
                return tid
        raise TokenizerError(
            f"{self.path}: no {what} token found (tried {', '.join(map(repr, tried))}); "
            f"name it explicitly (HFTokenizer(path, bos_token=..., eos_token=...))"
        )

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def identity(self) -> str:
        return self._identity

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        return ([self._bos] if bos else []) + ids + ([self._eos] if eos else [])

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        return self._wrap(self._tok.encode(text, add_special_tokens=False).ids, bos, eos)

    def encode_batch(self, texts: Sequence[str], bos: bool = True, eos: bool = False) -> list[list[int]]:
        """Many documents at once (the library encodes them in parallel)."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, bos, eos) for e in encs]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(
            [int(i) for i in ids if int(i) not in self._specials], skip_special_tokens=True
        )


def bundled_tokenizer() -> HFTokenizer:
    """The byte-level BPE shipped with anekit (vocab 512, BOS=1, EOS=2; see `anekit.train.corpus`)."""
    from .corpus import data_path

    return HFTokenizer(data_path("tokenizer.json"), bos_token="<s>", eos_token="</s>", kind="bundled")


# ---------------------------------------------------------------------------------------------
# llama2.c tokenizer.bin

_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")
_NO_MERGE_SCORE = -1e10  # llama2.c starts its best-score search here: a pair scoring lower never merges


class Llama2cTokenizer:
    """A llama2.c ``tokenizer.bin`` (a SentencePiece vocabulary exported with scores).

    Format (ane-private-api.md §5.1): ``int32 max_token_length``, then one entry per id until end of
    file: ``float32 score, int32 len, len bytes`` (UTF-8). Pieces carry real spaces (SentencePiece's
    ``▁`` already replaced). ``<0xNN>`` pieces stand for the raw byte 0xNN. BOS=1, EOS=2.

    Encoding is SentencePiece-BPE as llama2.c runs it: prepend one space (the "dummy prefix") to
    non-empty text, split it into code points (each looked up as a piece, else its UTF-8 bytes as
    ``<0xNN>`` pieces), then repeatedly merge the adjacent pair whose concatenation is a piece with
    the highest score (the leftmost such pair on a tie) until no pair merges. A heap gives the same
    merges as that rescanning loop in O(n log n).

    Decoding drops BOS/EOS, turns ``<0xNN>`` into bytes and, following the "leading space after BOS"
    convention, drops the first character of a piece that starts with a space when it is the first
    piece after BOS or of the sequence (which undoes the dummy prefix).
    """

    def __init__(self, path: str | Path, bos_id: int = 1, eos_id: int = 2):
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise TokenizerError(f"{self.path}: cannot read tokenizer file: {e}") from e
        self.max_token_length, self.pieces, self.scores = parse_llama2c_tokenizer(data, str(self.path))
        self._identity = f"llama2c:sha256={_sha256_bytes(data)}"
        self._bos, self._eos = bos_id, eos_id
        for what, tid in (("BOS", bos_id), ("EOS", eos_id)):
            if not 0 <= tid < len(self.pieces):
                raise TokenizerError(
                    f"{self.path}: {what} id {tid} is outside the vocabulary of {len(self.pieces)}"
                )
        self._lookup: dict[bytes, int] = {}
        for i, p in enumerate(self.pieces):
            self._lookup.setdefault(p, i)  # first id wins on a duplicate piece, as a linear search would
        self._byte_of: dict[int, int] = {}
        self._id_of_byte: dict[int, int] = {}
        for i, p in enumerate(self.pieces):
            m = _BYTE_PIECE.fullmatch(p)
            if m:
                b = int(m.group(1), 16)
                self._byte_of[i] = b
                self._id_of_byte.setdefault(b, i)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def identity(self) -> str:
        return self._identity

    def _initial_ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for ch in " " + text:  # the dummy prefix; processed like any other code point
            b = ch.encode("utf-8")
            tid = self._lookup.get(b)
            if tid is not None:
                ids.append(tid)
                continue
            for byte in b:  # byte fallback
                fid = self._id_of_byte.get(byte)
                if fid is None:
                    raise TokenizerError(
                        f"{self.path}: cannot encode {ch!r}: it is not a piece and the vocabulary has no "
                        f"byte-fallback piece <0x{byte:02X}>"
                    )
                ids.append(fid)
        return ids

    def _merge(self, ids: list[int]) -> list[int]:
        n = len(ids)
        if n < 2:
            return ids
        tok = list(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap: list[tuple[float, int, int, int, int]] = []

        def push(i: int) -> None:
            j = nxt[i]
            if j >= n:
                return
            merged = self._lookup.get(self.pieces[tok[i]] + self.pieces[tok[j]])
            if merged is not None and self.scores[merged] > _NO_MERGE_SCORE:
                heapq.heappush(heap, (-self.scores[merged], i, tok[i], tok[j], merged))

        for i in range(n - 1):
            push(i)
        while heap:
            _neg, i, a, b, merged = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j >= n or tok[i] != a or tok[j] != b:
                continue  # stale: one side has merged since this entry was pushed
            tok[i] = merged
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        return [tok[i] for i in range(n) if alive[i]]

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = self._merge(self._initial_ids(text)) if text else []
        return ([self._bos] if bos else []) + ids + ([self._eos] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        at_start = True
        for raw in ids:
            i = int(raw)
            if i == self._bos:
                at_start = True
                continue
            if i == self._eos:
                continue
            if not 0 <= i < len(self.pieces):
                raise TokenizerError(f"token id {i} is outside the vocabulary of {len(self.pieces)}")
            if i in self._byte_of:
                out.append(self._byte_of[i])
            else:
                piece = self.pieces[i]
                out += piece[1:] if at_start and piece.startswith(b" ") else piece
            at_start = False
        return out.decode("utf-8", errors="replace")


def parse_llama2c_tokenizer(data: bytes, name: str = "tokenizer.bin") -> tuple[int, list[bytes], list[float]]:
    """(max_token_length, pieces, scores) from the bytes of a llama2.c tokenizer.bin (§5.1)."""
    if len(data) < 4:
        raise TokenizerError(
            f"{name}: {len(data)} bytes is too short for a llama2.c tokenizer.bin (int32 header)"
        )
    (max_len,) = struct.unpack_from("<i", data, 0)
    if max_len <= 0:
        raise TokenizerError(
            f"{name}: max_token_length {max_len} is not positive; not a llama2.c tokenizer.bin"
        )
    pieces: list[bytes] = []
    scores: list[float] = []
    off = 4
    while off < len(data):
        if off + 8 > len(data):
            raise TokenizerError(f"{name}: truncated entry for id {len(pieces)} at byte {off}")
        score, n = struct.unpack_from("<fi", data, off)
        off += 8
        if n < 0 or off + n > len(data):
            raise TokenizerError(
                f"{name}: entry for id {len(pieces)} at byte {off - 8} claims {n} bytes, "
                f"{len(data) - off} remain; not a llama2.c tokenizer.bin or truncated"
            )
        pieces.append(data[off : off + n])
        scores.append(score)
        off += n
    if not pieces:
        raise TokenizerError(f"{name}: no vocabulary entries")
    return max_len, pieces, scores


def save_llama2c_tokenizer(path: str | Path, pieces: Iterable[bytes | str], scores: Iterable[float]) -> None:
    """Write a llama2.c tokenizer.bin (§5.1); used by tests and by anyone converting a vocabulary."""
    enc = [p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in pieces]
    sc = [float(s) for s in scores]
    if len(enc) != len(sc):
        raise TokenizerError(f"{len(enc)} pieces but {len(sc)} scores")
    parts = [struct.pack("<i", max((len(p) for p in enc), default=1))]
    for p, s in zip(enc, sc):
        parts.append(struct.pack("<fi", s, len(p)) + p)
    Path(path).write_bytes(b"".join(parts))


# ---------------------------------------------------------------------------------------------


def encode_documents(
    tok: Tokenizer, docs: Sequence[str], bos: bool = True, eos: bool = False
) -> list[list[int]]:
    """Encode many documents, in parallel where the tokenizer can."""
    batch = getattr(tok, "encode_batch", None)
    if batch is not None:
        return batch(docs, bos=bos, eos=eos)
    return [tok.encode(d, bos=bos, eos=eos) for d in docs]


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """The tokenizer in `path`, chosen by content: JSON => Hugging Face ``tokenizer.json``, else a
    llama2.c ``tokenizer.bin``. A directory is searched for either. None => the bundled tokenizer."""
    if path is None:
        return bundled_tokenizer()
    p = Path(path)
    if p.is_dir():
        for name in ("tokenizer.json", "tokenizer.bin"):
            if (p / name).is_file():
                return load_tokenizer(p / name)
        raise TokenizerError(f"{p}: directory has no tokenizer.json or tokenizer.bin")
    if not p.is_file():
        raise TokenizerError(f"{p}: no such tokenizer file")
    if p.suffix == ".model":
        raise TokenizerError(
            f"{p}: SentencePiece .model files are not read directly; use the matching tokenizer.json "
            "(Hugging Face) or a llama2.c tokenizer.bin"
        )
    with open(p, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"{"):
        return HFTokenizer(p)
    return Llama2cTokenizer(p)


# ---------------------------------------------------------------------------------------------
# Training a byte-level BPE

#: Ids 0, 1, 2 of every BPE anekit trains, the bundled one included: llama2.c's unk/BOS/EOS (§5.1).
#: ``<unk>`` is never produced (the 256-byte alphabet covers any text); ids 3..258 are the bytes.
BPE_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
#: The specials and the 256 bytes: a vocabulary this small learns no merge at all.
BPE_MIN_VOCAB = len(BPE_SPECIAL_TOKENS) + 256
#: 2^18 = 262,144, the size of the largest published LLM vocabularies (Gemma 3); larger is a typo.
BPE_MAX_VOCAB = 1 << 18
#: A pair must occur this often to be merged (as for the bundled tokenizer).
BPE_MIN_FREQUENCY = 2


def new_bpe(vocab_size: int):
    """An untrained byte-level BPE and its trainer, configured as the bundled tokenizer's:
    (`tokenizers.Tokenizer`, `tokenizers.trainers.BpeTrainer`)."""
    from tokenizers import Tokenizer as _HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BPE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=BPE_MIN_FREQUENCY,
        show_progress=False,
    )
    return tok, trainer


class TrainedBpe(NamedTuple):
    """What `train_bpe` wrote: the file, its vocabulary size, and what it learned from."""

    path: Path
    vocab_size: int
    characters: int  #: characters of text read
    sources: int  #: files (or iterator texts) read
    seconds: float


def _check_vocab_size(vocab_size) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab_size must be an integer, got {vocab_size!r}")
    if not BPE_MIN_VOCAB <= vocab_size <= BPE_MAX_VOCAB:
        raise TokenizerError(
            f"vocab_size {vocab_size} is out of range: a byte-level BPE needs at least {BPE_MIN_VOCAB} ids "
            f"({len(BPE_SPECIAL_TOKENS)} special tokens + 256 bytes) and at most {BPE_MAX_VOCAB:,}"
        )
    return vocab_size


def _check_text_file(p: Path) -> Path:
    return check_regular_file(p, TokenizerError, "", "give a UTF-8 text file")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise TokenizerError(
            f"{out}: is a directory; give the tokenizer file to write, e.g. {out / 'tokenizer.json'}"
        )
    if os.path.lexists(out) and not overwrite:
        raise TokenizerError(
            f"{out}: already exists; choose another path or allow overwriting it (--overwrite)"
        )
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TokenizerError(f"{out}: cannot be created, {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TokenizerError(f"{out}: cannot be written, {ancestor} is not writable")


class _Counter:
    def __init__(self):
        self.characters = 0
        self.visible = False  # any non-whitespace character seen
        self.sources = 0

    def see(self, text: str) -> str:
        self.characters += len(text)
        if not self.visible and not text.isspace():
            self.visible = bool(text)
        return text


def _file_texts(files: list[Path], count: _Counter) -> Iterator[str]:
    for p in files:
        count.sources += 1
        lines = 0
        try:
            with open(p, encoding="utf-8", newline="") as f:
                for line in f:
                    lines += 1
                    yield count.see(line)
        except UnicodeDecodeError as e:
            raise TokenizerError(
                f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} after line {lines}); "
                "convert it to UTF-8 first"
            ) from None
        except OSError as e:
            raise TokenizerError(f"{p}: cannot read: {e.strerror or e}") from None


def _iterator_texts(texts: Iterable, count: _Counter) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TokenizerError(f"text {i} of the iterator is {type(text).__name__}, not str")
        count.sources += 1
        yield count.see(text)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def train_bpe(
    source: str | os.PathLike | Sequence[os.PathLike] | Iterable[str],
    vocab_size: int,
    out_path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> TrainedBpe:
    """Train a byte-level BPE with exactly `vocab_size` ids and write it as a Hugging Face
    ``tokenizer.json`` at `out_path`, atomically (a temporary file renamed into place, so a reader
    never sees half a file and an existing file survives a failure).

    `source`: a text file path (`pathlib.Path`), a list of them, or an iterable of texts (`str`).
    Files are read as UTF-8, line by line. Conventions are the bundled tokenizer's (`new_bpe`): ids 0,
    1, 2 = ``<unk>``, ``<s>`` (BOS), ``</s>`` (EOS), then the 256 bytes, then merges, so
    `load_tokenizer(out_path)` gives BOS 1 and EOS 2.

    Every input is checked before training starts; any problem (missing or non-regular file,
    vocabulary out of range, no text, text too small for the vocabulary asked, `out_path` existing
    without `overwrite`) is a `TokenizerError` saying what to do.
    """
    vocab_size = _check_vocab_size(vocab_size)
    out = Path(out_path)
    _check_out(out, overwrite)
    count = _Counter()
    if isinstance(source, str):
        raise TokenizerError(
            "source is a str: pass pathlib.Path(...) for a file, or a list of texts for text itself"
        )
    if isinstance(source, os.PathLike):
        texts = _file_texts([_check_text_file(Path(source))], count)
    elif isinstance(source, (list, tuple)) and source and all(isinstance(x, os.PathLike) for x in source):
        texts = _file_texts([_check_text_file(Path(x)) for x in source], count)
    elif isinstance(source, Iterable):
        texts = _iterator_texts(source, count)
    else:
        raise TokenizerError(
            f"source must be a file path, a list of them or an iterable of texts, not {source!r}"
        )

    start = time.perf_counter()
    tok, trainer = new_bpe(vocab_size)
    tok.train_from_iterator(texts, trainer=trainer)
    seconds = time.perf_counter() - start
    if not count.visible:
        raise TokenizerError("the text is empty (nothing but whitespace); there is nothing to learn from")
    got = tok.get_vocab_size()
    if got != vocab_size:
        raise TokenizerError(
            f"the text ({count.characters:,} characters) holds enough repeated pairs for only {got} ids, "
            f"not {vocab_size}: give more text, or a vocab_size of at most {got}"
        )

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(tmp))
        _fsync(tmp)
        check = HFTokenizer(tmp)  # what load_tokenizer will see: the specials where they belong
        if (check.bos_id, check.eos_id, check.vocab_size) != (1, 2, vocab_size):
            raise TokenizerError(f"{out}: the trained tokenizer has unexpected special ids (internal error)")
        os.replace(tmp, out)
        _fsync(out.parent)
    except OSError as e:
        raise TokenizerError(f"{out}: cannot write: {e.strerror or e}; nothing was changed there") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return TrainedBpe(out, vocab_size, count.characters, count.sources, seconds)
