"""A gunicorn worker that serves orproxy's apps as the `orproxy` and `orlogserver` commands do.

    ORPROXY_CONFIG=config.yaml gunicorn -k orproxy.worker.GeventWorker -w 2 'orproxy.wsgi:proxy_app()'

gunicorn's own `-k gevent` worker parses each request and writes each response in its own
Python code. Pinned to one core with its logging server, it served 1,200-1,500 requests/s
where the `orproxy` command serves 2,300. This worker keeps gunicorn's process management
(workers, restarts, graceful stop, TLS) and hands each connection to gevent's pywsgi with
the app's own request handler from serving.py, as the commands do: 1,800-2,400 requests/s
on that core. The proxy then behaves as the `orproxy` command (header names as sent, a JSON
400 for a malformed request), the logging server as `orlogserver` (pipelined PUTs batched).
"""
from __future__ import annotations

from gunicorn.workers.ggevent import GeventPyWSGIWorker

from orproxy.serving import GracefulWSGIServer, RawRequestHandler


class GeventWorker(GeventPyWSGIWorker):
    server_class = GracefulWSGIServer

    @property
    def wsgi_handler(self) -> type[RawRequestHandler]:
        """The handler the app asks for (orproxy.wsgi), read once the worker has loaded it."""
        return getattr(self.wsgi, "handler_class", RawRequestHandler)
