"""The tokenizer a language model runs with, and a streaming detokenizer.

Two sources behind one class (`TextTokenizer`):

- a Hugging Face model directory: ``tokenizer.json`` run by the `tokenizers` library, with
  ``tokenizer_config.json`` (the special tokens, overridden by ``special_tokens_map.json`` if there
  is one; the chat template, or ``chat_template.jinja``) and the end-of-sequence ids of
  ``generation_config.json`` (an int or a list; transformers' `generate` stops on any of them) or
  else ``config.json``, plus the tokenizer's own eos token;
- an anekit checkpoint: its own tokenizer (`anekit.train.tokenizers`: the bundled BPE, a
  ``tokenizer.json``, a llama2.c ``tokenizer.bin``), with BOS in front of a prompt as in training.

`StreamDecoder` turns token ids into text as they come, emitting only complete text: a byte-level or
byte-fallback token that ends inside a UTF-8 character gives nothing until the character is complete.
It decodes a short window of recent tokens and emits the growth of that window's text (the method of
Hugging Face's text-generation-inference, `decode_token` in server/text_generation_server/models/
model.py), so a SentencePiece word-start space or a byte sequence is decoded in context, as a decode of
the whole sequence would.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import LLMError

__all__ = ["TextTokenizer", "StreamDecoder", "hf_tokenizer", "anekit_tokenizer", "read_json"]

#: The template variables transformers passes from a tokenizer (its `special_tokens_map`)
SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
#: Tokens of context the stream decoder keeps before the new ones (enough for any word-start rule)
_CONTEXT = 6
_INCOMPLETE = "\ufffd"  # what a decode of an unfinished UTF-8 sequence ends with


def read_json(path: Path, what: str) -> dict:
    """A JSON object file of a model directory, or {} when it does not exist. Read as every model
    file is (`anekit.model.io.read_model_json`: inside the directory after links, size-capped);
    anything unreadable is an `LLMError` naming the file."""
    from ..errors import AnekitError
    from ..model.io import read_model_json

    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        data = read_model_json(path.parent, path.name, what)
    except AnekitError as e:
        raise LLMError(str(e)) from None
    if not isinstance(data, dict):
        raise LLMError(f"{path}: the {what} is not a JSON object")
    return data


def _token_text(value) -> str | None:
    """A special token from tokenizer_config.json: a string, or a serialized AddedToken {content: ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


class TextTokenizer:
    """What generation needs from a tokenizer: encode a prompt, decode ids, the special tokens.

    `encode(text, add_special_tokens=True)` adds what the model's tokenizer adds to a plain prompt
    (BOS for Llama, nothing for Qwen); a rendered chat template is encoded without them, as
    transformers' `apply_chat_template` does (the template writes its own). `decode` drops special
    tokens. `eos_ids`: every id that ends a generation.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        bos_id: int | None,
        eos_ids: Iterable[int],
        special_tokens: dict[str, str] | None = None,
        chat_template=None,
        identity: str = "",
    ):
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.eos_ids = frozenset(eos_ids)
        self.special_tokens = dict(special_tokens or {})
        self.chat_template = chat_template
        self.identity = identity

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:  # pragma: no cover
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:  # pragma: no cover
        raise NotImplementedError

    def stream_decoder(self, context: Sequence[int] = ()) -> StreamDecoder:
        """A `StreamDecoder` for text that follows `context` (the prompt's ids)."""
        return StreamDecoder(self, context)


class _HFTextTokenizer(TextTokenizer):
    def __init__(self, raw, **kw):
        super().__init__(**kw)
        self._raw = raw

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # What is added around a prompt (BOS, sometimes EOS) is tokenizer.json's post-processor's
        # choice, as in transformers 5, whose AutoTokenizer ignores tokenizer_config.json's
        # add_bos_token/add_eos_token when tokenizer.json is present (tests/llm/test_tokenizer.py
        # checks both settings against it)
        try:
            return list(self._raw.encode(text, add_special_tokens=add_special_tokens).ids)
        except Exception as e:  # tokenizers raises a bare Exception (e.g. its unk token is not in the vocab)
            raise LLMError(
                f"{self.identity}: the tokenizer cannot encode this text: {e}; tokenizer.json is damaged "
                "or inconsistent: download it again"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return self._raw.decode([int(i) for i in ids], skip_special_tokens=True)
        except Exception as e:  # as in encode
            raise LLMError(
                f"{self.identity}: the tokenizer cannot decode ids {list(ids)[:8]}: {e}; tokenizer.json is "
                "damaged or inconsistent: download it again"
            ) from None


class _AnekitTextTokenizer(TextTokenizer):
    def __init__(self, tok, **kw):
        super().__init__(**kw)
        self._tok = tok

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, bos=add_special_tokens)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


def hf_tokenizer(
    directory: str | Path,
    *,
    tokenizer_file: Path | None = None,
    tokenizer_config: dict | None = None,
    generation_config: dict | None = None,
    model_config: dict | None = None,
) -> TextTokenizer:
    """The tokenizer of a Hugging Face model directory (files not given are read from `directory`)."""
    from tokenizers import Tokenizer as _Raw

    d = Path(directory)
    file = _tokenizer_json(d, tokenizer_file)
    raw = _load_raw(_Raw, file)
    cfg = _given_or_read(tokenizer_config, d / "tokenizer_config.json", "tokenizer config")
    gen = _given_or_read(generation_config, d / "generation_config.json", "generation config")
    model = _given_or_read(model_config, d / "config.json", "model config")
    special = _special_tokens(d, cfg)
    vocab = raw.get_vocab_size(with_added_tokens=True)
    return _HFTextTokenizer(
        raw,
        vocab_size=vocab,
        bos_id=_bos_id(raw, special, gen, model),
        eos_ids={i for i in _eos_ids(raw, special, gen, model) if 0 <= i < vocab},
        special_tokens=special,
        chat_template=_chat_template(d, cfg),
        identity=f"hf:{file}",
    )


def _tokenizer_json(d: Path, tokenizer_file: Path | None) -> Path:
    """The tokenizer.json to read: `tokenizer_file` as given, else d's, checked to lie inside d."""
    file = tokenizer_file or d / "tokenizer.json"
    if not file.is_file():
        raise LLMError(
            f"{d}: no tokenizer.json; anekit reads Hugging Face fast tokenizers only (convert a "
            "SentencePiece tokenizer.model with transformers: "
            "AutoTokenizer.from_pretrained(dir).save_pretrained(dir))"
        )
    if tokenizer_file is not None:  # (`anekit.llm.source` hands over a path it has checked)
        return file
    from ..errors import AnekitError
    from ..model.io import model_file

    try:
        return model_file(d, file.name, d, "tokenizer")
    except AnekitError as e:
        raise LLMError(str(e)) from None


def _load_raw(tokenizer_class, file: Path):
    """`file` read by `tokenizer_class` (`tokenizers.Tokenizer`)."""
    try:
        return tokenizer_class.from_file(str(file))
    except Exception as e:  # tokenizers raises its own Exception subclass on a bad file
        raise LLMError(f"{file}: not a valid Hugging Face tokenizer.json: {e}") from None


def _given_or_read(given: dict | None, path: Path, what: str) -> dict:
    return given if given is not None else read_json(path, what)


def _special_tokens(d: Path, cfg: dict) -> dict[str, str]:
    """The special tokens: tokenizer_config.json's, overridden by special_tokens_map.json's where an
    older model directory has one (as transformers' AutoTokenizer reads them)."""
    mapped = read_json(d / "special_tokens_map.json", "special tokens map")
    special = {}
    for key in SPECIAL_TOKEN_KEYS:
        text = _token_text(mapped.get(key)) or _token_text(cfg.get(key))
        if text is not None:
            special[key] = text
    return special


def _token_id(raw, name: str | None) -> int | None:
    return raw.token_to_id(name) if name else None


def _bos_id(raw, special: dict[str, str], gen: dict, model: dict) -> int | None:
    """The bos token's id, else generation_config.json's (else config.json's) first bos id."""
    bos_id = _token_id(raw, special.get("bos_token"))
    if bos_id is None:
        bos_id = next(iter(_ids(gen.get("bos_token_id")) or _ids(model.get("bos_token_id"))), None)
    return bos_id


def _eos_ids(raw, special: dict[str, str], gen: dict, model: dict) -> set[int]:
    """generation_config.json's eos ids (else config.json's), as transformers' generate stops on
    them, plus the tokenizer's own eos token."""
    eos = set(_ids(gen.get("eos_token_id")) or _ids(model.get("eos_token_id")))
    own = _token_id(raw, special.get("eos_token"))
    if own is not None:
        eos.add(own)
    return eos


def _chat_template(d: Path, cfg: dict) -> str | None:
    template = cfg.get("chat_template")
    jinja = d / "chat_template.jinja"  # transformers >= 4.43 may save the template beside the config
    if template is None and (jinja.exists() or jinja.is_symlink()):
        template = _read_template(d, jinja.name)
    return template


def _read_template(d: Path, name: str) -> str:
    from ..errors import AnekitError
    from ..model.io import model_file

    try:
        return model_file(d, name, d, "chat template").read_text(encoding="utf-8")
    except AnekitError as e:
        raise LLMError(str(e)) from None
    except (OSError, UnicodeError) as e:
        raise LLMError(f"{d / name}: cannot read the chat template: {e}") from None


def anekit_tokenizer(tok) -> TextTokenizer:
    """An anekit tokenizer (`anekit.train.tokenizers.Tokenizer`) as a `TextTokenizer`: BOS before a
    prompt, its EOS ends a generation, no chat template."""
    return _AnekitTextTokenizer(
        tok, vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_ids={tok.eos_id}, identity=tok.identity
    )


class StreamDecoder:
    """Text for token ids pushed one at a time; the concatenation of everything `push` and `flush`
    return is the decode of the pushed ids as they follow `context`.

    Keeps a window `ids[prefix:]`; `read` marks where the text already emitted ends. On each push the
    window is decoded with and without the new ids; the growth is emitted unless it ends in U+FFFD
    (an unfinished UTF-8 sequence), in which case it waits for the next ids.
    """

    def __init__(self, tokenizer: TextTokenizer, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids = [int(i) for i in list(context)[-_CONTEXT:]]
        self.prefix, self.read = 0, len(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read])
        after = decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith(_INCOMPLETE):
            out = after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
            if self.prefix > 4 * _CONTEXT:  # ids before the window are never decoded again
                self.ids = self.ids[self.prefix :]
                self.read -= self.prefix
                self.prefix = 0
            return out
        return ""

    def flush(self) -> str:
        """Whatever is still held (an unfinished character decodes as U+FFFD, as a whole decode would)."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read])
        after = decode(self.ids[self.prefix :])
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :] if len(after) > len(before) else ""
