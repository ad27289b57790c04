"""The import direction of DESIGN.md §2, checked on the source with `ast` (so imports
inside functions count too): api -> core <- worker; only core/training touches the ML stack."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ML = {"torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def top(name: str) -> str:
    return name.split(".")[0]


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def violations(package: str, forbidden) -> list[str]:
    out = []
    for path in sources(package):
        for name in sorted(imported_modules(path)):
            if forbidden(path.relative_to(REPO), name):
                out.append(f"{path.relative_to(REPO)} imports {name}")
    return out


def test_api_never_imports_worker_training_or_ml():
    bad = violations("api", lambda _p, n: top(n) in ML | {"worker"} or n == "core.training" or n.startswith("core.training."))
    assert bad == []


def test_core_outside_training_never_imports_web_or_queue_frameworks_or_ml():
    def forbidden(p: Path, n: str) -> bool:
        if p.parts[:2] == ("core", "training"):
            return False
        return top(n) in {"fastapi", "starlette", "celery", "kombu", "api", "worker"} | ML

    assert violations("core", forbidden) == []


def test_worker_never_imports_api():
    assert violations("worker", lambda _p, n: top(n) == "api") == []


@pytest.mark.parametrize("snippet,expected", [("import torch", {"torch"}), ("def f():\n    from worker import x", {"worker", "worker.x"})])
def test_the_checker_sees_imports(tmp_path, snippet, expected):
    f = tmp_path / "m.py"
    f.write_text(snippet)
    assert imported_modules(f) == expected
