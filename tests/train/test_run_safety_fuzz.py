"""Seeded fuzz of a checkpoint's state.json: any damage to any field is a CheckpointError (or an anekit
error from the part that consumes the value), never a raw exception, on load and on the resume path."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from anekit.errors import AnekitError
from anekit.model.config import ModelConfig
from anekit.train.checkpoint import STATE_FILE, TrainState, load_checkpoint, save_checkpoint
from anekit.train.data import Batches
from anekit.train.optim import AdamW, LossScaler

CFG = ModelConfig("t", dim=16, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=40, seq_len=8)
TOKENS = np.arange(400, dtype=np.uint16) % 40
ODD_VALUES = [
    None, [], {}, "", "x", "0" * 80, -1, 0, 1, 2**70, -(2**200), 0.5, -0.0, 1e308, math.nan, math.inf,
    -math.inf, True, False, [1, 2], [[[]]], {"a": 1}, "\udcff", 10**400,
]  # fmt: skip


def _paths(node, prefix=()):
    """Every (path to a value) in a JSON tree."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(tree, path, value):
    if not path:
        return value
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return tree


def _delete(tree, path):
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent.pop(path[-1])
    return tree


def mutate(state: dict, rng: np.random.Generator) -> dict:
    state = copy.deepcopy(state)
    paths = list(_paths(state))
    for _ in range(int(rng.integers(1, 4))):
        paths = list(_paths(state)) if not isinstance(state, (dict, list)) else list(_paths(state))
        path = paths[int(rng.integers(len(paths)))]
        action = rng.integers(3)
        if action == 0 or not path:
            state = _set(state, path, copy.deepcopy(ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]))
        elif action == 1:
            state = _delete(state, path)
        else:
            parent = state
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict):
                parent[f"extra_{int(rng.integers(100))}"] = 1
        if not isinstance(state, (dict, list)):
            break
    return state


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in CFG.param_shapes().items()}
    opt = AdamW(lr=1e-3)
    opt.step(params, {k: np.ones_like(v) for k, v in params.items()})
    sampler = Batches(TOKENS, 2, 8, seed=3)
    next(sampler)
    state = TrainState(
        step=1,
        loss_scaler=LossScaler().state_dict(),
        sampler=sampler.state_dict(),
        data={"kind": "uint16", "path": "/x.bin", "sha256": "ab" * 32, "n_tokens": 400, "bytes": 800},
        schedule={"lr": 1e-3, "warmup": 1, "min_lr_ratio": 0.1, "total_steps": 10},
        extra={"run_id": "abc"},
    )
    from anekit.train.tokenizers import load_tokenizer

    path = save_checkpoint(root / "ck", CFG, params, opt.state_dict(), state, tokenizer=load_tokenizer(None))
    return path, json.loads((path / STATE_FILE).read_text())


def resume_like_the_trainer(path) -> None:
    """What `Trainer` does with a loaded checkpoint's state."""
    _, _, opt_state, state = load_checkpoint(path)
    if opt_state is not None:
        AdamW().load_state_dict(*opt_state)
    if state.loss_scaler:
        LossScaler().load_state_dict(state.loss_scaler)
    if state.sampler:
        Batches(TOKENS, 2, 8).load_state_dict(state.sampler)


def test_state_json_fuzz_gives_only_anekit_errors(pristine, tmp_path):
    import shutil

    src, state = pristine
    rng = np.random.default_rng(20251130)
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(400):
        path = tmp_path / f"c{case}"
        shutil.copytree(src, path)
        damaged = mutate(state, rng)
        (path / STATE_FILE).write_text(json.dumps(damaged), encoding="utf-8", errors="surrogatepass")
        try:
            resume_like_the_trainer(path)
            outcomes["loaded"] += 1
        except AnekitError:
            outcomes["refused"] += 1
        except Exception as e:  # pragma: no cover - the failure this test exists to catch
            raise AssertionError(f"case {case}: {type(e).__name__}: {e}\n{json.dumps(damaged)[:2000]}") from e
        shutil.rmtree(path)
    assert outcomes["refused"] > 300  # almost every mutation breaks the schema; the rest are harmless
