#!/usr/bin/env python3
"""A deliberately misbehaving HTTP(S) server for the fault-matrix tests (tests/lua/test_faults.lua).

API requests (any path outside /_hostile/) take the next queued misbehaviour; with none queued
they get a well-formed RTC success envelope, so a test can show the client still works afterwards.
Python standard library only.

    python3 hostile_server.py [--port 0] [--tls-cert CERT --tls-key KEY] [--exit-with-parent]

Prints one line, "hostile server listening on http(s)://127.0.0.1:PORT", then serves.

Control (plain JSON, no signature):
    POST /_hostile/queue   {"modes": ["trickle", ...]}  -> {"queued": n}
    GET  /_hostile/log                                   -> {"requests": [{"path", "mode", "headers"}...]}
    POST /_hostile/reset                                 -> clears the queue and the log
    POST /_hostile/shutdown

Modes:
    ok                  200, application/json success envelope (also what an empty queue gives)
    trickle             status line and headers one byte a second (never finishes within a timeout)
    redirect            302 to /_hostile/stolen on this server (which records any request reaching it)
    wrong_content_type  200, text/plain, a valid success envelope
    html200             200, text/html, an HTML page (a captive portal or a misrouted proxy)
    truncated           200, application/json, a correct Content-Length for a cut-off JSON text
    non_utf8            200, application/json, a success envelope whose Result holds invalid UTF-8
    error_non_utf8      400, an error envelope whose Code/Message hold CR, LF, ESC and invalid UTF-8
    silent              reads the request and never answers (until the client gives up)
    reset_before_body   status line and headers (Content-Length: 100), then a TCP reset
    reset_at_once       a TCP reset as soon as the request has arrived, nothing sent
    endless             200, chunked, JSON-looking bytes without end
    empty200            200 with an empty body
"""
import argparse
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REQUEST_ID = "20250101000000" + "ab" * 9


def envelope(result=None, error=None, action="KickUser", version="2020-12-01"):
    md = {"RequestId": REQUEST_ID, "Action": action, "Version": version, "Service": "rtc",
          "Region": "cn-north-1"}
    doc = {"ResponseMetadata": md}
    if error:
        md["Error"] = error
    else:
        doc["Result"] = result if result is not None else {"message": "success"}
    return json.dumps(doc).encode()


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.queue = []
        self.log = []
        self.stop = threading.Event()

    def take(self):
        with self.lock:
            return self.queue.pop(0) if self.queue else "ok"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hostile/1"

    def log_message(self, *args):
        pass

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, ctype, body, extra=()):
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _reset(self):
        # SO_LINGER with a zero timeout turns close() into a TCP RST.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        try:
            self.connection.close()
        except OSError:
            pass

    def _control(self):
        st = self.server.state
        path = self.path.split("?")[0]
        if path == "/_hostile/queue":
            modes = json.loads(self._body() or b"{}").get("modes", [])
            with st.lock:
                st.queue.extend(modes)
                n = len(st.queue)
            self._send(200, "application/json", json.dumps({"queued": n}).encode())
        elif path == "/_hostile/log":
            with st.lock:
                doc = {"requests": list(st.log)}
            self._send(200, "application/json", json.dumps(doc).encode())
        elif path == "/_hostile/reset":
            with st.lock:
                st.queue.clear()
                st.log.clear()
            self._send(200, "application/json", b'{"reset": true}')
        elif path == "/_hostile/shutdown":
            self._send(200, "application/json", b'{"shutdown": true}')
            st.stop.set()
        elif path == "/_hostile/stolen":
            with st.lock:
                st.log.append({"path": self.path, "mode": "stolen", "headers": dict(self.headers)})
            self._send(200, "application/json", envelope())
        else:
            self._send(404, "application/json", b'{"error": "unknown control path"}')

    def _api(self):
        st = self.server.state
        self._body()
        mode = st.take()
        with st.lock:
            st.log.append({"path": self.path, "mode": mode, "headers": dict(self.headers)})
        if mode == "ok":
            self._send(200, "application/json", envelope())
        elif mode == "trickle":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            for i in range(len(head)):
                if st.stop.is_set():
                    break
                try:
                    self.wfile.write(head[i:i + 1])
                    self.wfile.flush()
                except OSError:
                    break
                time.sleep(1)
            self.close_connection = True
        elif mode == "redirect":
            host = self.headers.get("Host", "127.0.0.1")
            self._send(302, "application/json", b"", [("Location", "http://%s/_hostile/stolen" % host)])
        elif mode == "wrong_content_type":
            self._send(200, "text/plain; charset=utf-8", envelope())
        elif mode == "html200":
            self._send(200, "text/html", b"<html><body>Please log in to continue</body></html>")
        elif mode == "truncated":
            body = envelope()
            self._send(200, "application/json", body[: len(body) // 2])
        elif mode == "non_utf8":
            body = envelope(result={"message": "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"ok\xff\xfe\xc3(")
            self._send(200, "application/json", body)
        elif mode == "error_non_utf8":
            # JSON escapes \r \n \u001b decode to real CR, LF and ESC; \xff\xfe are raw invalid bytes.
            body = (b'{"ResponseMetadata": {"RequestId": "' + REQUEST_ID.encode() + b'", "Error": {"Code": '
                    b'"Bad\\r\\nCode", "Message": "line1\\r\\nX-Injected: 1 \\u001b[31m red \xff\xfe"}}}')
            self._send(400, "application/json", body)
        elif mode == "silent":
            while not st.stop.is_set():
                try:
                    self.connection.settimeout(0.2)
                    if self.connection.recv(1) == b"":
                        break
                except socket.timeout:
                    continue
                except OSError:
                    break
            self.close_connection = True
        elif mode == "reset_before_body":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
            self.wfile.flush()
            time.sleep(0.05)
            self._reset()
        elif mode == "reset_at_once":
            self._reset()
        elif mode == "endless":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b'{"Padding": "' + b"x" * 65536 + b'"},'
            try:
                self.wfile.write(b"%x\r\n[\r\n" % 1)
                while not st.stop.is_set():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass
            self.close_connection = True
        elif mode == "empty200":
            self._send(200, "application/json", b"")
        else:
            self._send(500, "text/plain", ("unknown mode %s" % mode).encode())

    def _dispatch(self):
        if self.path.startswith("/_hostile/"):
            self._control()
        else:
            self._api()

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--exit-with-parent", action="store_true")
    args = ap.parse_args()

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.state = State()
    scheme = "http"
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    port = server.server_address[1]
    print("hostile server listening on %s://%s:%d" % (scheme, args.host, port), flush=True)

    if args.exit_with_parent:
        parent = os.getppid()

        def watch():
            while os.getppid() == parent and not server.state.stop.is_set():
                time.sleep(0.2)
            server.state.stop.set()
        threading.Thread(target=watch, daemon=True).start()

    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.state.stop.wait()
    server.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
