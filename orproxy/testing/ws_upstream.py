"""A WebSocket upstream for orproxy's tests and the benchmark's websocket scenario.

A real process speaking RFC 6455 through the `websockets` library (asyncio), so that the
proxy is tested against an implementation that is not its own. Endpoints match on the path
*suffix*, so they answer under any route prefix. Run it as

    python -m orproxy.testing.ws_upstream [--host H] [--port P] [--certfile F --keyfile K]

It prints ``ws upstream listening on http://H:PORT`` (``https`` with TLS) once listening and
exits 0 on SIGTERM/SIGINT. Every endpoint accepts permessage-deflate when the client offers
it, and picks the first subprotocol the client offers.

  .../echo                 every message back as it came (text or binary); the library
                           answers pings
  .../push?n=N             N text messages "push 0".. "push N-1" sent at once, then echo
  .../close?code=C&reason=R  closes with C and R after the first message it receives
  .../ping?payload=P       sends a ping with P, waits for the pong, then sends "pong P"
  .../headers              one text message: JSON {"target", "headers": [[name, value]...]}
                           of the handshake as it arrived, then echo
  .../realtime             like .../headers, but as a Realtime "session.created" event
                           with the handshake under "handshake", then echo
  .../refuse               refuses the handshake: 401, a JSON body, WWW-Authenticate
  .../drop                 drops the TCP connection (no close frame) on the first message
  .../source?n=N           answers each message with one binary message of N bytes (bench)
  .../sink                 answers each message with its length as text (bench)
  GET /__stats             plain HTTP JSON: {"open", "total", "closes": [[code, reason]...]}
  GET /__reset             zeroes "total" and "closes"
"""
import argparse
import asyncio
import json
import signal
import ssl
from http import HTTPStatus
from urllib.parse import parse_qsl

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

STATS = {"open": 0, "total": 0, "closes": []}


def _query(path):
    target, _, query = path.partition("?")
    return target, dict(parse_qsl(query))


async def _echo(ws):
    async for message in ws:
        await ws.send(message)


async def handler(ws):
    STATS["open"] += 1
    STATS["total"] += 1
    target, query = _query(ws.request.path)
    try:
        if target.endswith("/push"):
            for i in range(int(query.get("n", "3"))):
                await ws.send("push %d" % i)
            await _echo(ws)
        elif target.endswith("/close"):
            await ws.recv()
            await ws.close(int(query.get("code", "1000")), query.get("reason", ""))
        elif target.endswith("/ping"):
            payload = query.get("payload", "hi").encode()
            await (await ws.ping(payload))
            await ws.send("pong " + payload.decode())
            await _echo(ws)
        elif target.endswith("/realtime"):  # as OpenAI's Realtime API opens a session
            await ws.send(json.dumps({"type": "session.created", "event_id": "event_1", "session": {},
                                      "handshake": {"target": ws.request.path,
                                                    "headers": list(ws.request.headers.raw_items())}}))
            await _echo(ws)
        elif target.endswith("/headers"):
            await ws.send(json.dumps({"target": ws.request.path,
                                      "headers": list(ws.request.headers.raw_items())}))
            await _echo(ws)
        elif target.endswith("/drop"):
            await ws.recv()
            ws.transport.abort()
        elif target.endswith("/source"):
            size = int(query.get("n", "1024"))
            data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
            async for _ in ws:
                await ws.send(data)
        elif target.endswith("/sink"):
            async for message in ws:
                await ws.send(str(len(message)))
        else:
            await _echo(ws)
    except ConnectionClosed:
        pass
    finally:
        STATS["open"] -= 1
        received = ws.protocol.close_rcvd
        if received is not None:
            STATS["closes"].append([received.code, received.reason])
        else:
            STATS["closes"].append([None, None])


def process_request(connection, request):
    target, _ = _query(request.path)
    if target == "/__stats":
        return _json_response(HTTPStatus.OK, STATS)
    if target == "/__reset":
        STATS["total"] = STATS["open"]
        STATS["closes"] = []
        return _json_response(HTTPStatus.OK, STATS)
    if target.endswith("/refuse"):
        response = _json_response(HTTPStatus.UNAUTHORIZED,
                                  {"error": {"message": "bad key", "code": "invalid_api_key"}})
        response.headers["WWW-Authenticate"] = 'Bearer realm="ws"'
        return response
    return None


def _json_response(status, document):
    body = json.dumps(document).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


def select_subprotocol(connection, subprotocols):
    return subprotocols[0] if subprotocols else None


async def main(host, port, certfile=None, keyfile=None):
    context = None
    if certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(handler, host, port, process_request=process_request,
                     select_subprotocol=select_subprotocol, ssl=context, max_size=None,
                     ping_interval=None, server_header=None, compression="deflate") as server:
        bound = server.sockets[0].getsockname()
        print("ws upstream listening on %s://%s:%d" % ("https" if context else "http", *bound[:2]),
              flush=True)
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port, args.certfile, args.keyfile))
