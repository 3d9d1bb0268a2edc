"""The hot path's socket (accounts.wire) against a real AccountsCore on SQLite, and through a Ray actor."""

from __future__ import annotations

import asyncio

import pytest

from accounts.client import Accounts
from accounts.core import AccountsCore
from accounts.errors import AccountsError
from accounts.keys import hash_key
from accounts.wire import WireClient, WireClosed, encode, read_frame

MASTER = "master-secret"
PRICES = {"cheap": (1e-6, 2e-6)}
BODY = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}


def core(tmp_path) -> AccountsCore:
    return AccountsCore(f"sqlite:///{tmp_path}/acct.db", prices=PRICES, master_key_hash=hash_key(MASTER),
                        settle_interval_s=0.2)


def authorize_op(key: str | None, rid: str) -> list:
    return ["authorize", [key, "cheap", 50, rid, None], {}]


def settle_op(res: dict, rid: str) -> list:
    return ["settle", [res["reservation_id"], res["key_id"]],
            {"model_requested": "cheap", "model": "cheap", "prompt_tokens": 10, "completion_tokens": 5,
             "request_id": rid}]


async def test_batches_over_the_socket_decide_like_direct_calls(tmp_path):
    c = core(tmp_path)
    key = (await c.generate_key({"tokens_per_day": 1000}))["ok"]["key"]
    client = WireClient((await c.serve_wire())["ok"])
    granted, missing = await client.batch("ingress-1", 1, [authorize_op(key, "r1"), authorize_op(None, "r2")])
    assert granted["ok"]["key_id"] and granted["ok"]["reservation_id"]
    assert missing["error"]["status"] == 401 and missing["error"]["code"] == "missing_api_key"
    [cost] = await client.batch("ingress-1", 2, [settle_op(granted["ok"], "r1")])
    assert cost["ok"] == pytest.approx(10 * 1e-6 + 5 * 2e-6)
    rows = (await c.ledger())["ok"]
    assert [(r["request_id"], r["status"], r["prompt_tokens"]) for r in rows] == [("r1", 200, 10)]
    client.close()
    await c.close()


async def test_a_resent_batch_is_applied_once(tmp_path):
    c = core(tmp_path)
    key = (await c.generate_key({}))["ok"]["key"]
    client = WireClient((await c.serve_wire())["ok"])
    [granted] = await client.batch("ingress-1", 1, [authorize_op(key, "r1")])
    first = await client.batch("ingress-1", 2, [settle_op(granted["ok"], "r1")])
    client.close()  # as if the reply had been lost with the connection: send seq 2 again
    assert await client.batch("ingress-1", 2, [settle_op(granted["ok"], "r1")]) == first
    assert await c.batch([settle_op(granted["ok"], "r1")], "ingress-1", 2) == first  # also as a Ray call
    assert len((await c.ledger())["ok"]) == 1
    await c.close()


async def test_a_wrong_token_or_a_malformed_frame_is_refused_and_the_server_keeps_serving(tmp_path):
    c = core(tmp_path)
    address = (await c.serve_wire())["ok"]
    with pytest.raises(WireClosed):
        await WireClient({**address, "token": "guess"}).batch("x", 1, [authorize_op(None, "r")])
    reader, writer = await asyncio.open_connection(address["host"], address["port"])
    writer.write(encode(address["token"]))
    assert await read_frame(reader) == "ok"
    writer.write((10).to_bytes(4, "big") + b"\xc1" * 10)  # 0xc1 is never valid msgpack
    assert await reader.read() == b""  # dropped
    writer.close()
    reader, writer = await asyncio.open_connection(address["host"], address["port"])
    writer.write((1 << 30).to_bytes(4, "big"))  # a 1 GiB frame before the token: not read, dropped
    assert await reader.read() == b""
    writer.close()
    [answer] = await WireClient(address).batch("y", 1, [authorize_op(None, "r")])
    assert answer["error"]["status"] == 401
    await c.close()


def test_the_facade_finds_the_socket_again_and_falls_back_to_ray(ray_cluster, tmp_path):
    import ray

    async def run() -> None:
        actor = ray.remote(AccountsCore).options(num_cpus=0, max_concurrency=1000).remote(
            f"sqlite:///{tmp_path}/acct.db", prices=PRICES, master_key_hash=hash_key(MASTER), settle_interval_s=0.2)
        a = Accounts(actor, batch_linger_s=0.0, wire=True)
        key = (await a.call("generate_key", {}))["key"]
        p = await a.authorize(key, "cheap", BODY, request_id="r1")
        await a.settle(p, model="cheap", usage={"prompt_tokens": 3, "completion_tokens": 4})
        assert a._wire is not None  # the socket carried it
        a._wire = WireClient({**a._wire.address, "port": 1})  # a stale address: asked again, then used
        p = await a.authorize(key, "cheap", BODY, request_id="r2")
        await a.settle(p, model="cheap", usage={"prompt_tokens": 3, "completion_tokens": 4})
        assert a._wire.address["port"] != 1
        stats = await a.call("stats")
        assert stats["wire_batches"] >= 4
        a._use_wire = False  # and plain Ray calls still work (transport: actor)
        with pytest.raises(AccountsError) as e:
            await a.authorize("sk-doka-unknown", "cheap", BODY, request_id="r3")
        assert e.value.status == 401
        rows = await a.call("ledger")
        assert [r["request_id"] for r in rows] == ["r1", "r2"]
        ray.kill(actor)

    asyncio.run(run())


async def test_a_resend_while_the_first_is_still_running_waits_for_it(tmp_path):
    c = core(tmp_path)
    key = (await c.generate_key({}))["ok"]["key"]  # not cached yet: the first batch reads the database
    first = asyncio.ensure_future(c.batch([authorize_op(key, "r1")], "ingress-1", 1))
    await asyncio.sleep(0)
    again = await c.batch([authorize_op(key, "r1")], "ingress-1", 1)
    assert again == await first and again[0]["ok"]["reservation_id"]
    assert (await c.stats())["ok"]["reservations"] == 1  # reserved once
    await c.close()
