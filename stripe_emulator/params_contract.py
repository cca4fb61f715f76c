"""Parameter contract derived from the installed ``stripe`` package.

The stripe-python package ships, for every API call, a ``TypedDict`` that
lists exactly the parameters the pinned API version accepts (for example
``stripe.params.InvoiceCreateParams``).  Each service method names its params
class and its HTTP method/path, e.g.::

    def create(self, params: Optional["InvoiceCreateParams"] = None, ...):
        return self._request("post", "/v1/invoices", ...)

This module indexes those service files once (with :mod:`ast`, no imports of
every service) so that, given ``(method, path)``, we can find the params
class and check or coerce a decoded params dict against it.

It is used in two places:

* the emulator validates every incoming request with :func:`validate`, which
  produces Stripe's own 400 messages ("Received unknown parameter: foo",
  "Missing required param: period[end].", "Invalid integer: abc");
* tests (ours and the product's gateway tests) call :func:`check_params`,
  :func:`assert_params_known` or :func:`check_request_log` to prove that the
  parameters our code sends exist for the pinned API version.

Public API::

    params_class_for(method, path) -> type | None
    check_params(method, path, params, nested=True) -> list[str]
    assert_params_known(method, path, params, nested=True) -> None
    check_request_log(entries, nested=True) -> list[str]
    validate(method, path, params) -> dict   # raises ParamError
"""

from __future__ import annotations

import ast
import decimal
import functools
import importlib
import os
import re
import threading
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = [
    "ParamError",
    "Route",
    "routes",
    "find_route",
    "params_class_for",
    "allowed_params",
    "check_params",
    "assert_params_known",
    "check_request_log",
    "validate",
]

# Keys of stripe._request_options.RequestOptions: every params TypedDict
# inherits them, but they are client options, never wire parameters.
REQUEST_OPTION_KEYS = frozenset(
    {
        "api_key",
        "stripe_version",
        "stripe_account",
        "stripe_context",
        "max_network_retries",
        "idempotency_key",
        "content_type",
        "headers",
    }
)


class ParamError(Exception):
    """A parameter failed validation; maps to Stripe's 400 invalid_request_error."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.param = param


# ---------------------------------------------------------------------------
# Route index built from the stripe package's service modules
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One API call of the stripe package: HTTP method + path template."""

    method: str  # upper case, e.g. "POST"
    template: str  # e.g. "/v1/invoices/{invoice}/pay"
    params_class: str  # e.g. "InvoicePayParams"
    params_module: str  # e.g. "stripe.params._invoice_pay_params"
    service: str  # e.g. "stripe._invoice_service.InvoiceService.pay"
    regex: "re.Pattern[str]" = field(compare=False, hash=False, repr=False)

    @property
    def placeholders(self) -> int:
        return self.template.count("{")

    def load_params_class(self) -> Optional[type]:
        try:
            module = importlib.import_module(self.params_module)
        except ImportError:  # pragma: no cover - broken stripe install
            return None
        return getattr(module, self.params_class, None)


def _stripe_dir() -> str:
    import stripe

    return os.path.dirname(stripe.__file__)


def _template_regex(template: str) -> "re.Pattern[str]":
    out = ""
    for part in re.split(r"(\{[a-z_0-9]+\})", template):
        if part.startswith("{") and part.endswith("}"):
            out += "(?P<%s>[^/]+)" % part[1:-1]
        else:
            out += re.escape(part)
    return re.compile("^" + out + "$")


def _parse_service_file(path: str) -> List[Route]:
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    if "_request(" not in source:
        return []
    tree = ast.parse(source)

    # Map imported params class names -> module, from the TYPE_CHECKING block.
    imports: Dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and ".params" in node.module:
            for alias in node.names:
                imports[alias.asname or alias.name] = node.module

    found: List[Route] = []
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for fn in cls.body:
            if not isinstance(fn, ast.FunctionDef):  # skip the *_async twins
                continue
            params_cls = None
            for arg in fn.args.args + fn.args.posonlyargs + fn.args.kwonlyargs:
                if arg.arg == "params" and arg.annotation is not None:
                    m = re.search(r"([A-Za-z0-9_]+Params)\b", ast.unparse(arg.annotation))
                    if m:
                        params_cls = m.group(1)
            if not params_cls or params_cls not in imports:
                continue
            for call in ast.walk(fn):
                if not (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "_request"
                    and len(call.args) >= 2
                ):
                    continue
                meth, path_node = call.args[0], call.args[1]
                if not (isinstance(meth, ast.Constant) and isinstance(meth.value, str)):
                    continue
                template = None
                if isinstance(path_node, ast.Constant) and isinstance(path_node.value, str):
                    template = path_node.value
                elif (
                    isinstance(path_node, ast.Call)
                    and isinstance(path_node.func, ast.Attribute)
                    and path_node.func.attr == "format"
                    and isinstance(path_node.func.value, ast.Constant)
                ):
                    template = path_node.func.value.value
                if not template or not template.startswith("/v1/"):
                    continue
                module_name = os.path.splitext(os.path.basename(path))[0]
                found.append(
                    Route(
                        method=meth.value.upper(),
                        template=template,
                        params_class=params_cls,
                        params_module=imports[params_cls],
                        service="%s.%s.%s" % (module_name, cls.name, fn.name),
                        regex=_template_regex(template),
                    )
                )
                break
    return found


_index_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def routes() -> Tuple[Route, ...]:
    """All v1 routes of the installed stripe package (cached)."""
    with _index_lock:
        base = _stripe_dir()
        seen: Dict[Tuple[str, str], Route] = {}
        for root, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "params", "v2")]
            for name in sorted(files):
                if name.endswith("_service.py") and name.startswith("_"):
                    for r in _parse_service_file(os.path.join(root, name)):
                        seen.setdefault((r.method, r.template), r)
        # Literal segments beat placeholders: "/v1/invoices/search" must win
        # over "/v1/invoices/{invoice}".
        return tuple(
            sorted(seen.values(), key=lambda r: (r.placeholders, -len(r.template), r.template))
        )


def find_route(method: str, path: str) -> Optional[Route]:
    """The route matching a concrete ``path`` (query string ignored)."""
    method = method.upper()
    path = path.split("?", 1)[0]
    for r in routes():
        if r.method == method and r.regex.match(path):
            return r
    return None


def params_class_for(method: str, path: str) -> Optional[type]:
    """The stripe ``TypedDict`` params class for ``method path`` or None.

    >>> params_class_for("POST", "/v1/invoices").__name__
    'InvoiceCreateParams'
    """
    r = find_route(method, path)
    return r.load_params_class() if r else None


def allowed_params(method: str, path: str) -> Optional[frozenset]:
    """Top-level wire parameter names accepted by ``method path``."""
    cls = params_class_for(method, path)
    if cls is None:
        return None
    return frozenset(k for k in _annotations(cls) if k not in REQUEST_OPTION_KEYS)


# ---------------------------------------------------------------------------
# Annotation parsing
# ---------------------------------------------------------------------------


@dataclass
class _Spec:
    """What a parameter accepts, derived from its annotation."""

    scalars: set = field(default_factory=set)  # {"str", "int", "bool", "decimal", "float", "any"}
    typed: Optional[type] = None  # nested TypedDict
    free_dict: bool = False  # Dict[str, str] / metadata
    list_of: Optional["_Spec"] = None
    allow_empty: bool = False  # Literal[''] alternative (used to unset)


def _annotations(cls: type) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        out.update(getattr(base, "__annotations__", {}) or {})
    return out


def _split_top(s: str, sep: str) -> List[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


def _annotation_text(ann: Any) -> str:
    if isinstance(ann, str):
        return ann
    if isinstance(ann, typing.ForwardRef):
        return ann.__forward_arg__
    origin = typing.get_origin(ann)
    if origin is not None and getattr(origin, "_name", None) in ("NotRequired", "Required"):
        return _annotation_text(typing.get_args(ann)[0])
    name = getattr(ann, "_name", None) or getattr(origin, "_name", None)
    if name in ("NotRequired", "Required"):  # typing_extensions variants
        return _annotation_text(typing.get_args(ann)[0])
    if isinstance(ann, type):
        return ann.__name__
    text = repr(ann)
    text = re.sub(r"ForwardRef\('([^']*)'\)", r"\1", text)
    text = re.sub(r'ForwardRef\("([^"]*)"\)', r"\1", text)
    return text.replace("typing.", "").replace("typing_extensions.", "")


def _strip_wrappers(text: str) -> str:
    text = text.strip()
    for w in ("NotRequired[", "Required[", "Optional["):
        if text.startswith(w) and text.endswith("]"):
            return _strip_wrappers(text[len(w) : -1])
    if text.startswith("Union[") and text.endswith("]"):
        return "|".join(_split_top(text[6:-1], ","))
    return text


def _parse_spec(text: str, module: Any) -> _Spec:
    spec = _Spec()
    text = _strip_wrappers(text)
    for alt in _split_top(text, "|"):
        alt = _strip_wrappers(alt)
        if alt.startswith("Literal["):
            values = alt[len("Literal[") : -1]
            if values.strip() in ("''", '""'):
                spec.allow_empty = True
            else:
                spec.scalars.add("str")
        elif alt.startswith("List[") or alt.startswith("list["):
            spec.list_of = _parse_spec(alt[5:-1], module)
        elif alt.startswith(("Dict[", "dict[", "UntypedStripeObject", "Mapping[")):
            spec.free_dict = True
        elif alt in ("str",):
            spec.scalars.add("str")
        elif alt in ("int",):
            spec.scalars.add("int")
        elif alt in ("bool",):
            spec.scalars.add("bool")
        elif alt in ("float",):
            spec.scalars.add("float")
        elif alt in ("Decimal", "decimal.Decimal"):
            spec.scalars.add("decimal")
        elif alt in ("Any", "object"):
            spec.scalars.add("any")
        else:
            candidate = getattr(module, alt, None)
            if isinstance(candidate, type) and hasattr(candidate, "__annotations__"):
                spec.typed = candidate
            else:
                spec.scalars.add("any")
    return spec


@functools.lru_cache(maxsize=None)
def _field_specs(cls: type) -> Dict[str, _Spec]:
    import sys

    module = sys.modules.get(cls.__module__)
    out = {}
    for name, ann in _annotations(cls).items():
        if name in REQUEST_OPTION_KEYS:
            continue
        out[name] = _parse_spec(_annotation_text(ann), module)
    return out


def _required_keys(cls: type) -> frozenset:
    return frozenset(getattr(cls, "__required_keys__", frozenset())) - REQUEST_OPTION_KEYS


# ---------------------------------------------------------------------------
# Validation / coercion
# ---------------------------------------------------------------------------


def _is_indexed_dict(value: Any) -> bool:
    return isinstance(value, dict) and value and all(str(k).isdigit() for k in value)


def _coerce(value: Any, spec: _Spec, name: str, coerce: bool) -> Any:
    if value == "" and (spec.allow_empty or spec.free_dict or "str" in spec.scalars or "any" in spec.scalars):
        return value
    if isinstance(value, dict) and not _is_indexed_dict(value):
        if spec.typed is not None:
            return _validate_typed(value, spec.typed, name, coerce)
        if spec.free_dict or "any" in spec.scalars:
            return {str(k): v for k, v in value.items()}
        if spec.list_of is not None:
            raise ParamError("Invalid array", name)
        raise ParamError("Invalid %s" % _describe(spec), name)
    if isinstance(value, (list, tuple)) or _is_indexed_dict(value):
        items = (
            list(value)
            if isinstance(value, (list, tuple))
            else [value[k] for k in sorted(value, key=lambda k: int(k))]
        )
        if spec.list_of is not None:
            return [_coerce(v, spec.list_of, "%s[%d]" % (name, i), coerce) for i, v in enumerate(items)]
        if spec.free_dict:
            return {str(i): v for i, v in enumerate(items)}
        if "any" in spec.scalars:
            return items
        raise ParamError("Invalid %s" % _describe(spec), name)
    # scalar
    if spec.list_of is not None and not spec.scalars and spec.typed is None:
        raise ParamError("Invalid array", name)
    if spec.typed is not None and not spec.scalars:
        raise ParamError("Invalid object", name)
    if spec.free_dict and not spec.scalars:
        raise ParamError("Invalid object", name)
    if not coerce:
        return value
    if "any" in spec.scalars or "str" in spec.scalars:
        if "int" in spec.scalars or "bool" in spec.scalars:
            pass  # fall through to typed attempts below
        else:
            return value if isinstance(value, str) else _stringify(value)
    if "bool" in spec.scalars:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        if "str" not in spec.scalars:
            raise ParamError("Invalid boolean: %s" % value, name)
    if "int" in spec.scalars:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            if "str" not in spec.scalars:
                raise ParamError("Invalid integer: %s" % value, name)
    if "decimal" in spec.scalars or "float" in spec.scalars:
        try:
            return decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise ParamError("Invalid decimal: %s" % value, name)
    return value


def _stringify(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _describe(spec: _Spec) -> str:
    if "int" in spec.scalars:
        return "integer"
    if "bool" in spec.scalars:
        return "boolean"
    return "string"


def _validate_typed(params: Mapping[str, Any], cls: type, prefix: str, coerce: bool) -> Dict[str, Any]:
    specs = _field_specs(cls)
    out: Dict[str, Any] = {}
    for key, value in params.items():
        name = "%s[%s]" % (prefix, key) if prefix else key
        if key not in specs:
            raise ParamError("Received unknown parameter: %s" % name, name)
        out[key] = _coerce(value, specs[key], name, coerce)
    for key in sorted(_required_keys(cls)):
        if key not in params:
            name = "%s[%s]" % (prefix, key) if prefix else key
            raise ParamError("Missing required param: %s." % name, name)
    return out


def validate(method: str, path: str, params: Mapping[str, Any], *, coerce: bool = True) -> Dict[str, Any]:
    """Validate (and coerce form strings to int/bool) against the TypedDict.

    Raises :class:`ParamError` with Stripe's message on the first problem.
    Returns the params unchanged when no params class is known for the call.
    """
    cls = params_class_for(method, path)
    if cls is None:
        return dict(params)
    return _validate_typed(params, cls, "", coerce)


def _unknown(params: Mapping[str, Any], cls: type, prefix: str, nested: bool) -> List[str]:
    specs = _field_specs(cls)
    problems = []
    for key, value in params.items():
        name = "%s[%s]" % (prefix, key) if prefix else key
        if key not in specs:
            problems.append(name)
            continue
        if not nested:
            continue
        spec = specs[key]
        if isinstance(value, dict) and not _is_indexed_dict(value) and spec.typed is not None:
            problems.extend(_unknown(value, spec.typed, name, nested))
        elif spec.list_of is not None and spec.list_of.typed is not None:
            items = value if isinstance(value, list) else (
                [value[k] for k in sorted(value, key=int)] if _is_indexed_dict(value) else []
            )
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    problems.extend(_unknown(item, spec.list_of.typed, "%s[%d]" % (name, i), nested))
    return problems


def check_params(method: str, path: str, params: Optional[Mapping[str, Any]], nested: bool = True) -> List[str]:
    """Names in ``params`` that the stripe package does not declare for the call.

    ``params`` is a decoded (nested) dict as passed to stripe-python or as
    logged by the emulator.  Returns ``[]`` when all names are known, and
    ``["<no params class for METHOD PATH>"]`` when the call itself is unknown.
    Client options (``idempotency_key``, ``api_key``...) are never wire
    params and are reported if present.
    """
    cls = params_class_for(method, path)
    if cls is None:
        return ["<no params class for %s %s>" % (method.upper(), path)]
    return _unknown(dict(params or {}), cls, "", nested)


def assert_params_known(method: str, path: str, params: Optional[Mapping[str, Any]], nested: bool = True) -> None:
    """AssertionError listing unknown parameter names, if any."""
    problems = check_params(method, path, params, nested)
    if problems:
        cls = params_class_for(method, path)
        raise AssertionError(
            "%s %s sends parameters not declared by %s: %s"
            % (method.upper(), path, getattr(cls, "__name__", "?"), ", ".join(problems))
        )


def check_request_log(entries, nested: bool = True, only_api: bool = True) -> List[str]:
    """Check every entry of the emulator's ``GET /_emulator/requests`` log.

    Returns human readable problems ("POST /v1/invoices: unknown foo").
    """
    problems = []
    for e in entries:
        path = e.get("path", "")
        if only_api and not path.startswith("/v1/"):
            continue
        bad = check_params(e.get("method", "GET"), path, e.get("params") or {}, nested)
        if bad:
            problems.append("%s %s: unknown %s" % (e.get("method"), path, ", ".join(bad)))
    return problems
