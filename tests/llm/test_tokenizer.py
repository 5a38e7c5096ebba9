"""`anekit.llm.tokenizer`: Hugging Face directories (special tokens, add_bos_token, eos ids from
generation_config.json) against transformers' AutoTokenizer, anekit's own tokenizers, and the
streaming detokenizer against a decode of the whole sequence."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from anekit.llm.errors import LLMError
from anekit.llm.tokenizer import anekit_tokenizer, hf_tokenizer
from anekit.train.corpus import data_path
from anekit.train.tokenizers import bundled_tokenizer

TEXTS = [
    "Once upon a time, there was a little girl.",
    "Hello wörld 😀 猫 and ünïcödé — “quotes” … done",
    "  leading spaces and\nnew lines\n\n",
    "日本語のテキスト🎉🎉 mixed with English",
    "a",
]


def _byte_fallback_json() -> str:
    """A Llama-2-style tokenizer: SentencePiece-like BPE on '▁'-marked text, <0xNN> byte fallback,
    BOS added by the post-processor."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(
        data_path("stories.txt").read_text(encoding="utf-8")[:100_000].splitlines(), trainer
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    return json.dumps(spec)


@pytest.fixture(scope="module")
def byte_fallback_json():
    return _byte_fallback_json()


def _hf_dir(path, tokenizer_json: str, **config):
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", **config}
    (path / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return path


def _bundled_json() -> str:
    return data_path("tokenizer.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("add_bos", [None, True, False])
@pytest.mark.parametrize("kind", ["byte-fallback", "byte-level"])
def test_encode_matches_transformers_auto_tokenizer(tmp_path, byte_fallback_json, kind, add_bos):
    transformers = pytest.importorskip("transformers")
    extra = {} if add_bos is None else {"add_bos_token": add_bos}
    d = _hf_dir(tmp_path / "tok", byte_fallback_json if kind == "byte-fallback" else _bundled_json(), **extra)
    ours = hf_tokenizer(d)
    theirs = transformers.AutoTokenizer.from_pretrained(str(d))
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)
        ids = theirs.encode(text)
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


def test_special_tokens_and_eos_ids_from_the_config_files(tmp_path, byte_fallback_json):
    d = _hf_dir(
        tmp_path / "m",
        byte_fallback_json,
        bos_token={"__type": "AddedToken", "content": "<s>", "lstrip": False},
        unk_token="<unk>",
        chat_template="{{ bos_token }}x",
    )
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 5], "bos_token_id": 1}))
    tok = hf_tokenizer(d)
    assert tok.bos_id == 1
    assert tok.eos_ids == {0, 5, 2}  # generation_config's list plus the tokenizer's own </s>
    assert tok.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    assert tok.chat_template == "{{ bos_token }}x"
    (d / "generation_config.json").unlink()
    (d / "config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert hf_tokenizer(d).eos_ids == {7, 2}  # config.json when there is no generation_config.json


def test_special_tokens_map_json_overrides_the_config_as_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    d = _hf_dir(tmp_path / "m", _bundled_json())
    (d / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": {"content": "<unk>"}, "eos_token": "<s>", "pad_token": "</s>"})
    )
    theirs = transformers.AutoTokenizer.from_pretrained(str(d)).special_tokens_map
    ours = hf_tokenizer(d)
    assert ours.special_tokens == theirs == {"bos_token": "<unk>", "eos_token": "<s>", "pad_token": "</s>"}
    assert ours.bos_id == 0 and ours.eos_ids == {1}


def test_a_chat_template_file_beside_the_config_is_read(tmp_path, byte_fallback_json):
    d = _hf_dir(tmp_path / "m", byte_fallback_json)
    (d / "chat_template.jinja").write_text("{{ messages[0].content }}", encoding="utf-8")
    assert hf_tokenizer(d).chat_template == "{{ messages[0].content }}"


def test_missing_or_broken_files_are_llm_errors(tmp_path, byte_fallback_json):
    with pytest.raises(LLMError, match="no tokenizer.json"):
        hf_tokenizer(tmp_path)
    d = _hf_dir(tmp_path / "m", "{not json")
    with pytest.raises(LLMError, match="not a valid Hugging Face tokenizer.json"):
        hf_tokenizer(d)
    d = _hf_dir(tmp_path / "n", byte_fallback_json)
    (d / "generation_config.json").write_text("[1, 2")
    with pytest.raises(LLMError, match="generation_config.json: cannot read: not valid JSON"):
        hf_tokenizer(d)
    (d / "generation_config.json").write_text("[1, 2]")
    with pytest.raises(LLMError, match="the generation config is not a JSON object"):
        hf_tokenizer(d)
    (d / "generation_config.json").unlink()
    outside = tmp_path / "elsewhere.jinja"
    outside.write_text("x")
    (d / "chat_template.jinja").symlink_to(outside)
    with pytest.raises(LLMError, match="lies outside the model directory"):
        hf_tokenizer(d)


def test_anekit_tokenizers_keep_their_conventions():
    raw = bundled_tokenizer()
    tok = anekit_tokenizer(raw)
    assert tok.encode("the tree") == raw.encode("the tree", bos=True)
    assert tok.encode("") == [raw.bos_id]
    assert tok.encode("x", add_special_tokens=False) == raw.encode("x", bos=False)
    assert tok.eos_ids == {raw.eos_id} and tok.chat_template is None
    assert tok.decode(tok.encode("the tree")) == "the tree"


# ---------------------------------------------------------------------------------------------
# streaming


def _stream(tok, ids, context=()):
    dec = tok.stream_decoder(context)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    return pieces


def _tokenizers(tmp_path, byte_fallback_json):
    from anekit.train.tokenizers import Llama2cTokenizer, save_llama2c_tokenizer

    pieces = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], " the", " tree", "é", " a", "b"]
    save_llama2c_tokenizer(tmp_path / "tokenizer.bin", pieces, [0.0] * len(pieces))
    return {
        "byte-fallback": hf_tokenizer(_hf_dir(tmp_path / "bf", byte_fallback_json)),
        "byte-level": hf_tokenizer(_hf_dir(tmp_path / "bl", _bundled_json())),
        "anekit-bundled": anekit_tokenizer(bundled_tokenizer()),
        "llama2c": anekit_tokenizer(Llama2cTokenizer(tmp_path / "tokenizer.bin")),
    }


@pytest.mark.parametrize("kind", ["byte-fallback", "byte-level", "anekit-bundled", "llama2c"])
def test_streamed_text_is_the_whole_decode_and_never_a_broken_character(tmp_path, byte_fallback_json, kind):
    tok = _tokenizers(tmp_path, byte_fallback_json)[kind]
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        pieces = _stream(tok, ids)
        whole = tok.decode(ids)
        assert "".join(pieces) == whole, (kind, text)
        if "\ufffd" not in whole:
            assert not any("\ufffd" in p for p in pieces), (kind, text, pieces)


@pytest.mark.parametrize("kind", ["byte-fallback", "byte-level", "llama2c"])
def test_streamed_text_after_a_prompt_is_what_the_prompt_s_decode_grows_by(
    tmp_path, byte_fallback_json, kind
):
    tok = _tokenizers(tmp_path, byte_fallback_json)[kind]
    for prompt, cont in [("Once upon", " a time 😀 there"), ("Hello", " wörld 猫"), ("x", "y z")]:
        p = tok.encode(prompt)
        full = tok.encode(prompt + cont)
        if full[: len(p)] != p:  # the continuation re-tokenised the prompt's end: not a continuation
            continue
        gen = full[len(p) :]
        before, after = tok.decode(p), tok.decode(full)
        assert after.startswith(before)
        assert "".join(_stream(tok, gen, context=p)) == after[len(before) :]


@pytest.mark.parametrize("kind", ["byte-fallback", "byte-level", "anekit-bundled", "llama2c"])
def test_streaming_random_text_matches_the_whole_decode(tmp_path, byte_fallback_json, kind):
    """Random strings over an alphabet of 1- to 4-byte characters: every way a character's bytes
    fall across tokens. (Invalid UTF-8, e.g. random byte pieces, can differ in how many U+FFFD a run
    of bad bytes becomes: a decoder groups bytes by the run it is given.)"""
    tok = _tokenizers(tmp_path, byte_fallback_json)[kind]
    alphabet = list("ab é–€猫😀🎉\nZ")
    rng = np.random.default_rng(0)
    for _ in range(40):
        text = "".join(rng.choice(alphabet, int(rng.integers(1, 40))))
        ids = tok.encode(text, add_special_tokens=False)
        pieces = _stream(tok, ids)
        assert "".join(pieces) == tok.decode(ids), text
        assert not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("kind", ["byte-level"])
def test_streaming_random_ids_matches_the_whole_decode(tmp_path, byte_fallback_json, kind):
    tok = _tokenizers(tmp_path, byte_fallback_json)[kind]
    rng = np.random.default_rng(0)
    for _ in range(30):
        ids = rng.integers(3, tok.vocab_size, int(rng.integers(1, 80))).tolist()
        assert "".join(_stream(tok, ids)) == tok.decode(ids)


def test_a_long_stream_keeps_a_short_window(tmp_path):
    tok = anekit_tokenizer(bundled_tokenizer())
    text = data_path("stories.txt").read_text(encoding="utf-8")[:5000]
    ids = tok.encode(text, add_special_tokens=False)
    dec = tok.stream_decoder()
    out = []
    for i in ids:
        out.append(dec.push(i))
        assert len(dec.ids) < 64
    out.append(dec.flush())
    assert "".join(out) == tok.decode(ids)


def test_copied_model_directory_tokenizer(tmp_path, byte_fallback_json):
    d = _hf_dir(tmp_path / "a", byte_fallback_json)
    shutil.copytree(d, tmp_path / "b")
    assert hf_tokenizer(tmp_path / "b").encode("Once") == hf_tokenizer(d).encode("Once")


def test_a_tokenizer_that_fails_inside_the_tokenizers_library_is_an_llm_error(tmp_path):
    """Found by the `model` fuzz target: a BPE whose unk token is not in its (empty) vocabulary makes
    the tokenizers library raise a bare Exception on encode."""
    from tokenizers import Tokenizer, models

    broken = Tokenizer(models.BPE(vocab={}, merges=[], unk_token="<unk>")).to_str()
    d = _hf_dir(tmp_path / "m", broken)
    tok = hf_tokenizer(d)
    with pytest.raises(LLMError, match="the tokenizer cannot encode this text: .*download it again"):
        tok.encode("hello")
