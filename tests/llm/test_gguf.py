"""anekit.model.gguf (and open_model on a .gguf file): tiny random models written as GGUF the way
llama.cpp writes them (tests/llm/conftest.py write_gguf), read by anekit and by transformers' own GGUF
reader (the oracle: transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint, which dequantizes
and un-permutes independently), the float64 reference model against the transformers model holding the
tensors transformers read. Tolerance as in test_source.py: 1e-4 absolute on every logit (measured
~1e-6): the two readers must agree on every dequantized value and every row order."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from anekit.llm.source import ModelSourceError, open_model
from anekit.model.gguf import GGUFWeights, open_gguf
from anekit.model.io import open_hf
from anekit.model.reference import forward
from llm_fixtures import llm_fixtures as _llm_fixtures

BOS_ID, CHAT_TEMPLATE, IM_END_ID, VOCAB, write_gguf = (
    getattr(_llm_fixtures(), n) for n in ("BOS_ID", "CHAT_TEMPLATE", "IM_END_ID", "VOCAB", "write_gguf")
)
gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

TOL = 1e-4
Q = gguf.GGMLQuantizationType


def _oracle(tiny, path):
    """The transformers model of `tiny`'s config holding the tensors transformers reads from `path`."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model = type(tiny.model)(tiny.config).eval()
    read = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in read["tensors"].items()}, strict=False)
    if tiny.config.tie_word_embeddings:
        model.tie_weights()
    return model


@pytest.mark.parametrize("arch", ["llama_tied", "qwen2", "qwen3"])
@pytest.mark.parametrize("qtype", [None, Q.Q8_0, Q.Q4_0], ids=["F32", "Q8_0", "Q4_0"])
def test_gguf_logits_match_transformers(tiny_hf, tmp_path, arch, qtype):
    tiny = tiny_hf(arch)
    path = write_gguf(tiny, tmp_path / "m.gguf", qtype)
    config, weights, meta = open_gguf(path)
    assert meta["general.architecture"] == tiny.config.model_type
    hf_config, _ = open_hf(tiny.directory)
    assert dataclasses.replace(config, name=hf_config.name) == hf_config
    assert config.name == f"tiny-{arch}"
    tokens = np.random.default_rng(0).integers(0, VOCAB, 16)
    with torch.no_grad():
        ref = _oracle(tiny, path)(torch.tensor(tokens)[None]).logits[0].double().numpy()
    assert np.abs(forward(weights, config, tokens) - ref).max() <= TOL
    expected = "F32" if qtype is None else qtype.name
    assert weights.stored_dtype("layers.0.w1") == expected and weights.stored_dtype("final_norm") == "F32"


def test_unpermuted_f32_tensors_are_views_of_the_mapping(hf_qwen2, tmp_path):
    w = open_gguf(write_gguf(hf_qwen2, tmp_path / "m.gguf"))[1]
    assert isinstance(w, GGUFWeights)
    for name in ("embed", "layers.0.wv", "layers.1.w2", "layers.0.bv"):
        assert isinstance(w[name].base, np.memmap) or isinstance(w[name].base.base, np.memmap), name
        assert not w[name].flags.writeable
    assert w["layers.0.wq"].flags.writeable  # qwen: permuted to interleaved order, a new array


def test_release_and_materialize_keep_the_values(hf_qwen3, tmp_path):
    w = open_gguf(write_gguf(hf_qwen3, tmp_path / "m.gguf", Q.Q8_0))[1]
    before = {k: np.array(w[k]) for k in w}
    for k in w:
        w.release(k)
    full = w.materialize()
    assert all(np.array_equal(full[k], before[k]) and full[k].dtype == np.float32 for k in w)


def test_open_model_on_a_gguf_file(hf_qwen3, tmp_path):
    path = write_gguf(hf_qwen3, tmp_path / "m.gguf", Q.Q8_0)
    src = open_model(path)
    assert src.kind == "gguf" and src.name == "tiny-qwen3" and src.directory == tmp_path
    assert src.tokenizer_file is None
    assert src.tokenizer_config == {
        "chat_template": CHAT_TEMPLATE,
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
    }
    assert src.generation_config == {"bos_token_id": BOS_ID, "eos_token_id": IM_END_ID}
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(hf_qwen3.directory / name, tmp_path / name)
    src = open_model(path)
    assert src.tokenizer_file == (tmp_path / "tokenizer.json").resolve()
    assert src.tokenizer_config["eos_token"] == "<|im_end|>" and "tokenizer_class" in src.tokenizer_config


def test_gguf_refusals(hf_llama_tied, hf_llama3, tmp_path):
    good = write_gguf(hf_llama_tied, tmp_path / "m.gguf")
    data = good.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError, match=r"cut.gguf: not a readable GGUF file .*download it again"):
        open_model(tmp_path / "cut.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelSourceError, match="junk.gguf: not a readable GGUF file"):
        open_model(tmp_path / "junk.gguf")
    with pytest.raises(ModelSourceError, match="nope.gguf: no such model directory"):
        open_model(tmp_path / "nope.gguf")
    with pytest.raises(ValueError, match="not written as GGUF"):
        write_gguf(hf_llama3, tmp_path / "x.gguf")

    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(
        ModelSourceError, match="GGUF architecture 'phi2' is not supported; anekit imports llama"
    ):
        open_model(tmp_path / "phi.gguf")


def test_gguf_rope_scaling_and_extra_tensors_are_refused(hf_llama_tied, tmp_path, monkeypatch):
    real = gguf.GGUFWriter.add_rope_freq_base

    def with_scaling(self, value):
        real(self, value)
        self.add_rope_scaling_type(gguf.RopeScalingType.YARN)

    monkeypatch.setattr(gguf.GGUFWriter, "add_rope_freq_base", with_scaling)
    write_gguf(hf_llama_tied, tmp_path / "yarn.gguf")
    monkeypatch.undo()
    with pytest.raises(ModelSourceError, match="RoPE scaling 'yarn' is not supported in GGUF files"):
        open_model(tmp_path / "yarn.gguf")

    real_tensor = gguf.GGUFWriter.add_tensor

    def plus_rope_freqs(self, name, tensor, **kw):
        real_tensor(self, name, tensor, **kw)
        if name == "output_norm.weight":
            real_tensor(self, "rope_freqs.weight", np.ones(8, np.float32))

    monkeypatch.setattr(gguf.GGUFWriter, "add_tensor", plus_rope_freqs)
    write_gguf(hf_llama_tied, tmp_path / "freqs.gguf")
    monkeypatch.undo()
    with pytest.raises(ModelSourceError, match="holds rope_freqs.weight .*import the model's Hugging Face"):
        open_model(tmp_path / "freqs.gguf")


def test_anekit_llm_load_runs_a_gguf_file(hf_qwen3, tmp_path):
    """End to end through anekit.llm.load: the float64 session's logits are transformers' (from the
    same GGUF file), and the engine kernels on the reference backend generate from it."""
    import anekit.llm

    path = write_gguf(hf_qwen3, tmp_path / "m.gguf", Q.Q8_0)
    with pytest.raises(anekit.llm.LLMError, match="no tokenizer.json"):
        anekit.llm.load(path, backend="float64")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_qwen3.directory / name, tmp_path / name)
    tokens = np.random.default_rng(7).integers(0, VOCAB, 10).tolist()
    with torch.no_grad():
        ref = _oracle(hf_qwen3, path)(torch.tensor([tokens])).logits[0].double().numpy()
    model = anekit.llm.load(path, backend="float64")
    try:
        assert model.name == "tiny-qwen3" and model.chat_template == CHAT_TEMPLATE
        assert np.abs(model.logits(tokens) - ref).max() <= TOL
    finally:
        model.close()
    model = anekit.llm.load(path, backend="reference")
    try:
        assert len(model.generate("Hello world", max_tokens=4, temperature=0).token_ids) == 4
    finally:
        model.close()
