"""An independent HTTP/3 client (aioquic) for Dwaar's tests.

Usage: client.py PORT HOST CA_FILE PATH [PATH ...]. Fetches each path over one QUIC
connection and prints a JSON list of {"path", "status", "headers", "body"}.
"""
import asyncio
import json
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiting = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)) and ev.stream_id in self.waiting:
                r = self.waiting[ev.stream_id]
                if isinstance(ev, HeadersReceived):
                    for k, v in ev.headers:
                        r["headers"].append([k.decode(), v.decode()])
                else:
                    r["body"] += ev.data
                if ev.stream_ended:
                    r["done"].set()

    async def get(self, host, path):
        sid = self._quic.get_next_available_stream_id()
        r = {"headers": [], "body": b"", "done": asyncio.Event()}
        self.waiting[sid] = r
        self.h3.send_headers(
            sid,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", host.encode()),
             (b":path", path.encode()), (b"user-agent", b"aioquic-test")],
            end_stream=True,
        )
        self.transmit()
        await asyncio.wait_for(r["done"].wait(), 10)
        status = dict(r["headers"]).get(":status")
        return {"path": path, "status": int(status), "headers": r["headers"],
                "body": r["body"].decode("utf-8", "replace")}


async def main():
    port, host, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host)
    cfg.load_verify_locations(ca)
    cfg.verify_mode = ssl.CERT_REQUIRED
    async with connect("127.0.0.1", port, configuration=cfg, create_protocol=Client) as c:
        out = [await c.get(host, p) for p in sys.argv[4:]]
    print(json.dumps(out))


asyncio.run(main())
