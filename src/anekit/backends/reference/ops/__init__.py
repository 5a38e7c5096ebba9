"""Importing this package fills `registry.OPS`; each module holds one family of ops."""

from . import elementwise, nn, quant, recurrent, tensor  # noqa: F401
