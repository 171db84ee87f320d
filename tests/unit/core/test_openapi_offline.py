"""The API docs work offline: the Swagger UI page loads only what the server itself serves."""

from __future__ import annotations

import re

from litestar import Litestar
from litestar.testing import TestClient

from bitinglip.core import CorePlugin


def test_the_swagger_page_loads_nothing_from_elsewhere() -> None:
    with TestClient(Litestar(plugins=[CorePlugin()])) as client:
        for page in ("/schema", "/schema/swagger"):
            html = client.get(page)
            assert html.status_code == 200 and "SwaggerUIBundle" in html.text
            urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html.text)
            assert urls and all(url.startswith("/schema/assets/swagger-ui/") for url in urls), urls
            for url in urls:
                asset = client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 500, url
        assert client.get("/schema/openapi.json").json()["info"]["title"] == "BitingLip"
        assert client.get("/schema/redoc").status_code == 404  # the viewers that load from CDNs are not offered
