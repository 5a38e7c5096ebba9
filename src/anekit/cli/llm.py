"""`anekit generate` and `anekit chat`: run a pretrained model (a Hugging Face directory or an anekit
run / checkpoint) through `anekit.llm`, streaming the text as it is decoded.

Sampling flags left unset take the model's defaults (its generation_config.json, as transformers
does; for an anekit checkpoint the `SamplingOptions` defaults), so a model's authors' settings apply
unless the user overrides them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from .common import err, fail

_SAMPLING_HELP = "default: the model's, else"


def _model_arg():
    return typer.Argument(
        ...,
        help="A Hugging Face model directory (config.json, safetensors, tokenizer.json), a GGUF file "
        "(tokenizer.json beside it), or an anekit checkpoint directory (runs/tiny/checkpoint) or the run "
        "directory holding one (runs/tiny).",
    )


def _sampling(
    max_tokens: int | None,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    min_p: float | None,
    repetition_penalty: float | None,
    stop: list[str] | None,
    seed: int | None,
) -> dict:
    """The flags the user set, by `SamplingOptions` name (checked later against the model's defaults)."""
    given = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
    }
    kw = {k: v for k, v in given.items() if v is not None}
    if stop:
        kw["stop"] = tuple(stop)
    return kw


def _check_sampling(kw: dict) -> None:
    """Refuse a bad flag before the model is loaded (loading may take a while)."""
    from ..llm.errors import OptionError
    from ..llm.sampling import SamplingOptions

    try:
        SamplingOptions().updated(**kw)
    except OptionError as e:
        raise fail(e.for_flag()) from None


def _options(model, kw: dict):
    from ..llm.errors import OptionError

    try:
        return model.default_options.updated(**kw)
    except OptionError as e:
        raise fail(e.for_flag()) from None


def _backend(backend: str) -> tuple[str, str | None]:
    """(backend to load with, why the engine is not used when `auto` falls back, else None). `auto`
    is resolved here, quietly, so the fallback note can come after the generated text on stderr."""
    from ..llm.model import BACKENDS

    if backend not in BACKENDS:
        raise fail(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend, None
    from ..backends import availability

    ok, why = availability("ane")
    return ("ane", None) if ok else ("reference", why)


def _fallback_note(why: str | None) -> None:
    if why:
        err.print(
            f"note: ran on the reference backend (CPU emulation of the engine; {why})",
            highlight=False,
            markup=False,
        )


def _load(model: Path, backend: str, weights: str, max_len: int | None, tokenizer: Path | None):
    from ..errors import AnekitError
    from ..llm import load

    if not model.exists():
        raise fail(f"{model}: no such checkpoint or model directory")
    tok = None
    if tokenizer is not None:
        tok = _checkpoint_tokenizer(model, tokenizer)
    try:
        return load(model, backend=backend, weights=weights, max_len=max_len, tokenizer=tok)
    except AnekitError as e:
        raise fail(str(e)) from None


def _checkpoint_tokenizer(model: Path, given: Path):
    """--tokenizer for an anekit checkpoint: the rules of `anekit eval` (a tokenizer other than the
    run's own is used, with a warning)."""
    from ..errors import AnekitError
    from ..train.checkpoint import STATE_FILE, read_state
    from .train import _tokenizer_for, checkpoint_dir

    ckpt = checkpoint_dir(model)
    if not (ckpt / STATE_FILE).is_file():
        raise fail(
            f"--tokenizer applies to anekit checkpoints; {model} is not one (a Hugging Face directory "
            "brings its own tokenizer.json)"
        )
    try:
        state = read_state(ckpt).train_state
    except AnekitError as e:
        raise fail(str(e)) from None
    return _tokenizer_for(ckpt, given, state)


def _write(text: str) -> None:
    if text:
        typer.echo(text, nl=False)  # click flushes after each write: the terminal sees every token


def generate(
    model: Path = _model_arg(),
    prompt: str = typer.Option(
        "", help="Text to continue (default: start from BOS, where the model has one)."
    ),
    max_tokens: int = typer.Option(
        None,
        help="Tokens to generate at most (stops earlier at EOS, a --stop or the context). "
        f"{_SAMPLING_HELP} 256.",
    ),
    temperature: float = typer.Option(None, help=f"Sampling temperature; 0: greedy ({_SAMPLING_HELP} 1)."),
    top_k: int = typer.Option(
        None, help=f"Sample among the k most likely tokens; 0: all ({_SAMPLING_HELP} 0)."
    ),
    top_p: float = typer.Option(
        None, help=f"Nucleus sampling: the smallest set with this mass, (0, 1] ({_SAMPLING_HELP} 1)."
    ),
    min_p: float = typer.Option(
        None, help=f"Drop tokens less likely than min-p x the top token's, [0, 1] ({_SAMPLING_HELP} 0)."
    ),
    repetition_penalty: float = typer.Option(
        None,
        help=f"Penalise tokens already in the prompt or output (CTRL), > 0; 1: off ({_SAMPLING_HELP} 1).",
    ),
    stop: list[str] = typer.Option(
        None, "--stop", help="Stop when the text contains this string (not printed); repeatable."
    ),
    seed: int = typer.Option(None, help="Sampling seed (default: a fresh one each run)."),
    backend: str = typer.Option(
        "auto",
        help="auto (the engine where reachable), ane, reference, or float64 (the NumPy float64 model, "
        "no kernels).",
    ),
    weights: str = typer.Option("fp16", help="Weights baked into the engine programs: fp16, int8 or int4."),
    max_len: int = typer.Option(
        None,
        "--max-len",
        min=1,
        help="Context (KV cache) length in tokens (default: the model's, at most 4096).",
    ),
    tokenizer: Path = typer.Option(
        None,
        help="anekit checkpoints: another tokenizer (default: the checkpoint's own; another one is used "
        "with a warning).",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print one JSON object (text, token ids, finish reason, counts, timing) and nothing else.",
    ),
) -> None:
    """Continue a prompt with a pretrained model, streaming the text as it is generated.

    The prompt is printed first, then the model's continuation as each token is decoded. Sampling
    options not given take the model's defaults (its generation_config.json, as transformers does)."""
    from ..llm.errors import ContextFull, LLMError

    kw = _sampling(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, stop, seed)
    _check_sampling(kw)
    name, why = _backend(backend)
    llm = _load(model, name, weights, max_len, tokenizer)
    with llm:
        opts = _options(llm, kw)
        try:
            events = llm.stream(prompt, opts)
        except ContextFull as e:
            raise fail(
                f"the prompt has {e.tokens} tokens; the model's context is {e.limit}: give a shorter --prompt"
                + (" (or a larger --max-len)" if e.limit is not None and e.limit < llm.config.seq_len else "")
            ) from None
        except LLMError as e:
            raise fail(str(e)) from None
        start = time.perf_counter()
        texts, ids, reason = [], [], "length"
        if not as_json:
            _write(prompt)
        try:
            for ev in events:
                texts.append(ev.text)
                if ev.token_id is not None:
                    ids.append(ev.token_id)
                if ev.finish_reason is not None:
                    reason = ev.finish_reason
                if not as_json:
                    _write(ev.text)
        except KeyboardInterrupt:
            events.close()
            if not as_json:
                typer.echo("")
            err.print("interrupted")
            raise typer.Exit(130) from None
        seconds = time.perf_counter() - start
    if as_json:
        record = {
            "model": llm.name,
            "backend": llm.backend,
            "prompt": prompt,
            "text": "".join(texts),
            "token_ids": ids,
            "finish_reason": reason,
            "prompt_tokens": len(llm.encode(prompt)),
            "completion_tokens": len(ids),
            "seconds": seconds,
            "options": vars(opts),
        }
        typer.echo(json.dumps(record, ensure_ascii=False))
        return
    typer.echo("")
    _fallback_note(why)


CHAT_HELP = "commands: /reset clears the conversation, /exit leaves (so do Ctrl-D and Ctrl-C)"


def chat(
    model: Path = _model_arg(),
    system: str = typer.Option(None, help="A system message that starts the conversation."),
    max_tokens: int = typer.Option(None, help=f"Tokens per reply at most ({_SAMPLING_HELP} 256)."),
    temperature: float = typer.Option(None, help=f"Sampling temperature; 0: greedy ({_SAMPLING_HELP} 1)."),
    top_k: int = typer.Option(
        None, help=f"Sample among the k most likely tokens; 0: all ({_SAMPLING_HELP} 0)."
    ),
    top_p: float = typer.Option(None, help=f"Nucleus sampling mass, (0, 1] ({_SAMPLING_HELP} 1)."),
    min_p: float = typer.Option(None, help=f"Min-p filtering, [0, 1] ({_SAMPLING_HELP} 0)."),
    repetition_penalty: float = typer.Option(
        None, help=f"Repetition penalty, > 0; 1: off ({_SAMPLING_HELP} 1)."
    ),
    stop: list[str] = typer.Option(None, "--stop", help="Also end a reply at this string; repeatable."),
    seed: int = typer.Option(None, help="Sampling seed (default: a fresh one)."),
    backend: str = typer.Option("auto", help="auto, ane, reference or float64."),
    weights: str = typer.Option("fp16", help="fp16, int8 or int4."),
    max_len: int = typer.Option(
        None, "--max-len", min=1, help="Context length in tokens (default: the model's, at most 4096)."
    ),
) -> None:
    """Chat with a model in the terminal, with its chat template and the conversation's history.

    Type a message and press Enter; the reply streams as it is generated. /reset starts over,
    /exit (or Ctrl-D, or Ctrl-C at the prompt) leaves; Ctrl-C during a reply stops that reply.
    Sampling options not given take the model's defaults (its generation_config.json)."""
    from ..llm.errors import ContextFull, LLMError

    kw = _sampling(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, stop, seed)
    _check_sampling(kw)
    name, why = _backend(backend)
    llm = _load(model, name, weights, max_len, None)
    with llm:
        if llm.chat_template is None:
            raise fail(
                f"{llm.name} has no chat template (tokenizer_config.json has no chat_template); use "
                "`anekit generate` to continue a prompt"
            )
        opts = _options(llm, kw)
        base = [{"role": "system", "content": system}] if system else []
        history = list(base)
        where = f"the {llm.backend} backend" + (f" (CPU emulation: {why})" if why else "")
        err.print(f"chatting with {llm.name} on {where}; {CHAT_HELP}", highlight=False, markup=False)
        while True:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                typer.echo("")
                return
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                command = text.split()[0].lower()
                if command in ("/exit", "/quit", "/bye"):
                    return
                if command == "/reset":
                    history = list(base)
                    err.print("(conversation cleared)", highlight=False, markup=False)
                else:
                    err.print(f"unknown command {command}; {CHAT_HELP}", highlight=False, markup=False)
                continue
            history.append({"role": "user", "content": line})
            try:
                events = llm.chat_stream(history, opts)
            except ContextFull as e:
                history.pop()
                err.print(
                    f"error: the conversation ({e.tokens} tokens) no longer fits the context of {e.limit}; "
                    "/reset to start over",
                    highlight=False,
                    markup=False,
                )
                continue
            except LLMError as e:
                history.pop()
                err.print(f"error: {e}", highlight=False, markup=False)
                continue
            reply, reason = [], None
            try:
                for ev in events:
                    reply.append(ev.text)
                    _write(ev.text)
                    reason = ev.finish_reason
            except KeyboardInterrupt:
                events.close()
                history.pop()
                typer.echo("")
                err.print(
                    "(reply stopped; it is not kept in the conversation)", highlight=False, markup=False
                )
                continue
            typer.echo("")
            if reason == "length":
                err.print("(reply cut at the token limit)", highlight=False, markup=False)
            history.append({"role": "assistant", "content": "".join(reply)})
