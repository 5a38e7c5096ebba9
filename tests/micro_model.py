"""The model the training tests run: small enough for CI, with the bundled tokenizer's 512 ids,
2 layers and grouped-query heads. The `micro_config` fixture (conftest.py) writes it as a config file."""

MICRO = {
    "name": "micro",
    "dim": 64,
    "hidden_dim": 128,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 512,
    "seq_len": 32,
}
