"""OpenAI's published schemas for the objects tuneforge returns, as jsonschema validators.

The schemas are a subset of OpenAI's OpenAPI document (github.com/openai/openai-openapi,
openapi.yaml at commit f85dbe2, MIT licence in openapi/LICENSE): the components reachable
from the file, fine-tuning job, event, checkpoint and list objects, and the job request.
OpenAI's schemas leave `additionalProperties` open, so our extensions validate as extra
properties, while every property OpenAI declares must have OpenAI's type.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

DOCUMENT = Path(__file__).parent / "openapi" / "openai-fine-tuning-subset.json"


def _to_json_schema(node: Any) -> Any:
    """The few OpenAPI 3.0 leftovers in the 3.1 document, in JSON Schema 2020-12 terms:
    `exclusiveMinimum: true` beside `minimum`, and `nullable: true`."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items()}
    if out.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum", 0)
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


@cache
def _document() -> dict[str, Any]:
    return _to_json_schema(json.loads(DOCUMENT.read_text(encoding="utf-8")))


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator for components.schemas[name], its $refs resolved within the document."""
    doc = _document()
    assert name in doc["components"]["schemas"], name
    schema = {"components": doc["components"], "$ref": f"#/components/schemas/{name}"}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def problems(name: str, body: Any) -> list[str]:
    """Every way `body` breaks OpenAI's schema `name`, each with where it is."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator(name).iter_errors(body)]


def assert_matches(name: str, body: Any) -> None:
    found = problems(name, body)
    assert not found, f"{name}: " + "; ".join(found)
