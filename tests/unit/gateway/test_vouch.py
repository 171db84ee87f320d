"""A request forwarded by another live instance with its vouch has its key taken as that instance checked it;
any vouch that does not verify counts for nothing, and the key is checked as on any request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bitinglip.cluster import Instances
from bitinglip.core import Database, DbSettings, GatewaySettings, Unauthorized
from bitinglip.gateway import Authenticator, KeyCreate, KeyStore, Vouches
from bitinglip.gateway.vouch import FORWARDED, signature


def request(token: str, request_id: str, *headers: tuple[bytes, bytes]) -> Any:
    return {
        "headers": [(b"authorization", f"Bearer {token}".encode()), *headers],
        "state": {"request_id": request_id},
    }


async def test_a_vouched_key_is_not_checked_again_and_a_bad_vouch_changes_nothing(tmp_path: Path) -> None:
    db = Database(DbSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"))
    await db.start()
    front = Instances(db, "http://front:8000", list, heartbeat_s=5)
    serving = Instances(db, "http://serving:8000", list, heartbeat_s=5)
    try:
        await front.start()
        await serving.start()  # it looks around: it knows the front's secret from now on
        keys = KeyStore(db)
        key = (await keys.create(KeyCreate(name="caller"))).key
        ident = key.split("_")[1]
        auth = Authenticator(keys, GatewaySettings(), Vouches(serving))
        vouch = Vouches(front).sign("req-1", ident)
        by_front = (FORWARDED, front.id.encode())

        # The front compared the whole key; here it is not compared again (a key with this id but the wrong
        # secret passes, under the front's vouch for this request and this key id only).
        altered = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        vouched = request(altered, "req-1", by_front, (vouch[0].encode(), vouch[1].encode()))
        assert (await auth.authenticate_request(vouched)).id == ident

        for headers, request_id in (
            ((by_front, (vouch[0].encode(), vouch[1].encode())), "req-2"),  # signed for another request
            ((by_front, (vouch[0].encode(), b"0" * 64)), "req-1"),  # forged
            (((FORWARDED, b"other:1:ff"), (vouch[0].encode(), vouch[1].encode())), "req-1"),  # an unknown instance
            ((by_front,), "req-1"),  # no vouch
        ):
            with pytest.raises(Unauthorized):
                await auth.authenticate_request(request(altered, request_id, *headers))
            assert (await auth.authenticate_request(request(key, request_id, *headers))).id == ident

        # The secret never leaves the table: the instances as /api/cluster shows them do not carry it.
        assert all("secret" not in type(i).__struct_fields__ for i in await serving.live())
        assert signature(front.secret.encode(), "req-1", ident) == vouch[1]
    finally:
        await front.stop()
        await serving.stop()
        await db.stop()
