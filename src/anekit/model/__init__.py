"""Llama-family transformer configs, parameters, import/export and the NumPy reference model."""

from .config import PRESETS, ModelConfig, preset

__all__ = ["ModelConfig", "PRESETS", "preset"]
