"""Uploads through the real app: the name a file is listed under is only its name, and a name too long is a 400
saying so."""

from __future__ import annotations

from pathlib import Path

from gateway_support import build_gateway
from litestar.testing import TestClient

from doubles import ScriptedEngine

LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


def _form(filename: str) -> tuple[bytes, dict[str, str]]:
    """A multipart form written by hand, so the name's bytes reach the server as they are (httpx escapes some)."""
    boundary = "bitinglip-test"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + LINE
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def test_an_uploads_name_loses_its_path_and_control_characters(tmp_path: Path) -> None:
    with TestClient(build_gateway(ScriptedEngine(), tmp_path).app) as client:
        for given, kept in [
            ("../../etc/passwd", "passwd"),
            ("C:\\Users\\me\\in.jsonl", "in.jsonl"),
            ("in\x1b[31mred\x07\x7f.jsonl", "in[31mred.jsonl"),
            ("..", "upload.jsonl"),
        ]:
            body, headers = _form(given)
            made = client.post("/v1/files", content=body, headers=headers)
            assert made.status_code == 200, made.text
            assert made.json()["filename"] == kept
            assert client.get(f"/v1/files/{made.json()['id']}").json()["filename"] == kept


def test_a_name_too_long_is_a_400_saying_so(tmp_path: Path) -> None:
    with TestClient(build_gateway(ScriptedEngine(), tmp_path).app) as client:
        refused = client.post("/v1/files", files={"file": ("x" * 300 + ".jsonl", LINE)}, data={"purpose": "batch"})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["param"]) == ("filename_too_long", "file") and "306 characters" in error["message"]
