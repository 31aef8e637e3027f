"""``/docs``: the API reference as one HTML page, rendered on the server from the OpenAPI document.

FastAPI's own pages (Swagger UI, ReDoc) load scripts and fonts from a CDN: they fail offline and
tell a third party who reads the docs. This page has no script and no external resource (its
Content-Security-Policy forbids them), and it cannot drift from the code: it is built from
``app.openapi()``, the same document ``/openapi.json`` serves.

An operation is shown as operator-only when its schema carries ``x-consentgate-key: operator``
(see :data:`OPERATOR_KEY_EXTENSION`) or, for routes that do not set it, when its summary ends
with ``(operator)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

router = APIRouter()

OPERATOR_KEY_EXTENSION = "x-consentgate-key"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_REF_PREFIX = "#/components/schemas/"
_CODE_SPAN = re.compile(r"``?([^`]+?)``?")
_CONSTRAINTS = (
    ("minLength", "min length"),
    ("maxLength", "max length"),
    ("minItems", "min items"),
    ("maxItems", "max items"),
    ("minimum", "minimum"),
    ("maximum", "maximum"),
    ("pattern", "pattern"),
)

# No script, no external resource of any kind: the browser refuses anything but inline style.
DOCS_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
}

_TEMPLATES = Environment(
    loader=PackageLoader("smtp_gateway.http", "templates"), autoescape=True, undefined=StrictUndefined
)


def prose(text: str) -> list[Markup]:
    """Docstring text as paragraphs, ``code`` spans as ``<code>`` (escaped first, so safe)."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text or "") if p.strip()]
    # split() with one group: odd pieces are the code spans' contents.
    return [
        Markup("").join(
            Markup("<code>{}</code>").format(piece) if i % 2 else escape(piece)
            for i, piece in enumerate(_CODE_SPAN.split(paragraph))
        )
        for paragraph in paragraphs
    ]


def schema_anchor(name: str) -> str:
    """The page anchor of a component schema."""
    return "schema-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def type_of(schema: dict[str, Any]) -> Markup:
    """A schema's type in words; a named schema links to its section."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
        name = ref.removeprefix(_REF_PREFIX)
        return Markup('<a href="#{}">{}</a>').format(schema_anchor(name), name)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            joiner = Markup(" and ") if combinator == "allOf" else Markup(" or ")
            return joiner.join(type_of(s) for s in schema[combinator])
    kind = schema.get("type")
    if isinstance(kind, list):
        return Markup(" or ").join(type_of({**schema, "type": k}) for k in kind)
    if kind == "array":
        return Markup("array of ") + type_of(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return Markup("map of string to ") + type_of(schema["additionalProperties"])
    words = str(kind or "any")
    if "format" in schema:
        words += f" ({schema['format']})"
    return escape(words)


@dataclass
class FieldDoc:
    """One field of a body or one parameter."""

    name: str
    type: Markup
    required: bool
    description: list[Markup]
    notes: list[str]
    where: str = ""


@dataclass
class SchemaDoc:
    """A named schema of the document and its fields."""

    name: str
    anchor: str
    description: list[Markup]
    fields: list[FieldDoc]
    values: list[str]


@dataclass
class BodyDoc:
    """What a request or response carries in one media type."""

    media_type: str
    type: Markup | None
    fields: list[FieldDoc]


@dataclass
class ResponseDoc:
    """One documented answer of an operation."""

    status: str
    description: str
    bodies: list[BodyDoc]


@dataclass
class OperationDoc:
    """One method on one path."""

    method: str
    path: str
    anchor: str
    tag: str
    summary: str
    description: list[Markup]
    key: str
    parameters: list[FieldDoc]
    body: list[BodyDoc]
    body_required: bool
    responses: list[ResponseDoc]
    errors: list[ResponseDoc] = field(default_factory=list)


def _notes(schema: dict[str, Any]) -> list[str]:
    """A property's constraints, default, allowed values and example, as short texts."""
    notes = [f"{label} {schema[key]}" for key, label in _CONSTRAINTS if key in schema]
    if "enum" in schema:
        notes.append("one of " + ", ".join(str(v) for v in schema["enum"]))
    if "default" in schema:
        notes.append(f"default {schema['default']!r}")
    examples = schema.get("examples")
    if isinstance(examples, list) and examples:
        notes.append(f"e.g. {examples[0]}")
    return notes


def _fields(schema: dict[str, Any], components: dict[str, Any]) -> list[FieldDoc]:
    """The properties of an object schema (a reference is followed once)."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
        schema = components.get(ref.removeprefix(_REF_PREFIX), {})
    required = set(schema.get("required", ()))
    return [
        FieldDoc(
            name=name,
            type=type_of(prop),
            required=name in required,
            description=prose(str(prop.get("description", ""))),
            notes=_notes(prop),
        )
        for name, prop in schema.get("properties", {}).items()
    ]


def _bodies(content: dict[str, Any], components: dict[str, Any]) -> list[BodyDoc]:
    """One entry per media type; its fields when it is an object."""
    bodies = []
    for media_type, media in content.items():
        schema = media.get("schema") if isinstance(media, dict) else None
        if not schema:
            continue
        bodies.append(BodyDoc(media_type, type_of(schema), _fields(schema, components)))
    return bodies


def _key_needed(operation: dict[str, Any]) -> str:
    """``none``, ``any`` (client or operator) or ``operator``."""
    if not operation.get("security"):
        return "none"
    operator = operation.get(OPERATOR_KEY_EXTENSION) == "operator"
    return "operator" if operator or str(operation.get("summary", "")).endswith("(operator)") else "any"


def operations(document: dict[str, Any]) -> list[OperationDoc]:
    """Every operation of an OpenAPI document, in the document's order."""
    components = document.get("components", {}).get("schemas", {})
    found = []
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            parameters = [
                FieldDoc(
                    name=p["name"],
                    type=type_of(p.get("schema", {})),
                    required=bool(p.get("required")),
                    description=prose(str(p.get("description", ""))),
                    notes=_notes(p.get("schema", {})),
                    where=str(p.get("in", "")),
                )
                for p in [*item.get("parameters", []), *operation.get("parameters", [])]
            ]
            request_body = operation.get("requestBody", {})
            responses = [
                ResponseDoc(
                    str(status),
                    str(answer.get("description", "")),
                    _bodies(answer.get("content", {}), components),
                )
                for status, answer in operation.get("responses", {}).items()
            ]
            found.append(
                OperationDoc(
                    method=method.upper(),
                    path=path,
                    anchor=f"op-{method}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", path).strip("-"),
                    tag=(operation.get("tags") or ["other"])[0],
                    summary=str(operation.get("summary", "")),
                    description=prose(str(operation.get("description", ""))),
                    key=_key_needed(operation),
                    parameters=parameters,
                    body=_bodies(request_body.get("content", {}), components),
                    body_required=bool(request_body.get("required")),
                    responses=[r for r in responses if not r.status.startswith(("4", "5"))],
                    errors=[r for r in responses if r.status.startswith(("4", "5"))],
                )
            )
    return found


def schemas(document: dict[str, Any]) -> list[SchemaDoc]:
    """Every named schema of the document, by name."""
    components = document.get("components", {}).get("schemas", {})
    return [
        SchemaDoc(
            name=name,
            anchor=schema_anchor(name),
            description=prose(str(schema.get("description", ""))),
            fields=_fields(schema, components),
            values=[str(v) for v in schema.get("enum", [])],
        )
        for name, schema in sorted(components.items())
    ]


def render_docs(
    document: dict[str, Any], base_url: str, prefix: str, rate_per_minute: int, burst: int
) -> str:
    """The reference page for ``document``.

    ``base_url`` is the API's root as the reader reached it, ``prefix`` its path (``/api/v1``).
    """
    info = document.get("info", {})
    ops = operations(document)
    tags: dict[str, list[OperationDoc]] = {}
    for op in ops:
        tags.setdefault(op.tag, []).append(op)
    return _TEMPLATES.get_template("api_docs.html").render(
        title=str(info.get("title", "API")),
        version=str(info.get("version", "")),
        summary=str(info.get("summary", "")),
        tags=tags,
        schemas=schemas(document),
        base_url=base_url,
        prefix=prefix,
        rate_per_minute=rate_per_minute,
        burst=burst,
    )


# Rendering walks the whole schema (tens of ms); the page is public, so it is rendered once per
# app with this mark where the reader's base URL goes, then only the mark is replaced.
_BASE_URL_MARK = "__consentgate_docs_base_url__"


@router.get("/docs", include_in_schema=False)
async def docs_page(request: Request) -> HTMLResponse:
    """The API reference (public, like ``/openapi.json``)."""
    prefix = str(request.scope.get("root_path", ""))
    cached: tuple[str, str] | None = getattr(request.app.state, "docs_page", None)
    if cached is None or cached[0] != prefix:
        config = request.app.state.api.config
        html = render_docs(
            request.app.openapi(), _BASE_URL_MARK, prefix, config.rate_per_minute, config.burst
        )
        cached = (prefix, html)
        request.app.state.docs_page = cached
    base_url = f"{request.url.scheme}://{request.url.netloc}{prefix}"
    return HTMLResponse(cached[1].replace(_BASE_URL_MARK, str(escape(base_url))), headers=DOCS_HEADERS)
