"""The OpenAPI document of the real server describes every route: its bodies, its errors, its event streams."""

from __future__ import annotations

from typing import Any

import httpx

from e2e.conftest import Server

STREAMING = {"createChatCompletion", "createCompletion", "createResponse", "followPull"}
ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}
ANTHROPIC_ENVELOPE = {"$ref": "#/components/schemas/AnthropicErrorResponse"}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_operation_has_typed_bodies_error_envelopes_and_an_id(server: Server) -> None:
    schema = httpx.get(f"{server.url}/schema/openapi.json", timeout=30).json()
    operations = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]
    ids = [op["operationId"] for _, _, op in operations]
    assert len(ids) == len(set(ids)) and len(ids) >= 30, ids
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert success, where
        for code in success:
            if method == "head":  # a HEAD response never has a body
                continue
            content = responses[code]["content"]
            assert content and all(body["schema"] for body in content.values()), where
        for code, response in responses.items():
            if int(code) >= 400:
                # Anthropic's routes answer errors in Anthropic's envelope, every other route in OpenAI's.
                envelope = ANTHROPIC_ENVELOPE if path.startswith("/v1/messages") else ENVELOPE
                assert response["content"] == {"application/json": {"schema": envelope}}, (where, code)
        if method in ("post", "put", "patch") and not path.endswith("/cancel"):  # a cancel takes no body
            media = "multipart/form-data" if op["operationId"] == "createFile" else "application/json"
            assert op["requestBody"]["content"][media]["schema"]["$ref"], where
        if op["operationId"] in STREAMING:
            assert "text/event-stream" in responses["200"]["content"], where
    components = schema["components"]["schemas"]
    assert all(ref.rsplit("/", 1)[-1] in components for ref in _refs(schema))
    chat = components["ChatCompletionRequest"]["properties"]
    assert {"model", "messages", "max_tokens", "stream", "logprobs"} <= set(chat)


def test_v1_and_api_errors_share_one_envelope(server: Server) -> None:
    for path in ("/v1/models/ghost", "/api/models/ghost", "/api/nothing-here", "/v1/nothing-here"):
        r = httpx.get(f"{server.url}{path}", timeout=10)
        assert r.status_code == 404, path
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}, path
        assert r.headers["x-request-id"], path
