"""Tiny random-initialised Hugging Face models of each architecture anekit imports, saved locally by
transformers (a test-only oracle, like PyTorch), with a small byte-level BPE tokenizer and a ChatML
chat template. Shared by the tests of anekit.llm and anekit.serve.

Fixtures (session-scoped; the directories live under pytest's tmp_path_factory):

- ``tiny_hf(arch)``: a factory, ``TinyHF(arch, directory, model, config)`` for one of `ARCHS`;
- ``tiny_hf_model``: the same, parametrized over every architecture in `ARCHS`;
- ``hf_llama3``, ``hf_llama_tied``, ``hf_qwen2``, ``hf_qwen3``, ``hf_mistral``, ``hf_llama3_bf16``;
- ``tiny_tokenizer_dir``: a directory with only tokenizer.json + tokenizer_config.json;
- ``write_gguf(tiny, path, qtype=None)`` (a function): the model as a GGUF file, written the way
  llama.cpp's convert_hf_to_gguf.py writes it (llama: q/k rows permuted to interleaved order; qwen2/3:
  not), F32 or with 2-D tensors quantized to `qtype` (a ``gguf.GGMLQuantizationType``).

``model`` is the transformers model in float32, eval mode, on the CPU: the oracle. For the bf16 variant
it is the bf16 checkpoint's weights widened to float32 (exactly what the file holds).

Each model directory holds config.json, generation_config.json, the safetensors weights (sharded with
``model.safetensors.index.json`` for llama3, llama3_bf16 and qwen3), tokenizer.json and
tokenizer_config.json. Every model has vocab_size `VOCAB` (the tokenizer has at most that many ids),
width 64, 2-3 layers, grouped-query attention (4 query heads, 2 kv heads). The weights are drawn
wider than transformers' default init (std 0.02 leaves near-uniform logits) and the norm weights and
biases are random too, so a wrong permutation of any q/k vector changes the logits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 384
#: the tokenizer's special tokens, in id order (ids 0..4)
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
PAD_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(5)
#: the ChatML template (as Qwen2/Qwen3 ship it, reduced to roles and contents)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ARCHS = ("llama3", "llama_tied", "qwen2", "qwen3", "mistral", "llama3_bf16")
#: Mistral's window: smaller than the test sequences (12+ tokens), so the mask matters
MISTRAL_WINDOW = 5

_TEXT = (
    "The quick brown fox jumps over the lazy dog. A small model runs on the engine, token by token. "
    "Hello, world! How are you today? I am fine, thank you. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 1000. "
    "Once upon a time there was a little girl who liked to play in the garden with her dog. "
    "The sun was shining and the birds were singing in the trees near the river. "
)


@dataclass(frozen=True)
class TinyHF:
    arch: str
    directory: Path
    model: object  #: transformers *ForCausalLM, float32, eval mode
    config: object  #: its transformers config


def _common(**kw) -> dict:
    return (
        dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rms_norm_eps=1e-5,
            initializer_range=0.08,
            bos_token_id=BOS_ID,
            eos_token_id=IM_END_ID,
            pad_token_id=PAD_ID,
            tie_word_embeddings=False,
            attn_implementation="eager",
        )
        | kw
    )


def _hf_config(arch: str):
    t = transformers
    if arch in ("llama3", "llama3_bf16"):
        rope = {
            "rope_type": "llama3",
            "rope_theta": 50000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,  # small, so the scaling bands cover head_dim 16
        }
        return t.LlamaForCausalLM, t.LlamaConfig(**_common(num_hidden_layers=3, rope_parameters=rope))
    if arch == "llama_tied":
        return t.LlamaForCausalLM, t.LlamaConfig(**_common(tie_word_embeddings=True, num_key_value_heads=4))
    if arch == "qwen2":
        return t.Qwen2ForCausalLM, t.Qwen2Config(
            **_common(rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        )
    if arch == "qwen3":
        return t.Qwen3ForCausalLM, t.Qwen3Config(**_common(head_dim=24, tie_word_embeddings=True))
    if arch == "mistral":
        return t.MistralForCausalLM, t.MistralConfig(**_common(sliding_window=MISTRAL_WINDOW))
    raise KeyError(arch)


def _randomise(model, seed: int) -> None:
    """Norm weights ~ U(0.5, 1.5) and biases ~ N(0, 0.3²) instead of transformers' 1 and 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def build_tokenizer(directory: Path) -> None:
    """tokenizer.json (byte-level BPE trained on a few sentences, at most VOCAB ids, SPECIALS first)
    and tokenizer_config.json (ChatML template) in `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT] * 4, trainer)
    assert tok.get_vocab_size() <= VOCAB and tok.token_to_id("<|im_end|>") == IM_END_ID
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "pad_token": "<pad>",
        "model_max_length": 128,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_tiny_hf(arch: str, directory: Path) -> TinyHF:
    cls, config = _hf_config(arch)
    torch.manual_seed(ARCHS.index(arch))
    model = cls(config).eval()
    _randomise(model, ARCHS.index(arch))
    shard = "60KB" if arch in ("llama3", "llama3_bf16", "qwen3") else "50MB"
    if arch == "llama3_bf16":
        model.to(torch.bfloat16).save_pretrained(directory, max_shard_size=shard)
        # the oracle reads the bf16 files back in float32 (widening model.float() would keep the RoPE
        # inv_freq buffer rounded to bf16)
        model = cls.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()
    else:
        model.save_pretrained(directory, max_shard_size=shard)
    build_tokenizer(directory)
    return TinyHF(arch, directory, model, config)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Callable[[str], TinyHF]:
    """`tiny_hf(arch)` -> TinyHF, built once per session per architecture."""
    built: dict[str, TinyHF] = {}

    def get(arch: str) -> TinyHF:
        if arch not in built:
            built[arch] = build_tiny_hf(arch, tmp_path_factory.mktemp(f"hf-{arch}"))
        return built[arch]

    return get


@pytest.fixture(scope="session", params=ARCHS)
def tiny_hf_model(request, tiny_hf) -> TinyHF:
    return tiny_hf(request.param)


@pytest.fixture(scope="session")
def hf_llama3(tiny_hf):
    return tiny_hf("llama3")


@pytest.fixture(scope="session")
def hf_llama_tied(tiny_hf):
    return tiny_hf("llama_tied")


@pytest.fixture(scope="session")
def hf_qwen2(tiny_hf):
    return tiny_hf("qwen2")


@pytest.fixture(scope="session")
def hf_qwen3(tiny_hf):
    return tiny_hf("qwen3")


@pytest.fixture(scope="session")
def hf_mistral(tiny_hf):
    return tiny_hf("mistral")


@pytest.fixture(scope="session")
def hf_llama3_bf16(tiny_hf):
    return tiny_hf("llama3_bf16")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tokenizer(d)
    return d


_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def write_gguf(tiny: TinyHF, path: Path, qtype=None) -> Path:
    """`tiny` as a GGUF file at `path` (module docstring); the tokenizer's vocabulary and merges, BOS/EOS
    ids and chat template go in the metadata. Not for llama3 (its RoPE scaling is not written)."""
    gguf = pytest.importorskip("gguf")
    cfg = tiny.config
    arch = cfg.model_type
    if (
        arch not in ("llama", "qwen2", "qwen3")
        or getattr(cfg, "rope_parameters", {}).get("rope_type") == "llama3"
    ):
        raise ValueError(f"write_gguf: {tiny.arch} is not written as GGUF here")
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{tiny.arch}")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    tok = json.loads((tiny.directory / "tokenizer.json").read_text())
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(IM_END_ID)
    w.add_chat_template(CHAT_TEMPLATE)
    for key, tensor in tiny.model.state_dict().items():
        v = tensor.detach().float().numpy()
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        elif key == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            name = "output.weight"
        else:
            _, _, i, rest = key.split(".", 3)
            name = f"blk.{i}.{_GGUF_LAYER[rest]}"
            if arch == "llama" and rest.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: per head, rotate-half -> interleaved
                n = heads if "q_proj" in rest else kv
                v = v.reshape(n, 2, hd // 2, *v.shape[1:]).swapaxes(1, 2).reshape(v.shape)
        v = np.ascontiguousarray(v, dtype=np.float32)
        if qtype is not None and v.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(v, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
