"""Checkpoints: round trip of weights, AdamW state and training state; validation; atomic replacement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from anekit import __version__
from anekit.model.config import ModelConfig
from anekit.train import checkpoint as ckpt_mod
from anekit.train.checkpoint import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    CheckpointError,
    OptimizerState,
    TrainState,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from anekit.train.data import Batches
from anekit.train.optim import AdamW, LossScaler

CFG = ModelConfig("t", dim=16, hidden_dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=8)


def _params(cfg=CFG, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in cfg.param_shapes().items()}


def _trained(seed=0):
    params = _params(seed=seed)
    opt = AdamW(lr=1e-3)
    rng = np.random.default_rng(seed + 1)
    for _ in range(3):
        opt.step(params, {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()})
    return params, opt


def _state(step=3):
    sampler = Batches(np.arange(500, dtype=np.uint16), 2, 8, seed=5)
    next(sampler)
    scaler = LossScaler()
    scaler.update(False)
    return TrainState(
        step=step,
        loss_scaler=scaler.state_dict(),
        sampler=sampler.state_dict(),
        data={"kind": "bundled", "path": "anekit/data/stories.txt", "sha256": "ab" * 32, "n_tokens": 500},
        tokenizer="bundled:sha256=abc",
        extra={"best_loss": 1.5},
    )


def test_round_trip_restores_everything_exactly(tmp_path):
    params, opt = _trained()
    path = save_checkpoint(tmp_path / "ck", CFG, params, opt.state_dict(), _state())
    assert sorted(p.name for p in path.iterdir()) == sorted([MODEL_FILE, OPTIMIZER_FILE, STATE_FILE])

    cfg, loaded, opt_state, ts = load_checkpoint(path)
    assert cfg == CFG
    assert list(loaded) == list(CFG.param_shapes())
    assert all(np.array_equal(loaded[k], params[k]) and loaded[k].dtype == np.float32 for k in params)

    opt2 = AdamW()
    opt2.load_state_dict(*opt_state)
    assert (opt2.t, opt2.lr, opt2.betas, opt2.eps, opt2.weight_decay) == (3, 1e-3, (0.9, 0.95), 1e-8, 0.1)
    assert all(np.array_equal(opt2.m[k], opt.m[k]) and np.array_equal(opt2.v[k], opt.v[k]) for k in params)

    assert ts == _state()
    state = json.loads((path / STATE_FILE).read_text())
    assert state["anekit_version"] == __version__ and state["config"] == CFG.to_dict()
    assert state["optimizer"]["t"] == 3


def test_resumed_sampler_continues_the_same_stream(tmp_path):
    tokens = np.arange(500, dtype=np.uint16)
    run = Batches(tokens, 2, 8, seed=5)
    next(run)
    save_checkpoint(tmp_path / "ck", CFG, _params(), None, TrainState(step=1, sampler=run.state_dict()))
    _, _, opt_state, ts = load_checkpoint(tmp_path / "ck")
    assert opt_state is None
    resumed = Batches(tokens, 2, 8)
    resumed.load_state_dict(ts.sampler)
    assert np.array_equal(next(run)[0], next(resumed)[0])


def test_untied_model_stores_lm_head(tmp_path):
    cfg = ModelConfig(
        "u",
        dim=8,
        hidden_dim=16,
        n_layers=1,
        n_heads=2,
        n_kv_heads=2,
        vocab_size=10,
        seq_len=4,
        tie_embeddings=False,
    )
    save_checkpoint(tmp_path / "ck", cfg, _params(cfg))
    assert "lm_head" in load_checkpoint(tmp_path / "ck")[1]


def test_validation_before_writing(tmp_path):
    params = _params()
    del params["layers.1.w2"]
    with pytest.raises(CheckpointError, match="missing tensor.*layers.1.w2"):
        save_checkpoint(tmp_path / "ck", CFG, params)
    params = _params() | {"lm_head": np.zeros((40, 16), np.float32)}
    with pytest.raises(CheckpointError, match="unexpected tensor.*lm_head.*tie_embeddings"):
        save_checkpoint(tmp_path / "ck", CFG, params)
    params = _params() | {"layers.0.wk": np.zeros((16, 16), np.float32)}
    with pytest.raises(CheckpointError, match=r"layers.0.wk has shape \[16, 16\], config needs \[8, 16\]"):
        save_checkpoint(tmp_path / "ck", CFG, params)
    with pytest.raises(CheckpointError, match="'x.embed' is not 'm.<param>'"):
        save_checkpoint(tmp_path / "ck", CFG, _params(), ({"x.embed": np.zeros((40, 16))}, {}))
    with pytest.raises(CheckpointError, match="m without v"):
        save_checkpoint(tmp_path / "ck", CFG, _params(), ({"m.embed": np.zeros((40, 16))}, {}))
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "ck", CFG, _params(), None, TrainState(extra={"x": object()}))
    assert not (tmp_path / "ck").exists() and not list(tmp_path.iterdir())


def test_load_errors_name_the_problem(tmp_path):
    path = save_checkpoint(tmp_path / "ck", CFG, _params())
    other = ModelConfig(
        "t2", dim=16, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=40, seq_len=8
    )
    with pytest.raises(CheckpointError, match=r"does not match.*hidden_dim: 32 vs 48; n_kv_heads: 2 vs 4"):
        load_checkpoint(path, config=other)
    load_checkpoint(path, config=ModelConfig(**(CFG.to_dict() | {"name": "renamed"})))  # the name is cosmetic

    from safetensors.numpy import load_file, save_file

    def tamper(tensors):
        """Rewrite the weights and (unlike damage) record their new checksum, to reach the deeper checks."""
        save_file(tensors, str(path / MODEL_FILE))
        state = json.loads((path / STATE_FILE).read_text())
        state["files"][MODEL_FILE] = ckpt_mod._file_entry(path / MODEL_FILE)
        (path / STATE_FILE).write_text(json.dumps(state))

    tensors = load_file(str(path / MODEL_FILE))
    tamper({k: v for k, v in tensors.items() if k != "final_norm"})
    with pytest.raises(CheckpointError, match="missing tensor.*final_norm"):
        load_checkpoint(path)
    tamper(tensors | {"final_norm": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"final_norm has shape \[3\]"):
        load_checkpoint(path)
    (path / MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: checksum mismatch"):
        load_checkpoint(path)
    state = json.loads((path / STATE_FILE).read_text())
    state["files"][MODEL_FILE] = ckpt_mod._file_entry(path / MODEL_FILE)
    (path / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        load_checkpoint(path)

    state = json.loads((path / STATE_FILE).read_text())
    (path / STATE_FILE).write_text(json.dumps(state | {"format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="not an anekit checkpoint directory"):
        load_checkpoint(tmp_path / "plain")


def test_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not an anekit checkpoint"):
        save_checkpoint(tmp_path / "home", CFG, _params())
    assert (tmp_path / "home" / "precious.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------
# atomicity


def test_failure_between_files_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    old_params, old_opt = _trained(seed=0)
    save_checkpoint(path, CFG, old_params, old_opt.state_dict(), TrainState(step=100))

    new_params, new_opt = _trained(seed=7)
    real_write = ckpt_mod._write_safetensors

    def write_then_fail(p, tensors, kind):
        real_write(p, tensors, kind)
        if kind == "optimizer":  # model and optimizer written, state.json not yet
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "_write_safetensors", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, CFG, new_params, new_opt.state_dict(), TrainState(step=200))

    _, params, opt_state, ts = load_checkpoint(path)
    assert ts.step == 100
    assert all(np.array_equal(params[k], old_params[k]) for k in old_params)
    assert np.array_equal(opt_state.tensors["m.embed"], old_opt.m["embed"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # the temporary directory is gone


def test_hard_crash_mid_write_keeps_the_previous_checkpoint_and_next_save_cleans_up(tmp_path):
    path = tmp_path / "ck"
    save_checkpoint(path, CFG, _params(seed=0), None, TrainState(step=100))
    # A process killed mid-save (no Python cleanup runs): os._exit after the model file is written.
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from anekit.model.config import ModelConfig
        from anekit.train import checkpoint as c
        real = c._write_safetensors
        def die(p, t, kind):
            real(p, t, kind)
            os._exit(3)
        c._write_safetensors = die
        cfg = ModelConfig(**{CFG.to_dict()!r})
        params = {{k: np.ones(s, np.float32) for k, s in cfg.param_shapes().items()}}
        c.save_checkpoint({str(path)!r}, cfg, params, None, c.TrainState(step=200))
        """
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 3
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ck"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ck.tmp-")

    _, params, _, ts = load_checkpoint(path)
    assert ts.step == 100 and np.array_equal(params["embed"], _params(seed=0)["embed"])

    save_checkpoint(path, CFG, _params(seed=1), None, TrainState(step=300))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "ck.prev"]  # the one before is kept
    assert load_checkpoint(path)[3].step == 300 and load_checkpoint(tmp_path / "ck.prev")[3].step == 100


def test_crash_between_the_two_renames_falls_back_to_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    save_checkpoint(path, CFG, _params(seed=0), None, TrainState(step=100))
    import os

    real_replace = os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old -> .ck.prev done; new -> ck not yet
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, CFG, _params(seed=1), None, TrainState(step=200))
    monkeypatch.setattr(ckpt_mod.os, "replace", real_replace)

    assert not path.exists() and (tmp_path / "ck.prev" / STATE_FILE).is_file()
    assert is_checkpoint(path)
    with pytest.warns(UserWarning, match="a save was interrupted"):
        _, params, _, ts = load_checkpoint(path)
    assert ts.step == 100 and np.array_equal(params["embed"], _params(seed=0)["embed"])

    save_checkpoint(path, CFG, _params(seed=2), None, TrainState(step=300))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "ck.prev"]
    assert load_checkpoint(path)[3].step == 300 and load_checkpoint(tmp_path / "ck.prev")[3].step == 100


def test_optimizer_state_namedtuple_unpacks_like_adamw_state_dict():
    tensors, scalars = OptimizerState({"m.a": np.zeros(1)}, {"t": 1})
    assert scalars == {"t": 1} and list(tensors) == ["m.a"]


def test_a_state_json_nested_too_deep_for_python_is_a_checkpoint_error(tmp_path):
    """Found by the `model` fuzz target: json's RecursionError escaped read_state."""
    path = save_checkpoint(tmp_path / "c", CFG, _params())
    (path / STATE_FILE).write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    with pytest.raises(CheckpointError, match="state.json: cannot read"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", [STATE_FILE, MODEL_FILE, "tokenizer.json"])
def test_a_checkpoint_file_linking_out_of_the_directory_is_refused(tmp_path, name):
    """Found by the `model` fuzz target: state.json, the weights and the tokenizer were read through a
    symlink leaving the checkpoint (the target here is a valid copy: only the path check refuses it)."""
    from anekit.train.checkpoint import load_checkpoint_tokenizer
    from anekit.train.tokenizers import bundled_tokenizer

    path = save_checkpoint(tmp_path / "c", CFG, _params(), tokenizer=bundled_tokenizer())
    if not (path / name).exists():
        pytest.skip(f"the bundled tokenizer is not stored as {name}")
    outside = tmp_path / f"copy-{name}"
    outside.write_bytes((path / name).read_bytes())
    (path / name).unlink()
    (path / name).symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside the directory"):
        load_checkpoint(path)
        load_checkpoint_tokenizer(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs fifos")
def test_a_fifo_in_place_of_the_weights_is_refused_not_read(tmp_path):
    """Found by the `model` fuzz target: the checksum's read blocked forever on a fifo."""
    path = save_checkpoint(tmp_path / "c", CFG, _params())
    (path / MODEL_FILE).unlink()
    os.mkfifo(path / MODEL_FILE)
    with pytest.raises(CheckpointError, match="is a FIFO"):
        load_checkpoint(path)
