"""sseclient-py over requests, as its README shows, for tests/http.rs.

Usage: python -u sseclient_events.py URL COUNT

Prints one JSON line once the stream's head has arrived ({"connected": status, ...}), then one
per event as sseclient-py dispatches it ({"id": ..., "event": ..., "data": ...}), and exits
after COUNT events. stdout must be unbuffered (`python -u`): the test times each line.
"""

import json
import sys

import requests
import sseclient


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    response = requests.get(
        url, stream=True, headers={"Accept": "text/event-stream"}, timeout=15
    )
    print(
        json.dumps(
            {
                "connected": response.status_code,
                "transfer_encoding": response.headers.get("Transfer-Encoding"),
            }
        ),
        flush=True,
    )
    client = sseclient.SSEClient(response)
    for n, event in enumerate(client.events(), start=1):
        print(
            json.dumps({"id": event.id, "event": event.event, "data": event.data}),
            flush=True,
        )
        if n == count:
            break
    client.close()


if __name__ == "__main__":
    main()
