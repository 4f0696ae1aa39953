"""JSON <-> protobuf for the gateway, in etcd 3.5's grpc-gateway (v1) format.

Output is what etcd's ``JSONPb{OrigName: true}`` marshaler prints: proto field names
(``create_revision``, and etcd's own ``ID``/``TTL``/``dbSize``), fields at their default
omitted, 64-bit integers as strings, bytes as standard base64, enums by name. Input
accepts the proto names and lowerCamel JSON names, integers as numbers or strings,
enums by name or number; an unknown field, a duplicate key or a wrong type is refused.

Errors follow grpc-gateway v1: a failed call answers ``{"error", "code", "message"}``
with the HTTP status its gRPC code maps to; a stream that fails after its first
message ends with one ``{"error": {"grpc_code", "http_code", "message",
"http_status"}}`` chunk.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

# grpc-gateway v1's HTTPStatusFromCode.
_HTTP_STATUS: dict[grpc.StatusCode, HTTPStatus] = {
    grpc.StatusCode.OK: HTTPStatus.OK,
    grpc.StatusCode.CANCELLED: HTTPStatus.REQUEST_TIMEOUT,
    grpc.StatusCode.UNKNOWN: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.ABORTED: HTTPStatus.CONFLICT,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
}
assert set(_HTTP_STATUS) == set(grpc.StatusCode)


class BodyError(ValueError):
    """The request body is not the JSON of the route's request message(s)."""


def http_status(code: grpc.StatusCode) -> HTTPStatus:
    return _HTTP_STATUS[code]


def code_number(code: grpc.StatusCode) -> int:
    number = code.value[0]
    assert isinstance(number, int)
    return number


def encode(document: object) -> bytes:
    """Compact UTF-8 JSON, as Go's encoder writes it."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def message_document(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def error_body(code: grpc.StatusCode, message: str) -> bytes:
    return encode({"error": message, "code": code_number(code), "message": message})


def stream_error_chunk(code: grpc.StatusCode, message: str) -> bytes:
    status = http_status(code)
    error = {
        "grpc_code": code_number(code),
        "http_code": status.value,
        "message": message,
        "http_status": status.phrase,
    }
    return encode({"error": error}) + b"\n"


def result_chunk(message: Message) -> bytes:
    """One message of a response stream (grpc-gateway's ``{"result": ...}`` line)."""
    return encode({"result": message_document(message)}) + b"\n"


def parse_body(body: bytes, message_type: type[Message], many: bool) -> list[Message]:
    """The request message(s) in ``body``. One JSON object (an empty body is the
    empty message) or, with ``many``, any number of objects separated by whitespace.
    BodyError says what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(f"request body is not UTF-8: {error}") from None
    documents = _json_objects(text)
    if not many and len(documents) > 1:
        raise BodyError("request body holds more than one JSON object")
    if not documents and not many:
        documents = [{}]
    messages: list[Message] = []
    for document in documents:
        message = message_type()
        try:
            json_format.ParseDict(document, message, ignore_unknown_fields=False)
        except (json_format.ParseError, RecursionError) as error:
            raise BodyError(str(error) or "request nested too deep") from None
        messages.append(message)
    return messages


def _json_objects(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder(object_pairs_hook=_refuse_duplicates)
    documents: list[dict[str, Any]] = []
    position = _skip_whitespace(text, 0)
    while position < len(text):
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise BodyError(f"malformed JSON: {error}") from None
        except RecursionError:
            raise BodyError("malformed JSON: nested too deep") from None
        if not isinstance(document, dict):
            raise BodyError(f"expected a JSON object, got {type(document).__name__}")
        documents.append(document)
        position = _skip_whitespace(text, position)
    return documents


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise BodyError(f"malformed JSON: duplicate key {key!r}")
        document[key] = value
    return document
