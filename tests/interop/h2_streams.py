"""Many SSE streams on one HTTP/2 connection (h2c, by prior knowledge), with httpx and h2, for
tests/http.rs.

Usage: python h2_streams.py HOST:PORT STREAMS

One `httpx.AsyncClient(http1=False, http2=True)`: HTTP/2 with prior knowledge on an http://
URL, one connection for every request. Opens STREAMS concurrent `GET /sse?topic=h2.many`,
waits until each has its head (the server sends it with the opening chunk, once the stream is
subscribed) and `/metrics` counts them all, publishes one event over the same client, and
reads each stream until its first event. Prints one JSON line: the publish's status, HTTP
version and answer, and each stream's status, HTTP version and event. The server must send
keep-alive comments often (see `subscribed`).
"""

import asyncio
import json
import sys

import httpx

TOPIC = "h2.many"
DATA = "one event for every stream"
SSE_SAMPLE = 'tidings_connections{transport="sse"}'


async def main(addr: str, count: int) -> None:
    async with httpx.AsyncClient(
        base_url=f"http://{addr}", http1=False, http2=True, timeout=15
    ) as client:
        opened = [asyncio.Event() for _ in range(count)]

        async def stream(n: int) -> dict:
            headers = {"Accept": "text/event-stream"}
            async with client.stream("GET", f"/sse?topic={TOPIC}", headers=headers) as r:
                got = {"status": r.status_code, "http_version": r.http_version}
                opened[n].set()
                if r.status_code != 200:
                    got["body"] = (await r.aread()).decode(errors="replace")
                    return got
                event = {}
                async for line in r.aiter_lines():
                    if line == "" and "data" in event:
                        got["event"] = event
                        return got
                    field, _, value = line.partition(":")
                    if field in ("id", "data", "event"):
                        event[field] = value[1:] if value.startswith(" ") else value
                got["event"] = None  # the stream ended first
                return got

        async def subscribed() -> None:
            # Until every stream has its head and the server counts them all (then a publish
            # reaches each). httpcore reads an HTTP/2 connection under one lock, in the task of
            # whichever stream waits for data: a stream whose head was already read for it can
            # wait for that lock behind a stream that has nothing coming. The test's server
            # sends keep-alive comments often (timers.keepalive), so every stream gets data
            # and the lock moves on.
            while True:
                metrics = (await client.get("/metrics")).text
                if all(o.is_set() for o in opened) and f"{SSE_SAMPLE} {count}\n" in metrics:
                    return
                await asyncio.sleep(0.02)

        streams = [asyncio.create_task(stream(n)) for n in range(count)]
        await asyncio.wait_for(subscribed(), 15)
        published = await client.post(f"/publish?topic={TOPIC}", content=DATA.encode())
        results = await asyncio.wait_for(asyncio.gather(*streams), 15)
        print(
            json.dumps(
                {
                    "publish": {
                        "status": published.status_code,
                        "http_version": published.http_version,
                        "body": published.text,
                    },
                    "data": DATA,
                    "streams": results,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
