"""Instances vouch for the requests they forward, so that a caller's key is checked once: where the request came in.

The forwarding instance (gateway/forward.py) has checked the key; it signs the request with `X-BitingLip-Vouch`,
an HMAC-SHA256 under its own random secret (`Instances.secret`, in its `instances` row) of the request id and the
key's id. The serving instance knows the other live instances' secrets as of its last heartbeat; a request whose
vouch it verifies has its key taken as checked: looked up by id (its cache) for the limits, models and usage that
go with it, not compared again nor asked whether it is still active. A vouch it cannot verify (an instance it has
not seen yet, a header forged or altered, a key sent that is not the one signed for) counts for nothing: the key
is checked as on any request. Limits are admitted and usage counted once either way, by the serving instance.
"""

from __future__ import annotations

import hashlib
import hmac

from litestar.types import Scope

from bitinglip.cluster import Instances

FORWARDED = b"x-bitinglip-forwarded"  # the forwarding instance's id; never forwarded again
VOUCH = b"x-bitinglip-vouch"


def signature(secret: bytes, request_id: str, key_id: str) -> str:
    return hmac.new(secret, f"{request_id}\n{key_id}".encode(), hashlib.sha256).hexdigest()


class Vouches:
    def __init__(self, instances: Instances) -> None:
        self.instances = instances

    def sign(self, request_id: str, key_id: str) -> tuple[str, str]:
        """The header this instance adds to a request it forwards for a key it checked."""
        return VOUCH.decode(), signature(self.instances.secret.encode(), request_id, key_id)

    def voucher(self, scope: Scope, key_id: str) -> str | None:
        """The id of the live instance that forwarded this request having checked this key for it, if one did."""
        sent_by = vouch = None
        for name, value in scope["headers"]:
            if name == FORWARDED:
                sent_by = value.decode("latin-1")
            elif name == VOUCH:
                vouch = value.decode("latin-1")
        if sent_by is None or vouch is None:
            return None
        secret = self.instances.peer_secrets.get(sent_by)
        if secret is None:
            return None
        expected = signature(secret, scope["state"]["request_id"], key_id)
        return sent_by if hmac.compare_digest(expected, vouch) else None
