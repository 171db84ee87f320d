"""The app's OpenAPI document says what every route answers: a body whose schema a client can read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway_support import build_gateway
from litestar.testing import TestClient

from doubles import ScriptedEngine


def _operations(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    with TestClient(build_gateway(ScriptedEngine(), tmp_path).app) as client:
        schema = client.get("/schema/openapi.json").json()
    return [(f"{method.upper()} {path}", op) for path, item in schema["paths"].items() for method, op in item.items()]


def test_every_route_describes_its_response_body(tmp_path: Path) -> None:
    operations = _operations(tmp_path)
    assert len(operations) >= 30
    for where, op in operations:
        if where.startswith("HEAD "):  # a HEAD response never has a body
            continue
        success = {code: r for code, r in op["responses"].items() if code.startswith("2") and code != "204"}
        assert success, f"{where}: no success response"
        for code, response in success.items():
            assert response.get("content"), f"{where} {code}: no body described"
            for media_type, body in response["content"].items():
                schema = body.get("schema") or {}
                # A component (a typed JSON body, events of one), or a schema that says what its bytes or text
                # are: a bare {"type": "string"} tells a client nothing.
                described = "$ref" in json.dumps(schema) or bool(schema.get("description"))
                assert described, f"{where} {code} {media_type}: the body's schema says nothing: {schema}"


def test_a_file_download_is_its_bytes_as_an_octet_stream(tmp_path: Path) -> None:
    download = dict(_operations(tmp_path))["GET /v1/files/{file_id}/content"]
    assert download["operationId"] == "downloadFile"
    body = download["responses"]["200"]["content"]["application/octet-stream"]["schema"]
    assert body["type"] == "string" and body["contentMediaType"] == "application/octet-stream"
    assert "bytes" in body["description"]
