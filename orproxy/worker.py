"""A gunicorn worker that serves orproxy's apps as the `orproxy` and `orlogserver` commands do.

    ORPROXY_CONFIG=config.yaml gunicorn -k orproxy.worker.GeventWorker -w 2 'orproxy.wsgi:proxy_app()'

gunicorn's own `-k gevent` worker parses each request and writes each response in its own
Python code. Pinned to one core with its logging server, it served 1,200-1,500 requests/s
where the `orproxy` command serves 2,300. This worker keeps gunicorn's process management
(workers, restarts, graceful stop, TLS) and hands each connection to gevent's pywsgi with
the app's own request handler from serving.py, as the commands do: 1,800-2,400 requests/s
on that core. The proxy then behaves as the `orproxy` command (header names as sent, a JSON
400 for a malformed request), the logging server as `orlogserver` (pipelined PUTs batched).

gunicorn imports this module in its master, before the worker monkey-patches the stdlib:
orproxy's own modules (which import requests, and with it ssl) load only in the worker.
"""
from __future__ import annotations

from typing import Any

from gunicorn.workers.ggevent import GeventPyWSGIWorker


class GeventWorker(GeventPyWSGIWorker):

    @property
    def server_class(self) -> Any:
        from orproxy.serving import GracefulWSGIServer
        return GracefulWSGIServer

    @property
    def wsgi_handler(self) -> Any:
        """The handler the app asks for (orproxy.wsgi), read once the worker has loaded it."""
        from orproxy.serving import RawRequestHandler
        return getattr(self.wsgi, "handler_class", RawRequestHandler)
