"""The PyPI ksbus client's AutoRestart across a graceful restart of tidings, for
tests/ksbus_interop.rs.

Usage: python ksbus_restart.py HOST:PORT

Connects with AutoRestart (RestartEvery 0.2 s) and prints one JSON line per event: {"step":
"opened"} on every pong (the library's OnOpen), {"step": "closed"} on every OnClose. The test
restarts the server in between and waits for the second "opened"; it stops this process by pid.
The library restarts only when reading ends in an error: a close with 1000 or 1001 is a normal
end for `websockets`, after which the client silently stays disconnected.
"""
import asyncio
import json
import sys

from ksbus import Bus


def say(step):
    print(json.dumps({"step": step}), flush=True)


async def main(addr):
    Bus({
        "Address": addr,
        "AutoRestart": True,
        "RestartEvery": 0.2,
        "OnOpen": lambda bus: say("opened"),
        "OnClose": lambda: say("closed"),
    })
    await asyncio.sleep(60)
    say("timeout")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
