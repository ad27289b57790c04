"""The training pipeline: one job spec -> LoRA adapter, evaluation report and artifacts.

Importing this package stays cheap (no torch): `run`, `RunResult` and `dry_run` are loaded
on first attribute access. Only this package imports torch / transformers / peft / trl.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunResult", "dry_run", "make_tiny_model", "run"]

_LAZY = {
    "run": ("core.training.pipeline", "run"),
    "RunResult": ("core.training.pipeline", "RunResult"),
    "dry_run": ("core.training.dry_run", "dry_run"),
    "make_tiny_model": ("core.training.tiny_model", "make_tiny_model"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
