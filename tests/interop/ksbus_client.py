"""Drives a tidings server with the PyPI ksbus client (ksbus==1.3.1), as tests/ksbus_interop.rs.

Usage: python ksbus_client.py HOST:PORT

Prints one JSON line per observation ({"step": ..., ...}); exits non-zero when an expected
delivery does not arrive within 5 s. Waits are on events (futures), never fixed sleeps, except
where the client library offers nothing to wait on (noted).
"""
import asyncio
import json
import sys
import uuid

from ksbus import Bus

TIMEOUT = 5


def say(step, **fields):
    print(json.dumps({"step": step, **fields}, sort_keys=True), flush=True)


class Client:
    """A ksbus Bus plus queues of what it received, by kind."""

    def __init__(self, addr, ident):
        self.pongs = asyncio.Queue()
        self.frames = asyncio.Queue()
        self.direct = asyncio.Queue()
        self.bus = Bus({
            "Address": addr,
            "Id": ident,
            "OnOpen": lambda bus: self.pongs.put_nowait(True),
            "OnDataWs": lambda obj, conn: self.frames.put_nowait(obj),
            "OnId": lambda obj: self.direct.put_nowait(obj),
        })

    async def opened(self):
        await asyncio.wait_for(self.pongs.get(), TIMEOUT)

    async def sync(self):
        """Everything sent so far was handled: ping and wait for the pong (frames on one
        connection are handled in order). The library sends most frames from tasks of their
        own: wait for those first, so the ping goes after them."""
        sending = [
            t
            for t in asyncio.all_tasks()
            if t is not asyncio.current_task() and t.get_coro().__name__ == "sendMessage"
        ]
        await asyncio.gather(*sending)
        await self.bus.sendMessage({"action": "ping"})
        await self.opened()

    def subscribe(self, topic):
        q = asyncio.Queue()
        self.bus.Subscribe(topic, lambda obj, sub: q.put_nowait(obj))
        return q


async def expect(queue, what):
    try:
        return await asyncio.wait_for(queue.get(), TIMEOUT)
    except asyncio.TimeoutError:
        say("timeout", waiting_for=what)
        sys.exit(1)


async def nothing(queue, ms=300):
    try:
        got = await asyncio.wait_for(queue.get(), ms / 1000)
        return got
    except asyncio.TimeoutError:
        return None


async def main(addr):
    ns = uuid.uuid4().hex[:8]
    a = Client(addr, f"py-a-{ns}")
    b = Client(addr, f"py-b-{ns}")
    await a.opened()
    await b.opened()
    say("connected", a=a.bus.Id, b=b.bus.Id)

    topic = f"py.{ns}.news"
    news = a.subscribe(topic)
    await a.sync()

    b.bus.Publish(topic, {"msg": "hi", "n": 1})
    say("object", got=await expect(news, "object publish"))

    b.bus.Publish(topic, "hello")
    say("string", got=await expect(news, "string publish"))

    received = asyncio.get_running_loop().create_future()
    expired = asyncio.get_running_loop().create_future()
    b.bus.PublishWaitRecv(
        topic,
        {"msg": "wait"},
        lambda data: received.done() or received.set_result(data),
        lambda event_id, t: expired.done() or expired.set_result(event_id),
    )
    ack = await asyncio.wait_for(received, TIMEOUT)
    say("wait_recv_ack", got=ack, expired=expired.done())
    say("wait_recv_delivery", got=await expect(news, "wait-recv publish"))

    b.bus.PublishToID(a.bus.Id, {"dm": 1})
    say("direct", got=await expect(a.direct, "pub_id"))

    a.bus.RemoveTopic(topic)  # sends "remove", which the Go server refuses
    await a.sync()
    b.bus.Publish(topic, {"after": "remove"})
    await b.sync()
    # Nothing to wait for: assert that nothing arrives for a while.
    say("after_remove", got=await nothing(news), errors=[f for f in drain(a.frames) if "error" in f])

    # Reconnect with the same id: a new Bus (the library re-sends no subscriptions).
    await a.bus.conn.close()
    ident = a.bus.Id
    for attempt in range(50):
        again = Client(addr, ident)
        await again.opened()
        await again.sync()
        errors = [f for f in drain(again.frames) if "error" in f]
        if not errors:
            break
        # The server frees the id when it has seen the old connection close, which the client
        # library gives no way to wait for: try again shortly.
        await again.bus.conn.close()
        await asyncio.sleep(0.05)
    say("reconnected", attempts=attempt + 1, errors=errors)
    news = again.subscribe(topic)
    await again.sync()
    b.bus.Publish(topic, {"msg": "again"})
    say("after_reconnect", got=await expect(news, "publish after reconnect"))
    b.bus.PublishToID(ident, "dm again")
    say("direct_after_reconnect", got=await expect(again.direct, "pub_id after reconnect"))


def drain(queue):
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
