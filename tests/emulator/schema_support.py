"""Stripe's published OpenAPI schema (the excerpt stored in stripe_schema/) as a strict validator.

Stripe's object schemas leave `additionalProperties` open; here every object schema with a property list is
closed (unless the excerpt marks the list as partial), so a field Stripe does not have is a mismatch too.
Stripe's dialect is OpenAPI 3.0 (`nullable`, `anyOf` for expandable fields): OAS30Validator reads it.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30Validator

SCHEMA_DIR = Path(__file__).parent / "stripe_schema"


@functools.lru_cache(maxsize=1)
def spec() -> dict:
    """The stored excerpt with the project's additions merged in (paths by method, schemas by name)."""
    merged = json.loads((SCHEMA_DIR / "openapi-excerpt.json").read_text())
    additions = json.loads((SCHEMA_DIR / "additions.json").read_text())
    for path, methods in additions["paths"].items():
        merged["paths"].setdefault(path, {}).update(methods)
    merged["components"]["schemas"].update(additions["components"]["schemas"])
    schemas = merged["components"]["schemas"]
    # Schemas the excerpt did not copy (nested details such as payment_method_details_card) accept anything:
    # MISSING lists them, and a test keeps the product's own objects out of them.
    for name in sorted(_refs(merged) - set(schemas)):
        schemas[name] = {"x-excerpt-missing": True}
    return _closed(merged)


def _refs(node: Any) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_refs(x) for x in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"].rsplit("/", 1)[1]} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(_refs(v) for v in node.values()))


def _closed(node: Any) -> Any:
    if isinstance(node, list):
        return [_closed(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-excerpt-partial") \
            and out.get("type") == "object":
        out["additionalProperties"] = False
    if out.get("nullable") is True and "anyOf" in out:
        # `nullable` does not reach into anyOf: null is one more branch, tried first.
        out["anyOf"] = [NULL_BRANCH] + out["anyOf"]
    if out.get("nullable") is True and isinstance(out.get("enum"), list) and None not in out["enum"]:
        out["enum"] = out["enum"] + [None]  # Stripe's dialect: a nullable enum also takes null
    return out


NULL_BRANCH = {"enum": [None], "x-null-branch": True}


def missing() -> list[str]:
    """Names of schemas referred to but not stored (their contents are not checked)."""
    return sorted(n for n, v in spec()["components"]["schemas"].items() if v.get("x-excerpt-missing"))


def response_schema(method: str, template: str, status: int = 200) -> dict:
    """The schema of an operation's response (`default` for errors), as Stripe publishes it."""
    responses = spec()["paths"][template][method.lower()]["responses"]
    found = responses.get(str(status)) or responses["default"]
    return found["content"]["application/json"]["schema"]


def errors(instance: Any, schema: dict) -> list[str]:
    """Every mismatch between `instance` and `schema` (refs resolved in the stored spec), as readable lines."""
    root = copy.copy(spec())
    root.update(schema)
    out = []
    for err in OAS30Validator(root).iter_errors(instance):
        for leaf in _leaves(err):
            out.append("%s: %s" % ("/".join(str(p) for p in leaf.absolute_path) or "<root>", leaf.message[:300]))
    return sorted(set(out))


def _leaves(err: Any) -> list:
    # An anyOf failure (an expandable field) is reported through the branch that matched the value's type.
    if err.validator in ("anyOf", "oneOf") and err.context:
        best = [e for e in err.context if e.validator != "type" and not e.schema.get("x-null-branch")]
        return [leaf for e in (best or list(err.context)) for leaf in _leaves(e)]
    return [err]


def object_schema(obj: dict) -> dict:
    """The component schema of a Stripe object by its `object` field (a deleted object by its own schema)."""
    name = obj.get("object")
    if obj.get("deleted") is True:
        name = "deleted_" + str(name)
    return {"$ref": "#/components/schemas/%s" % name}
