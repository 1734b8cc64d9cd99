"""The documented bodies of ``POST /v1/images/edits``, made from the field table (:mod:`imgedit.api.fields`).

BentoML publishes them in the OpenAPI document at ``/docs.json``, where tools
such as schemathesis read them; the multipart form and the JSON body have the
same fields, bounds and defaults as the parser checks.
"""

from __future__ import annotations

from typing import Any, Literal

from imgedit.api.fields import FIELDS, Field

#: An image in a JSON body: a data: or http(s) URL, or an OpenAI file id (which this server refuses).
_JSON_IMAGE = {
    "type": "object",
    "properties": {"image_url": {"type": "string"}, "file_id": {"type": "string"}},
    "description": "An image: 'image_url' is a data: URL or an http(s) URL.",
}


def openapi_form() -> dict[str, Any]:
    """The documented multipart form of ``POST /v1/images/edits``: every field, with its bounds."""
    return {
        "type": "object",
        "title": "ImageEditForm",
        "required": [field.name for field in FIELDS if field.required],
        "properties": {field.name: _openapi_property(field, "form") for field in FIELDS},
    }


def openapi_json() -> dict[str, Any]:
    """The documented JSON body of ``POST /v1/images/edits``: the same fields, with JSON types."""
    return {
        "type": "object",
        "title": "ImageEditJson",
        "required": [field.key for field in FIELDS if field.required],
        "properties": {field.key: _openapi_property(field, "json") for field in FIELDS},
    }


def _openapi_property(field: Field, encoding: Literal["form", "json"]) -> dict[str, Any]:
    schema: dict[str, Any]
    if field.kind == "images":
        files = {"type": "string", "format": "binary"}
        schema = {"type": "array", "items": files if encoding == "form" else _JSON_IMAGE}
    elif field.kind == "urls":
        schema = {"type": "array", "items": {"type": "string"}}
    elif field.kind == "file":
        schema = {"type": "string", "format": "binary"} if encoding == "form" else dict(_JSON_IMAGE)
    elif field.kind == "choice":
        schema = {"type": "string", "enum": list(field.spellings)}
    elif field.kind == "size":
        schema = {"type": "string", "pattern": "^(auto|[0-9]+[xX][0-9]+)$"}
    elif field.kind == "lora" and encoding == "json":
        lora = {"type": "object", "properties": {"name": {"type": "string"}, "scale": {"type": "number"}}}
        schema = {"anyOf": [{"type": "string"}, {"type": "array", "items": lora}, lora]}
    elif field.kind == "lora":
        schema = {"type": "string", "maxLength": field.max_chars}
    elif field.kind == "text":
        schema = {"type": "string"} if field.max_chars is None else {"type": "string", "maxLength": field.max_chars}
    else:
        schema = {"type": field.kind}
    if field.low is not None:
        schema["minimum"] = field.low
    if field.high is not None:
        schema["maximum"] = field.high
    if field.default is not None:
        schema["default"] = field.default
    also = f" Also accepted as '{field.also[0]}'." if field.also and encoding == "form" else ""
    schema["description"] = _plain(field.description) + also
    return schema


def _plain(markdown: str) -> str:
    return markdown.replace("`", "'").replace("*", "")
