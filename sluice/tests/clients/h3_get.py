"""HTTP/3 GETs with aioquic: `h3_get.py HOST PORT SNI CAFILE AUTHORITY PATH...`.

Opens one QUIC connection to HOST:PORT (TLS server name SNI, trusting CAFILE), sends a GET
per PATH on it with the given :authority, and prints a JSON list of
{"status", "headers", "body", "alpn"}. Exits 2 when the connection cannot be made.
"""

import asyncio
import json
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters = {}
        self.responses = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if not isinstance(ev, (HeadersReceived, DataReceived)):
                continue
            r = self.responses.setdefault(ev.stream_id, {"headers": [], "body": b""})
            if isinstance(ev, HeadersReceived):
                r["headers"] += ev.headers
            else:
                r["body"] += ev.data
            if ev.stream_ended:
                waiter = self.waiters.pop(ev.stream_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(r)

    async def get(self, authority, path):
        sid = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            sid,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        fut = asyncio.get_running_loop().create_future()
        self.waiters[sid] = fut
        self.transmit()
        return await asyncio.wait_for(fut, 10)


async def main(host, port, sni, cafile, authority, paths):
    cfg = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name=sni, idle_timeout=5.0
    )
    cfg.load_verify_locations(cafile)
    out = []
    async with connect(host, port, configuration=cfg, create_protocol=Client) as c:
        await asyncio.wait_for(c.wait_connected(), 5)
        alpn = c._quic.tls.alpn_negotiated
        for p in paths:
            r = await c.get(authority, p)
            headers = {k.decode(): v.decode() for k, v in r["headers"]}
            out.append(
                {
                    "status": int(headers.get(":status", "0")),
                    "headers": headers,
                    "body": r["body"].decode(errors="replace"),
                    "alpn": alpn,
                }
            )
    print(json.dumps(out))


if __name__ == "__main__":
    host, port, sni, cafile, authority, *paths = sys.argv[1:]
    try:
        asyncio.run(asyncio.wait_for(main(host, int(port), sni, cafile, authority, paths), 20))
    except Exception as e:  # noqa: BLE001 - report any failure to connect or fetch
        print(f"h3_get: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
