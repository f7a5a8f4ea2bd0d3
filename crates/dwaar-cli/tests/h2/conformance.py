"""HTTP/2 malformed-request cases against an h2c (prior knowledge) port, or an HTTPS
port where `h2` is negotiated with ALPN.

Usage: conformance.py PORT [tls]. Prints one JSON object: case -> what the server did
("reset:<code>", "goaway:<code>", "closed", "status:<n>", "timeout"). Cases follow
RFC 9113 section 8.2 (field validity), 8.1.1 (content-length) and the CONTINUATION and
rapid-reset floods of 2023-2024.
"""
import json
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events

PORT = int(sys.argv[1])
TLS = len(sys.argv) > 2 and sys.argv[2] == "tls"


def connect():
    s = socket.create_connection(("127.0.0.1", PORT), timeout=5)
    if TLS:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        s = ctx.wrap_socket(s, server_hostname="localhost")
        assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
    cfg = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def outcome(s, c, stream_id, wait=3.0):
    """Reads until the stream ends, is reset, or the connection goes away."""
    deadline = time.time() + wait
    status = None
    while time.time() < deadline:
        try:
            s.settimeout(max(0.05, deadline - time.time()))
            data = s.recv(65535)
        except socket.timeout:
            break
        except OSError:
            return "closed"
        if not data:
            return "closed"
        try:
            events = c.receive_data(data)
        except Exception as e:  # the server's bytes made no sense to the client
            return "client-error:" + type(e).__name__
        out = c.data_to_send()
        if out:
            try:
                s.sendall(out)
            except OSError:
                pass
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == stream_id:
                status = dict(ev.headers).get(b":status", b"?").decode()
            if isinstance(ev, h2.events.StreamReset) and ev.stream_id == stream_id:
                return "reset:%s" % ev.error_code.name
            if isinstance(ev, h2.events.ConnectionTerminated):
                return "goaway:%s" % ev.error_code.name
            if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == stream_id:
                return "status:%s" % status
    return "status:%s" % status if status else "timeout"


SCHEME = "https" if TLS else "http"


def base_headers(path="/"):
    return [(":method", "GET"), (":scheme", SCHEME), (":authority", "localhost"), (":path", path)]


def case_headers(headers, end_stream=True, body=None):
    s, c = connect()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers, end_stream=end_stream and body is None)
    if body is not None:
        c.send_data(sid, body, end_stream=True)
    s.sendall(c.data_to_send())
    r = outcome(s, c, sid)
    s.close()
    return r


def frame(ftype, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def continuation_flood():
    s, c = connect()
    # A HEADERS frame without END_HEADERS, then CONTINUATION frames that never end.
    block = c.encoder.encode(base_headers())
    s.sendall(frame(0x1, 0x1, 1, block[:3]))  # END_STREAM, no END_HEADERS
    sent = 0
    try:
        for _ in range(20000):
            s.sendall(frame(0x9, 0x0, 1, b"\x40\x01a\x01b" * 40))
            sent += 1
    except OSError:
        pass
    r = outcome(s, c, 1, wait=2.0)
    s.close()
    return "%s after %d frames" % (r, sent)


def rapid_reset():
    s, c = connect()
    streams = 0
    try:
        for _ in range(3000):
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, base_headers(), end_stream=True)
            c.reset_stream(sid, error_code=8)  # CANCEL
            s.sendall(c.data_to_send())
            streams += 1
    except Exception:
        pass
    r = outcome(s, c, -1, wait=2.0)
    s.close()
    return "%s after %d streams" % (r, streams)


def control_flood(name, one_frame, count=100000):
    """Frames the server must answer (SETTINGS, PING) sent in bulk without reading the
    answers: the server may close or refuse, but must not queue answers without bound."""
    s, c = connect()
    sent = 0
    batch = one_frame * 1000
    try:
        s.settimeout(10)
        for _ in range(count // 1000):
            s.sendall(batch)
            sent += 1000
    except OSError:
        pass
    r = outcome(s, c, -1, wait=2.0)
    s.close()
    return "%s after %d %s frames" % (r, sent, name)


results = {
    "valid request": case_headers(base_headers()),
    "uppercase field name": case_headers(base_headers() + [("X-Upper", "1")]),
    "connection-specific field": case_headers(base_headers() + [("connection", "keep-alive")]),
    "transfer-encoding field": case_headers(base_headers() + [("transfer-encoding", "chunked")]),
    "te other than trailers": case_headers(base_headers() + [("te", "gzip")]),
    "missing :path": case_headers([(":method", "GET"), (":scheme", SCHEME), (":authority", "localhost")]),
    "pseudo field after regular": case_headers([(":method", "GET"), ("x-a", "1"), (":scheme", SCHEME), (":authority", "localhost"), (":path", "/")]),
    "content-length mismatch": case_headers(
        [(":method", "POST"), (":scheme", SCHEME), (":authority", "localhost"), (":path", "/"), ("content-length", "10")],
        body=b"12345",
    ),
    "continuation flood": continuation_flood(),
    "rapid reset": rapid_reset(),
    "settings flood": control_flood("SETTINGS", frame(0x4, 0x0, 0, b"")),
    "ping flood": control_flood("PING", frame(0x6, 0x0, 0, b"12345678")),
}
# The server must still answer afterwards.
results["valid request after the floods"] = case_headers(base_headers())
print(json.dumps(results))
