"""The original Go program's two ends of the logging stream, as the tests need them.

Its source is not ours to ship, so these stand in for it, written from what it does on
the wire (its `cmd/logging-server.go` and `streamToLoggingServer` in `main.go`, in the
version the seed document describes):

- its logging server takes only `PUT /{id}/request|response` (any other method: 405 "Only
  PUT method allowed"; another path: 400), writes each body to a new file
  `logs/<time>_<id[:8]>_<kind>.bin` named by its arrival, and answers 201 with
  "Logged N bytes to <file>"; it knows nothing of metadata, batches or offsets;
- its proxy streams each part as a chunked PUT with Go's client headers, the part's
  header lines, a blank line and the body, and sends no metadata.

Run as a script, this is that logging server:

    python tests/go_peers.py --port 0 --dir DIR     # prints "listening on http://H:P"
"""
import argparse
import os
import socket
import sys
import time

from gevent import monkey

if __name__ == "__main__":
    monkey.patch_all()

GO_HEADERS = [("User-Agent", "Go-http-client/1.1"), ("Transfer-Encoding", "chunked"),
              ("Content-Type", "application/octet-stream"), ("Accept-Encoding", "gzip")]


def go_logging_server(directory):
    """The WSGI app of the Go program's logging server, writing under `directory`/logs."""
    logs = os.path.join(directory, "logs")
    os.makedirs(logs, exist_ok=True)

    def text(start_response, status, message):
        body = message.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("X-Content-Type-Options", "nosniff"), ("Content-Length", str(len(body)))])
        return [body]

    def app(environ, start_response):
        if environ["REQUEST_METHOD"] != "PUT":
            return text(start_response, "405 Method Not Allowed", "Only PUT method allowed\n")
        parts = environ.get("PATH_INFO", "/").strip("/").split("/")
        if len(parts) != 2:
            return text(start_response, "400 Bad Request",
                        "Invalid path format. Expected /{requestID}/{request|response}\n")
        request_id, kind = parts
        if kind not in ("request", "response"):
            return text(start_response, "400 Bad Request", "Stream type must be 'request' or 'response'\n")
        now = time.time()
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now)) + ".%03d" % (int(now * 1000) % 1000)
        name = os.path.join("logs", "%s_%s_%s.bin" % (stamp, request_id[:8], kind))
        written = 0
        with open(os.path.join(directory, name), "wb") as f:
            while True:
                block = environ["wsgi.input"].read(65536)
                if not block:
                    break
                f.write(block)
                written += len(block)
        return text(start_response, "201 Created", "Logged %d bytes to %s\n" % (written, name))
    return app


def go_proxy_put(server_url, request_id, kind, header_lines, body, chunk=4096):
    """What the Go proxy sends for one part: a chunked PUT of the header lines, a blank
    line and the body; returns the status of the answer."""
    host, port = server_url.split("//", 1)[1].rsplit(":", 1)
    payload = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in header_lines) + b"\r\n" + body
    head = "PUT /%s/%s HTTP/1.1\r\nHost: %s:%s\r\n%s\r\n" % (
        request_id, kind, host, port, "".join("%s: %s\r\n" % h for h in GO_HEADERS))
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        for at in range(0, len(payload), chunk):
            piece = payload[at:at + chunk]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1])


def main():
    from gevent.pywsgi import WSGIServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    server = WSGIServer((args.host, args.port), go_logging_server(args.dir), log=None)
    server.init_socket()
    print("go logging server listening on http://%s:%d" % server.socket.getsockname()[:2], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
