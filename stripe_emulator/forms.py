"""Decoding of Stripe's form encoding (bracket notation) into nested dicts.

Stripe v1 bodies and query strings look like::

    metadata[tenant_id]=4&invoice_settings[default_payment_method]=pm_1
    &expand[]=customer&expand[1]=lines&items[0][price]=p_1

:func:`decode` turns a list of ``(key, value)`` pairs into nested Python
values: named brackets become dicts, ``[]`` and numeric brackets become
lists (ordered by index).  All leaf values stay strings; type coercion is
done later against the stripe package's TypedDicts (see params_contract).
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Iterable, List, Tuple
from urllib.parse import parse_qsl

__all__ = ["FormError", "decode", "parse_body", "parse_query", "split_key"]

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


class FormError(ValueError):
    """Malformed bracket notation; ``param`` names the offending key."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class _Idx(int):
    """Marks a dict key that came from a list index (``[0]`` or ``[]``)."""


def split_key(key: str) -> List[str]:
    """``"a[b][0][]"`` -> ``["a", "b", "0", ""]``."""
    m = _KEY_RE.match(key)
    if not m:
        return [key]
    head, rest = m.group(1), m.group(2)
    return [head] + re.findall(r"\[([^\[\]]*)\]", rest)


def decode(pairs: Iterable[Tuple[str, str]]) -> Dict[str, Any]:
    """Decode ``(key, value)`` pairs into a nested dict (leaves are str)."""
    root: Dict[Any, Any] = {}
    for key, value in pairs:
        tokens = split_key(key)
        node = root
        for depth, tok in enumerate(tokens):
            last = depth == len(tokens) - 1
            if depth == 0:
                k: Any = tok
            elif tok == "":
                k = _Idx(sum(1 for x in node if isinstance(x, _Idx)))
            elif tok.isdigit():
                k = _Idx(int(tok))
            else:
                k = tok
            if last:
                if isinstance(node.get(k), dict):
                    raise FormError("Invalid hash", key)
                node[k] = value
            else:
                child = node.get(k)
                if child is None:
                    child = node[k] = {}
                elif not isinstance(child, dict):
                    raise FormError("Invalid hash", key)
                node = child
    return _finish(root)


def _finish(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(isinstance(k, _Idx) for k in node):
        return [_finish(node[k]) for k in sorted(node)]
    return {str(k): _finish(v) for k, v in node.items()}


def parse_query(query_string: str) -> Dict[str, Any]:
    """Decode a URL query string."""
    return decode(parse_qsl(query_string, keep_blank_values=True))


def parse_body(raw: bytes, content_type: str) -> Dict[str, Any]:
    """Decode a request body: form encoding (Stripe's) or JSON (control API)."""
    if not raw:
        return {}
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "application/json":
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise FormError("Invalid JSON body: expected an object", "body")
        return data
    return decode(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
