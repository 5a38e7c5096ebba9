"""`anekit.llm.load` and `LanguageModel`: a pretrained model ready to generate text.

A `LanguageModel` holds a decoding session (`anekit.llm.decoder.Decoder`: the KV cache, prefill and
decode on a backend), the model's tokenizer and chat template, and its default sampling options
(``generation_config.json``'s, as transformers' `generate` takes them). `generate` and `stream` run the
one loop in `_events`; `chat`/`chat_stream` render the chat template first.

The session keeps the tokens it has cached. A new prompt that starts with them (the next turn of a
chat: the old prompt, the reply, the new message) only prefills what is new: the cache is truncated
to the common prefix (`Decoder.truncate`) and the rest appended. One generation runs at a time; a
stream that another generation has overtaken stops with an `LLMError` instead of reading a cache that
is no longer its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ContextFull, LLMError
from .sampling import Sampler, SamplingOptions, StopMatcher
from .tokenizer import TextTokenizer

__all__ = [
    "Completion", "StreamEvent", "LanguageModel", "load", "from_params",
    "WEIGHTS", "BACKENDS", "FLOAT64_BACKEND",
]  # fmt: skip

WEIGHTS = ("fp16", "int8", "int4")
#: Where a model can run: the engine decoder's backends, or the float64 NumPy model
BACKENDS = ("auto", "ane", "reference", "float64")
#: The backend name of the float64 NumPy session (`_Float64Session`): no engine kernels, an oracle
FLOAT64_BACKEND = "float64"
#: Cache length when neither `max_len` nor a smaller model context is given (the float64 session
#: allocates its whole cache up front)
DEFAULT_MAX_LEN = 4096
#: generation_config.json keys read as default sampling options (transformers' GenerationConfig names)
_GENERATION_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


@dataclass
class Completion:
    """A finished generation: the text (without a stop string), the generated ids (without the EOS
    that ended it), why it ended ("stop": EOS or a stop string; "length": max_tokens or the context)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StreamEvent:
    """One generated token and the text it made showable (may be "" while a character or a possible
    stop string is incomplete). The last event has `finish_reason` set; its `token_id` is None when
    the generation ended on an EOS id, which is not part of the output."""

    text: str
    token_id: int | None
    finish_reason: str | None = None


@dataclass
class _State:
    """What the session's cache holds: the token ids in it, in order."""

    tokens: list[int] = field(default_factory=list)
    owner: object = None


class _Float64Session:
    """The methods of `anekit.llm.decoder.Decoder` on the float64 NumPy reference model
    (`anekit.model.reference.decode_step`, one token at a time against a KV cache). It runs no engine
    kernel: it is the model-level oracle (`backend="float64"`), exact where the kernels are fp16."""

    def __init__(self, config, weights: Mapping[str, np.ndarray], max_len: int):
        from ..model.reference import new_cache

        self.config = config
        self.max_len = max_len
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.vocab_size = config.vocab_size
        self._cache = new_cache(config, batch=1, max_len=max_len)

    @property
    def length(self) -> int:
        return self._cache.length

    def reset(self) -> None:
        self._cache.length = 0

    def truncate(self, n: int) -> None:
        self._cache.length = max(0, min(n, self._cache.length))

    def _step(self, token: int) -> np.ndarray:
        from ..model.reference import decode_step

        if self._cache.length >= self.max_len:
            raise ContextFull(
                f"the KV cache is full ({self.max_len} tokens)", tokens=self.length + 1, limit=self.max_len
            )
        return decode_step(self.params, self.config, [int(token)], self._cache)[0].astype(np.float32)

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        tokens = list(tokens)
        if not tokens:
            raise LLMError("prefill needs at least one token")
        if self.length + len(tokens) > self.max_len:
            raise ContextFull(
                f"{self.length} cached + {len(tokens)} new tokens exceed the context of {self.max_len}",
                tokens=self.length + len(tokens),
                limit=self.max_len,
            )
        logits = None
        for t in tokens:
            logits = self._step(t)
        return logits

    def decode(self, token: int) -> np.ndarray:
        return self._step(token)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        self.reset()
        rows = [self._step(t) for t in tokens]
        return np.stack(rows) if rows else np.zeros((0, self.vocab_size), np.float32)

    def close(self) -> None:
        self.params = {}


class LanguageModel:
    """A loaded model: `generate`, `stream`, `chat`, `chat_stream`, `logits`. See `load`."""

    def __init__(
        self,
        *,
        name: str,
        config,
        tokenizer: TextTokenizer,
        session,
        backend: str,
        default_options: SamplingOptions | None = None,
        path: Path | None = None,
    ):
        self.name = name
        self.config = config
        self.tokenizer = tokenizer
        self.session = session
        self.backend = backend
        self.default_options = default_options or SamplingOptions()
        self.path = path
        self._state = _State()
        self._closed = False

    # -- properties -------------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return int(self.session.max_len)

    @property
    def chat_template(self):
        """The chat template (a string, or {name: template} when the model has several), or None."""
        return self.tokenizer.chat_template

    def __repr__(self) -> str:
        return (
            f"LanguageModel({self.name!r}, backend={self.backend!r}, context={self.context_length}, "
            f"vocab={self.config.vocab_size})"
        )

    # -- prompts ----------------------------------------------------------------------------------

    def _options(self, options: SamplingOptions | None, kw: dict) -> SamplingOptions:
        base = options if options is not None else self.default_options
        if not isinstance(base, SamplingOptions):
            raise LLMError(f"options must be a SamplingOptions, not {type(base).__name__}")
        return base.updated(**kw)

    def encode(self, prompt: str | Sequence[int], add_special_tokens: bool = True) -> list[int]:
        """Token ids of a prompt (text, or ids checked against the vocabulary)."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        else:
            try:
                ids = [int(t) for t in prompt]
            except (TypeError, ValueError):
                raise LLMError("a prompt is a string or a list of token ids") from None
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise LLMError(
                f"token id {bad[0]} is outside the model's vocabulary of {self.config.vocab_size} ids"
                + (" (the tokenizer has more ids than the model)" if isinstance(prompt, str) else "")
            )
        return ids

    def _check_prompt(self, ids: list[int]) -> None:
        if self._closed:
            raise LLMError(f"{self.name}: this model is closed; load it again (anekit.llm.load)")
        if not ids:
            raise LLMError(
                "the prompt is empty and the tokenizer adds no BOS token: give some text (or token ids)"
            )
        if len(ids) > self.context_length:
            raise ContextFull(
                f"the prompt has {len(ids)} tokens and the context holds {self.context_length}: "
                "give a shorter prompt (or a larger max_len, up to the model's "
                f"{self.config.seq_len})",
                tokens=len(ids),
                limit=self.context_length,
            )

    # -- generation -------------------------------------------------------------------------------

    def stream(self, prompt: str | Sequence[int], options: SamplingOptions | None = None, **kw):
        """An iterator of `StreamEvent`s, one per generated token. The prompt and options are checked
        now (errors raise here, not on the first `next`); closing the iterator stops decoding."""
        opts = self._options(options, kw)
        ids = self.encode(prompt)
        self._check_prompt(ids)
        return self._events(ids, opts)

    def generate(
        self, prompt: str | Sequence[int], options: SamplingOptions | None = None, **kw
    ) -> Completion:
        """Generate to the end (EOS, a stop string, max_tokens or the context) and return it all."""
        opts = self._options(options, kw)
        ids = self.encode(prompt)
        self._check_prompt(ids)
        return self._collect(ids, opts)

    def render_chat(self, messages, add_generation_prompt: bool = True, **template_kwargs) -> str:
        """The chat as the model's template renders it (as transformers' `apply_chat_template`)."""
        from .chat_template import render_chat

        if self.chat_template is None:
            raise LLMError(
                f"{self.name}: has no chat template (tokenizer_config.json has no chat_template); "
                "use generate with a plain prompt"
            )
        return render_chat(
            self.chat_template,
            messages,
            special_tokens=self.tokenizer.special_tokens,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )

    def _chat_ids(self, messages, template_kwargs: dict | None) -> list[int]:
        text = self.render_chat(messages, add_generation_prompt=True, **(template_kwargs or {}))
        ids = self.encode(text, add_special_tokens=False)  # the template writes its own BOS
        self._check_prompt(ids)
        return ids

    def chat(
        self, messages, options: SamplingOptions | None = None, *, template_kwargs: dict | None = None, **kw
    ) -> Completion:
        """The assistant's reply to `messages` ([{"role": ..., "content": ...}, ...])."""
        opts = self._options(options, kw)
        return self._collect(self._chat_ids(messages, template_kwargs), opts)

    def chat_stream(
        self, messages, options: SamplingOptions | None = None, *, template_kwargs: dict | None = None, **kw
    ):
        """`chat`, streamed as `StreamEvent`s (see `stream`)."""
        opts = self._options(options, kw)
        return self._events(self._chat_ids(messages, template_kwargs), opts)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Next-token logits after each position of a fresh sequence: float32 [S, V]."""
        ids = self.encode(tokens)
        self._check_prompt(ids)
        self._state = _State()
        try:
            return np.asarray(self.session.logits(ids), dtype=np.float32)
        finally:
            self.session.reset()

    def close(self) -> None:
        """Free the session (the engine programs, the cache); calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._state = _State()
        self.session.close()

    def __enter__(self) -> LanguageModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the loop ---------------------------------------------------------------------------------

    def _collect(self, ids: list[int], opts: SamplingOptions) -> Completion:
        texts, out, reason = [], [], "length"
        for ev in self._events(ids, opts):
            texts.append(ev.text)
            if ev.token_id is not None:
                out.append(ev.token_id)
            if ev.finish_reason is not None:
                reason = ev.finish_reason
        return Completion("".join(texts), out, reason, len(ids), len(out))

    def _prefill(self, ids: list[int]) -> np.ndarray:
        """Logits after `ids`, reusing the cached prefix they share with what the session holds."""
        state = self._state
        cached = state.tokens
        common = 0
        for a, b in zip(cached, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one token to prefill: its logits are needed
        try:
            if common < self.session.length:
                self.session.truncate(common)
            state.tokens = ids[:common]
            logits = self.session.prefill(ids[common:])
        except BaseException:
            self._forget()
            raise
        state.tokens = list(ids)
        return logits

    def _forget(self) -> None:
        self._state = _State()
        self.session.reset()

    def _events(self, ids: list[int], opts: SamplingOptions) -> Iterator[StreamEvent]:
        owner = object()
        self._state.owner = owner
        logits = self._prefill(ids)
        sampler = Sampler(opts, self.config.vocab_size, ids)
        detok = self.tokenizer.stream_decoder(ids)
        stops = StopMatcher(opts.stop)
        eos = self.tokenizer.eos_ids
        produced = 0
        while True:
            token = sampler.choose(logits)
            if token in eos:
                text, stopped = stops.feed(detok.flush())
                yield StreamEvent(text if stopped else text + stops.flush(), None, "stop")
                return
            produced += 1
            sampler.observe(token)
            text, stopped = stops.feed(detok.push(token))
            if stopped:
                yield StreamEvent(text, token, "stop")
                return
            if produced >= opts.max_tokens or self.session.length >= self.context_length:
                rest, stopped = stops.feed(detok.flush())
                text += rest if stopped else rest + stops.flush()
                yield StreamEvent(text, token, "stop" if stopped else "length")
                return
            yield StreamEvent(text, token, None)
            if self._closed:
                raise LLMError(f"{self.name}: the model was closed while this stream was paused")
            if self._state.owner is not owner:
                raise LLMError(
                    "another generation started on this model while this stream was paused; a model "
                    "decodes one sequence at a time (finish or close a stream before starting the next)"
                )
            try:
                logits = self.session.decode(token)
            except BaseException:
                self._forget()
                raise
            self._state.tokens.append(token)


# ---------------------------------------------------------------------------------------------
# loading


def _default_options(generation_config: Mapping, kind: str) -> SamplingOptions:
    """The sampling defaults of a Hugging Face model as transformers' `generate` takes them from its
    generation_config.json: max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty,
    and greedy unless ``do_sample`` is true (GenerationConfig's default is do_sample=False). Values
    out of range are ignored (the file is the model author's, not the user's). An anekit checkpoint
    or a GGUF file has none: the `SamplingOptions` defaults."""
    base = SamplingOptions()
    if kind != "hf":
        return base
    kw = {}
    if generation_config.get("max_new_tokens") is not None:
        kw["max_tokens"] = generation_config["max_new_tokens"]
    for key in _GENERATION_KEYS:
        if generation_config.get(key) is not None:
            kw[key] = generation_config[key]
    if generation_config.get("do_sample") is not True:
        kw["temperature"] = 0.0
    for key, value in kw.items():
        try:
            base = base.updated(**{key: value})
        except LLMError:
            pass
    return base


def _open_session(config, weights, backend: str, quant: str, max_len: int):
    """The decoding session: the engine decoder (`anekit.llm.decoder.Decoder`) on the resolved
    backend, or the float64 NumPy session; (session, backend name)."""
    if backend == FLOAT64_BACKEND:
        if quant != "fp16":
            raise LLMError(
                f"weights={quant!r} needs the kernels; backend {FLOAT64_BACKEND!r} runs the float64 "
                "reference model on the weights as stored: use backend 'auto' or 'reference'"
            )
        return _Float64Session(config, weights, max_len), FLOAT64_BACKEND
    from ..backends import resolve
    from .decoder import Decoder

    name = resolve(backend)
    return Decoder(config, weights, backend=name, quant=quant, max_len=max_len), name


def _tokenizer_for(src, given) -> TextTokenizer:
    from .tokenizer import anekit_tokenizer, hf_tokenizer

    if isinstance(given, TextTokenizer):
        return given
    if given is not None:  # an anekit tokenizer (anekit.train.tokenizers)
        return anekit_tokenizer(given)
    if src.kind == "anekit":
        from ..train.checkpoint import load_checkpoint_tokenizer
        from ..train.tokenizers import bundled_tokenizer

        # saved without one: the bundled tokenizer, as `anekit eval`/`generate` always did
        return anekit_tokenizer(load_checkpoint_tokenizer(src.directory) or bundled_tokenizer())
    return hf_tokenizer(
        src.directory,
        tokenizer_file=src.tokenizer_file,
        tokenizer_config=src.tokenizer_config,
        generation_config=src.generation_config,
    )


def load(
    path: str | Path,
    backend: str = "auto",
    weights: str = "fp16",
    max_len: int | None = None,
    *,
    tokenizer=None,
) -> LanguageModel:
    """A `LanguageModel` from a Hugging Face model directory (config.json, safetensors,
    tokenizer.json), a GGUF file (`anekit.llm.source`), or an anekit checkpoint (or the run directory
    holding one).

    backend: "auto" (the engine where reachable, else the reference backend), "ane", "reference",
    or "float64" (the NumPy float64 reference model, no kernels: an oracle). weights: "fp16", "int8",
    "int4" (the precision of the weights baked into the programs). max_len: the KV cache's length
    (default: the model's context, at most 4096). tokenizer: another tokenizer (for anekit
    checkpoints: an `anekit.train.tokenizers` tokenizer).
    """
    p = Path(path).expanduser()
    if weights not in WEIGHTS:
        raise LLMError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if backend not in BACKENDS:
        raise LLMError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise LLMError(f"max_len must be an integer >= 1, got {max_len!r}")
    from .source import open_model

    src = open_model(p)
    config = src.config
    tok = _tokenizer_for(src, tokenizer)
    if max_len is not None and max_len > config.seq_len:
        raise LLMError(f"max_len {max_len} exceeds the model's context of {config.seq_len} tokens")
    length = max_len or min(config.seq_len, DEFAULT_MAX_LEN)
    session, backend_name = _open_session(config, src.weights, backend, weights, length)
    return LanguageModel(
        name=src.name,
        config=config,
        tokenizer=tok,
        session=session,
        backend=backend_name,
        default_options=_default_options(src.generation_config, src.kind),
        path=src.directory,
    )


def from_params(
    config, params: Mapping[str, np.ndarray], tokenizer, *, name: str | None = None
) -> LanguageModel:
    """A `LanguageModel` on parameters in memory (anekit names, e.g. a model just trained) with an
    `anekit.train.tokenizers` tokenizer, on the float64 session: `anekit train` prints its
    end-of-run sample through it, so anekit has one sampler and one decoding loop."""
    return LanguageModel(
        name=name or config.name,
        config=config,
        tokenizer=_tokenizer_for(None, tokenizer),
        session=_Float64Session(config, params, config.seq_len),
        backend=FLOAT64_BACKEND,
    )
