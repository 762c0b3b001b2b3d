"""Half-open measurement (docs/RELIABILITY.md §4), started by run.sh in a network namespace with the
server on 127.0.0.1:PORT. A WebSocket and an SSE client connect; each, right after receiving its
first keep-alive (and, for WebSocket, answering the ping with a pong), has every packet of its
connection dropped by an nftables rule (a peer that vanished: nothing is acknowledged any
more). The server's /metrics is polled every 100 ms on another connection until it no longer
counts the connection; the time from the drop to then is printed."""
import base64, os, re, socket, subprocess, sys, threading, time

PORT = int(sys.argv[1])
ADDR = ("127.0.0.1", PORT)
t0 = time.monotonic()
def now(): return time.monotonic() - t0
def log(*a): print(f"{now():7.2f}s", *a, flush=True)

subprocess.run(["nft", "add", "table", "inet", "t"], check=True)
subprocess.run(["nft", "add", "chain", "inet", "t", "out",
                "{ type filter hook output priority 0; }"], check=True)

def drop(port):
    for k in ("sport", "dport"):
        subprocess.run(["nft", "add", "rule", "inet", "t", "out", "tcp", k, str(port), "drop"], check=True)

def metrics():
    s = socket.create_connection(ADDR)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        c = s.recv(65536)
        if not c: break
        data += c
    s.close()
    t = data.decode()
    g = lambda name: int(re.search(re.escape(name) + r" (\d+)", t).group(1))
    return {"ws": g('tidings_connections{transport="ws"}'),
            "sse": g('tidings_connections{transport="sse"}'),
            "write_timeouts": g("tidings_write_timeouts_total"),
            "dead": g("tidings_dead_connections_total"),
            "idle_errors": g('tidings_errors_total{code="idle"}')}

dropped = {}

def ws_client():
    s = socket.create_connection(ADDR)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf: buf += s.recv(4096)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    port = s.getsockname()[1]
    log(f"ws connected from port {port}")
    def need(n):
        nonlocal buf
        while len(buf) < n: buf += s.recv(4096)
        out, buf = buf[:n], buf[n:]
        return out
    while True:
        b0, b1 = need(2)
        op, n = b0 & 0x0F, b1 & 0x7F
        if n == 126: n = int.from_bytes(need(2), "big")
        elif n == 127: n = int.from_bytes(need(8), "big")
        payload = need(n)
        if op == 0x9:
            mask = os.urandom(4)
            masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            s.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)
            log(f"ws ping received, pong sent; dropping port {port}")
            drop(port)
            dropped["ws"] = now()
            break
        if op == 0x1 and b'"type":"ping"' in payload:
            pong = b'{"op":"pong"}'
            mask = os.urandom(4)
            masked = bytes(c ^ mask[i % 4] for i, c in enumerate(pong))
            s.sendall(bytes([0x81, 0x80 | len(pong)]) + mask + masked)
            log(f"ws ping frame received, pong sent; dropping port {port}")
            drop(port)
            dropped["ws"] = now()
            break
        log(f"ws frame op {op}: {payload[:80]!r}")
    time.sleep(1000)  # keep the socket: the peer is gone, not closed

def sse_client():
    s = socket.create_connection(ADDR)
    s.sendall(f"GET /sse?topic=h HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\n\r\n".encode())
    port = s.getsockname()[1]
    log(f"sse connected from port {port}")
    buf = b""
    while True:
        buf += s.recv(4096)
        # a keep-alive comment line after the head
        body = buf.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in buf else b""
        if re.search(rb"(^|\n):", body):
            log(f"sse keep-alive received; dropping port {port}")
            drop(port)
            dropped["sse"] = now()
            break
    time.sleep(1000)

for f in (ws_client, sse_client):
    threading.Thread(target=f, daemon=True).start()
found = {}
last = None
while len(found) < 2 and now() < 300:
    m = metrics()
    if m != last:
        log("metrics", m); last = m
    for k in ("ws", "sse"):
        if k in dropped and k not in found and m[k] == 0:
            found[k] = now()
            log(f"{k}: the server no longer counts it, {found[k] - dropped[k]:.1f} s after the drop")
    time.sleep(0.1)
for k in ("ws", "sse"):
    if k in found:
        print(f"RESULT {k}: dropped at {dropped[k]:.1f} s, gone from the server's count {found[k] - dropped[k]:.1f} s later")
    else:
        print(f"RESULT {k}: not found within 300 s")
