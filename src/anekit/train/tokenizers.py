"""Tokenizers behind one small protocol: the bundled BPE, Hugging Face ``tokenizer.json``, llama2.c
``tokenizer.bin``.

Why one protocol: the data pipeline, the sampler and the CLI only need ``encode``/``decode`` and the
BOS/EOS ids; which file the vocabulary came from should not leak past `load_tokenizer`.

Conventions shared by all three (mirroring llama2.c, ane-private-api.md §5.1): a document is encoded
with BOS in front (``bos=True``) and, by default, no EOS; ``decode`` drops BOS/EOS.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable


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
            raise ValueError(f"{self.path}: cannot read tokenizer file: {e}") from e
        except Exception as e:  # tokenizers raises its own Exception subclass on bad JSON
            raise ValueError(f"{self.path}: not a valid Hugging Face tokenizer.json: {e}") from e
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
        raise ValueError(
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
            raise ValueError(f"{self.path}: cannot read tokenizer file: {e}") from e
        self.max_token_length, self.pieces, self.scores = parse_llama2c_tokenizer(data, str(self.path))
        self._identity = f"llama2c:sha256={_sha256_bytes(data)}"
        self._bos, self._eos = bos_id, eos_id
        for what, tid in (("BOS", bos_id), ("EOS", eos_id)):
            if not 0 <= tid < len(self.pieces):
                raise ValueError(
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
                    raise ValueError(
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
                raise ValueError(f"token id {i} is outside the vocabulary of {len(self.pieces)}")
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
        raise ValueError(
            f"{name}: {len(data)} bytes is too short for a llama2.c tokenizer.bin (int32 header)"
        )
    (max_len,) = struct.unpack_from("<i", data, 0)
    if max_len <= 0:
        raise ValueError(f"{name}: max_token_length {max_len} is not positive; not a llama2.c tokenizer.bin")
    pieces: list[bytes] = []
    scores: list[float] = []
    off = 4
    while off < len(data):
        if off + 8 > len(data):
            raise ValueError(f"{name}: truncated entry for id {len(pieces)} at byte {off}")
        score, n = struct.unpack_from("<fi", data, off)
        off += 8
        if n < 0 or off + n > len(data):
            raise ValueError(
                f"{name}: entry for id {len(pieces)} at byte {off - 8} claims {n} bytes, "
                f"{len(data) - off} remain; not a llama2.c tokenizer.bin or truncated"
            )
        pieces.append(data[off : off + n])
        scores.append(score)
        off += n
    if not pieces:
        raise ValueError(f"{name}: no vocabulary entries")
    return max_len, pieces, scores


def save_llama2c_tokenizer(path: str | Path, pieces: Iterable[bytes | str], scores: Iterable[float]) -> None:
    """Write a llama2.c tokenizer.bin (§5.1); used by tests and by anyone converting a vocabulary."""
    enc = [p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in pieces]
    sc = [float(s) for s in scores]
    if len(enc) != len(sc):
        raise ValueError(f"{len(enc)} pieces but {len(sc)} scores")
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
        raise ValueError(f"{p}: directory has no tokenizer.json or tokenizer.bin")
    if not p.is_file():
        raise ValueError(f"{p}: no such tokenizer file")
    if p.suffix == ".model":
        raise ValueError(
            f"{p}: SentencePiece .model files are not read directly; use the matching tokenizer.json "
            "(Hugging Face) or a llama2.c tokenizer.bin"
        )
    with open(p, "rb") as f:
        head = f.read(64).lstrip()
    if head.startswith(b"{"):
        return HFTokenizer(p)
    return Llama2cTokenizer(p)
