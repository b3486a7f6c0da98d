"""The Open Inference Protocol (KServe v2 / Triton HTTP) for our photo models: metadata, request and response codec.

Pure functions and data, no I/O: ``bridge.api.v2`` parses with ``parse_infer_request``, runs every photo as its
own item through the prediction service, and answers with ``build_outputs`` + ``encode_response``.

Images are one ``BYTES`` input ``image`` of shape ``[N, 1]``: raw bytes through the binary tensor data extension
(``Inference-Header-Content-Length`` + ``binary_data_size``), or JSON strings, base64 when the input (or the
request) carries ``"content_type": "base64"`` (MLServer's convention). Each model's JSON answer maps to named
output tensors as its kind declares them (the catalogue, stack/models.json; the generic ``json`` kind for a model
it does not know: one BYTES ``answer`` per item); an item that failed has zero/empty values in them, and then the
``status`` and ``error`` outputs (always added when any item failed) say which items failed and why.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from bridge.uploads import MAX_PARAM_LENGTH, model_params
from stack import models
from stack.models import Model

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_ITEMS = 64  # TorchServe's job queue holds 64 requests per model (config.properties job_queue_size)
INPUT_NAME = "image"
# Request parameters with a protocol meaning (Triton's reserved ones, ours): never passed to the model.
PROTOCOL_PARAMS = frozenset({
    "binary_data_output", "content_type", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
    "headers",
})
BINARY_FORMATS = {"FP32": "f", "FP64": "d", "INT32": "i", "INT64": "q", "BOOL": "?"}
ZERO: dict[str, Any] = {"FP32": 0.0, "FP64": 0.0, "INT32": 0, "INT64": 0, "BOOL": False, "BYTES": ""}


class ProtocolError(BadRequest):
    """The request breaks the protocol or the model's signature (400)."""


# --- Model signatures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's name, datatype and shape (-1: variable) as model metadata states them."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        """The ``$metadata_tensor`` JSON object."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


ITEM_OUTPUTS = (  # every model: per-item outcome, added to the answer whenever an item failed
    TensorSpec("status", "INT32", (-1, 1)),
    TensorSpec("error", "BYTES", (-1, 1)),
    TensorSpec("request_id", "BYTES", (-1, 1)),
)
# Triton's classification extension (``classification`` on ``scores``) needs the three outputs of a classifier.
CLASSIFICATION = ("scores", "class_ids", "labels")


def signature(model: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs of ``model`` as its metadata states them: its kind's outputs from the catalogue."""
    outputs = tuple(TensorSpec(o.name, o.datatype, (-1, o.width)) for o in models.describe(model).outputs)
    return (TensorSpec(INPUT_NAME, "BYTES", (-1, 1)),), outputs + ITEM_OUTPUTS


_ABSENT = object()


def _values(node: Any, keys: list[str]) -> Any:
    """The values at ``keys`` below ``node`` (a key ending in ``[]`` takes that key of every element)."""
    if not keys:
        return node
    key, rest = keys[0], keys[1:]
    each = key.endswith("[]")
    key = key.removesuffix("[]")
    if not isinstance(node, dict) or key not in node:
        return _ABSENT
    value = node[key]
    if not each:
        return _values(value, rest)
    if not isinstance(value, list):
        return _ABSENT
    found = [_values(element, rest) for element in value]
    return _ABSENT if any(v is _ABSENT for v in found) else found


def extract(answer: Any, path: str) -> list[Any] | None:
    """An output's values in one item's JSON answer (flat), None when the answer lacks them (``Output.path``)."""
    if path == "":
        return [json.dumps(answer, separators=(",", ":"))]
    values: list[Any] = []
    for part in path.split(","):
        found = _values(answer, part.strip().split("."))
        if found is _ABSENT:
            return None
        values.extend(_flatten(found) if isinstance(found, list) else [found])
    return values


def answer_row(model: Model, answer: Any) -> dict[str, list[Any]]:
    """One item's values of each of the model's outputs (an output its answer lacks is left out)."""
    row = {}
    for output in model.outputs:
        values = extract(answer, output.path)
        if values is not None:
            row[output.name] = values
    return row


def model_metadata(model: str, versions: Sequence[str], platform: str = "torchserve") -> dict[str, Any]:
    """The ``$metadata_model_response`` object."""
    inputs, outputs = signature(model)
    return {
        "name": model, "versions": list(versions), "platform": platform,
        "inputs": [t.metadata() for t in inputs], "outputs": [t.metadata() for t in outputs],
    }


# --- Request ----------------------------------------------------------------------------------------------

Parameters = dict[str, str | int | float | bool]


# What parse_infer_request checks, stated in the document too (the models parse loosely, so a request that breaks
# a rule gets the message of its own check): one BYTES input "image" of shape [N, 1] or [N] (1 ≤ N ≤ MAX_ITEMS),
# its photos either as JSON strings (data) or as binary_data_size bytes after the JSON header, never both.
# What no schema can state is checked only there: N equal to the number of photos, binary_data_size equal to the
# bytes that follow, the outputs the model has, and whether each photo is an image.
def _set(**keywords: Any) -> Callable[[dict[str, Any]], None]:
    def change(schema: dict[str, Any]) -> None:
        schema.update(keywords)

    return change


_SHAPE = {"type": "integer", "minimum": 1, "maximum": MAX_ITEMS}
_SIZE = "binary_data_size"
_PHOTOS = {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}
_MODEL_PARAMETER_NAME = r"^(?:[A-Za-z_][A-Za-z0-9_]{0,31}|triton_.*)$"  # uploads.model_params, or a protocol one


class RequestInput(BaseModel):
    """``$request_input``: the photos, as JSON strings (``data``) or as binary data after the JSON header
    (``parameters.binary_data_size``)."""

    model_config = ConfigDict(json_schema_extra=_set(oneOf=[
        {"required": ["data"], "properties": {"data": _PHOTOS, "parameters": {"not": {"required": [_SIZE]}}}},
        {"required": ["parameters"], "properties": {"data": {"type": "null"}, "parameters": {"required": [_SIZE]}}},
    ]))

    name: str = Field(examples=[INPUT_NAME], json_schema_extra=_set(enum=[INPUT_NAME]))
    shape: list[int] = Field(
        examples=[[1, 1]], description=f"[N, 1] or [N]: N photos, at most {MAX_ITEMS}",
        json_schema_extra=_set(minItems=1, maxItems=2, prefixItems=[_SHAPE, {"const": 1}]),
    )
    datatype: str = Field(examples=["BYTES"], json_schema_extra=_set(enum=["BYTES"]))
    parameters: Parameters = Field(
        default_factory=dict, examples=[{"content_type": "base64"}],
        description="`content_type`: `base64` for base64 strings in `data`; `binary_data_size`: the bytes of the "
                    "binary data (each photo a 4-byte little-endian length, then its bytes)",
        json_schema_extra=_set(properties={
            _SIZE: {"type": "integer", "minimum": 0}, "content_type": {"type": "string"},
        }),
    )
    data: list[Any] | None = Field(None, description="the photos (BYTES as strings), flat or nested [[...]]")


class RequestOutput(BaseModel):
    """``$request_output``: an output asked for, as JSON or binary, or as top-k classes (classification)."""

    name: str = Field(examples=["labels"], description="one of the model's outputs (its metadata lists them)")
    parameters: Parameters = Field(
        default_factory=dict, examples=[{"binary_data": False}],
        json_schema_extra=_set(properties={
            "binary_data": {"type": "boolean"}, "classification": {"type": "integer", "minimum": 0},
        }),
    )


class InferenceRequest(BaseModel):
    """``$inference_request``: the JSON object (or the JSON header before binary tensor data)."""

    id: str | None = None
    parameters: Parameters = Field(
        default_factory=dict, description="model parameters (e.g. k; names are identifiers, values at most 200 "
                                          "characters, at most 8) and protocol ones (binary_data_output, content_type)",
        json_schema_extra=_set(propertyNames={"pattern": _MODEL_PARAMETER_NAME}, additionalProperties={"anyOf": [
            {"type": "string", "maxLength": MAX_PARAM_LENGTH}, {"type": "number"}, {"type": "boolean"},
        ]}),
    )
    inputs: list[RequestInput] = Field(json_schema_extra=_set(minItems=1, maxItems=1))
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """``$response_output``: data in JSON, or ``binary_data_size`` bytes after the JSON header."""

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """``$inference_response``."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class OipError(BaseModel):
    """``$inference_error_response`` (and every other error on ``/v2``)."""

    error: str = Field(examples=["model 'nope' is not registered"])


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined (for a hand-written OpenAPI request body)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


@dataclass(frozen=True)
class OutputRequest:
    """One requested output: its name, whether it travels as binary, and a classification count (0: none)."""

    name: str
    binary: bool
    classification: int = 0


@dataclass(frozen=True)
class Item:
    """One photo of the request, or why it cannot be one (a malformed element fails only its own item)."""

    photo: bytes
    problem: str | None = None


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request: the photos, the outputs wanted and the model parameters."""

    id: str | None
    items: tuple[Item, ...]
    outputs: tuple[OutputRequest, ...] | None
    binary_output: bool
    params: dict[str, str] = field(default_factory=dict)


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body without its ``Content-Encoding`` (gzip or deflate, as tritonclient sends), at most ``max_bytes``."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding[:20]!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        plain = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid {encoding}: {exc}") from exc
    if len(plain) > max_bytes:
        raise PayloadTooLarge(f"the decompressed body exceeds the limit of {max_bytes} bytes")
    return plain


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (``Inference-Header-Content-Length``)."""
    if header_length is None:
        return body, b""
    length = header_length.strip()
    if not (length.isascii() and length.isdigit()) or int(length) > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer within the body's {len(body)} bytes")
    size = int(length)
    return body[:size], body[size:]


def decode_bytes_elements(raw: bytes) -> list[bytes]:
    """A binary BYTES tensor: each element a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError("binary BYTES data ends inside an element's length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ProtocolError("binary BYTES data is shorter than an element's length prefix says")
        elements.append(raw[offset:offset + size])
        offset += size
    return elements


def encode_bytes_elements(elements: Sequence[bytes]) -> bytes:
    """The binary form of a BYTES tensor (the inverse of ``decode_bytes_elements``)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for element in data:
        flat.extend(_flatten(element) if isinstance(element, list) else [element])
    return flat


def _param_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ProtocolError(f"parameter {name!r} must be a string, number or boolean")


def _json_items(tensor: RequestInput, base64_default: bool) -> list[Item]:
    encoding = tensor.parameters.get("content_type", "base64" if base64_default else "str")
    items = []
    for element in _flatten(tensor.data or []):
        if not isinstance(element, str):
            items.append(Item(b"", f"a BYTES element must be a string, got {type(element).__name__}"))
        elif encoding == "base64":
            try:
                items.append(Item(base64.b64decode(element, validate=True)))
            except ValueError:
                items.append(Item(b"", "the element is not valid base64"))
        else:
            items.append(Item(element.encode()))
    return items


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request (JSON, or JSON header + binary tensor data) into photos, outputs and parameters."""
    header, tail = split_body(body, header_length)
    try:
        request = InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ProtocolError(f"malformed inference request: {problems}") from exc
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
        names = ", ".join(repr(i.name) for i in request.inputs) or "none"
        raise ProtocolError(f"the model takes one input {INPUT_NAME!r} (BYTES, shape [N, 1]); got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise ProtocolError(f"input {INPUT_NAME!r} must be BYTES (the photo's encoded bytes), not {tensor.datatype}")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) or tensor.shape[0] < 1:
        raise ProtocolError(f"input {INPUT_NAME!r} must have shape [N, 1] (or [N]) with N >= 1, not {tensor.shape}")
    count = tensor.shape[0]
    if count > MAX_ITEMS:
        raise ProtocolError(f"at most {MAX_ITEMS} photos per request; got {count}")
    size = tensor.parameters.get("binary_data_size")
    base64_default = request.parameters.get("content_type") == "base64"
    if size is not None:
        if tensor.data is not None:
            raise ProtocolError(f"input {INPUT_NAME!r} has both data and binary_data_size")
        if _integer(size) != len(tail):
            raise ProtocolError(f"binary_data_size is {size} but {len(tail)} bytes follow the JSON header")
        items = [Item(photo) for photo in decode_bytes_elements(tail)]
    elif tensor.data is not None:
        if tail:
            raise ProtocolError("binary data follows the JSON header but no input declares binary_data_size")
        items = _json_items(tensor, base64_default)
    else:
        raise ProtocolError(f"input {INPUT_NAME!r} has neither data nor binary_data_size")
    if len(items) != count:
        raise ProtocolError(f"input {INPUT_NAME!r} has shape {tensor.shape} but {len(items)} elements")
    items = [item if item.photo or item.problem else Item(b"", "empty photo") for item in items]
    binary_output = request.parameters.get("binary_data_output") is True
    outputs = None
    if request.outputs is not None:
        outputs = tuple(_output_request(o, binary_output) for o in request.outputs)
    params = model_params([
        (name, _param_text(name, value)) for name, value in request.parameters.items()
        if name not in PROTOCOL_PARAMS and not name.startswith("triton_")
    ])
    return InferRequest(request.id, tuple(items), outputs, binary_output, params)


def _output_request(output: RequestOutput, binary_default: bool) -> OutputRequest:
    binary = output.parameters.get("binary_data", binary_default)
    count = _integer(output.parameters.get("classification", 0))
    if not isinstance(binary, bool):
        raise ProtocolError(f"output {output.name!r}: binary_data must be a boolean")
    if count is None or count < 0:
        raise ProtocolError(f"output {output.name!r}: classification must be a non-negative integer")
    return OutputRequest(output.name, binary, count)


def _integer(value: Any) -> int | None:
    """A JSON integer (``2``, or ``2.0``: JSON Schema's integer is any number with no fraction), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def check_outputs(model: str, request: InferRequest) -> dict[str, str]:
    """Refuse outputs the model lacks (before any inference); the model parameters the outputs imply."""
    entry = models.describe(model)
    known = {o.name: o for o in entry.outputs}
    names = [*known, *(spec.name for spec in ITEM_OUTPUTS)]
    extra: dict[str, str] = {}
    for wanted in request.outputs or ():
        if wanted.name not in names:
            raise ProtocolError(f"model {model!r} has no output {wanted.name!r}; it has {', '.join(names)}")
        if wanted.classification:
            if wanted.name != CLASSIFICATION[0] or not set(CLASSIFICATION) <= known.keys():
                raise ProtocolError("classification is available on the output 'scores' of classifiers only")
            topk = known["scores"].width
            if topk > 0 and wanted.classification > topk:
                raise ProtocolError(f"classification is at most {topk} (the model's top-k)")
        output = known.get(wanted.name)
        if output is not None and output.asked_by:
            extra[output.asked_by] = "true"
    return extra


# --- Response ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One item's result: the model's JSON answer (status 200) or its error."""

    status: int
    request_id: str
    answer: Any = None  # any JSON value (our kinds: an object)
    error: str | None = None


@dataclass(frozen=True)
class Tensor:
    """An output tensor, data flat and row-major."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


def build_outputs(model: str, outcomes: Sequence[Outcome], request: InferRequest) -> list[Tensor]:
    """The output tensors for the items' outcomes: those requested (default: all but optional ones)."""
    entry = models.describe(model)
    specs = {spec.name: spec for spec in signature(model)[1]}
    optional = {o.name for o in entry.outputs if o.asked_by}
    rows = [answer_row(entry, o.answer) if o.status == 200 and o.answer is not None else None for o in outcomes]
    failed = any(row is None for row in rows)
    if request.outputs is not None:
        wanted = list(request.outputs)
    else:
        present = [n for n in specs if n not in optional or all(r is None or n in r for r in rows)]
        wanted = [OutputRequest(n, request.binary_output) for n in present if specs[n] not in ITEM_OUTPUTS]
    if failed:  # the outcome of each item travels with any partial answer, asked for or not
        names = {w.name for w in wanted}
        wanted += [OutputRequest(n, request.binary_output) for n in ("status", "error") if n not in names]
    outcome_rows: dict[str, list[list[Any] | None]] = {
        "status": [[o.status] for o in outcomes],
        "error": [[o.error or ""] for o in outcomes],
        "request_id": [[o.request_id] for o in outcomes],
    }
    tensors = []
    for w in wanted:
        spec = specs[w.name]
        if w.name in outcome_rows:
            tensors.append(_tensor(w.name, spec.datatype, outcome_rows[w.name]))
        elif w.classification:
            tensors.append(_classification(w.name, w.classification, rows))
        else:
            tensors.append(_tensor(w.name, spec.datatype, [r.get(w.name) if r else None for r in rows]))
    return tensors


def _tensor(name: str, datatype: str, rows: list[list[Any] | None]) -> Tensor:
    width = max((len(r) for r in rows if r is not None), default=0)
    zero = ZERO[datatype]
    data = [v for r in rows for v in (r or []) + [zero] * (width - len(r or []))]
    return Tensor(name, datatype, [len(rows), width], data)


def _classification(name: str, count: int, rows: list[dict[str, list[Any]] | None]) -> Tensor:
    """Triton's classification extension: ``"<score>:<class index>:<label>"`` for the top ``count``."""
    lines = [
        [f"{s:f}:{i}:{label}" for s, i, label in zip(r["scores"], r["class_ids"], r["labels"])][:count] if r else None
        for r in rows
    ]
    return _tensor(name, "BYTES", lines)


def _binary(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return encode_bytes_elements([v if isinstance(v, bytes) else str(v).encode() for v in tensor.data])
    return struct.pack(f"<{len(tensor.data)}{BINARY_FORMATS[tensor.datatype]}", *tensor.data)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; never produced by our models, but never emit invalid JSON either
    return value


def encode_response(
    model: str, version: str | None, request: InferRequest, tensors: Sequence[Tensor],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its protocol headers (binary outputs after the JSON, their length in a header)."""
    wanted = {w.name: w.binary for w in request.outputs or ()}
    outputs, chunks = [], []
    for tensor in tensors:
        as_binary = wanted.get(tensor.name, request.binary_output)
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if as_binary:
            chunk = _binary(tensor)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = [_json_value(v) for v in tensor.data]
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": version or ""}
    if request.id is not None:
        document["id"] = request.id
    if parameters:
        document["parameters"] = parameters
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
