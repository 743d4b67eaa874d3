"""A gunicorn worker that serves the proxy as the `orproxy` command does.

    ORPROXY_CONFIG=config.yaml gunicorn -k orproxy.worker.GeventWorker -w 2 'orproxy.wsgi:proxy_app()'

gunicorn's own `-k gevent` worker parses each request and writes each response in its own
Python code. Pinned to one core with its logging server, it served 1,200-1,500 requests/s
where the `orproxy` command serves 2,300. This worker keeps gunicorn's process management
(workers, restarts, graceful stop, TLS) and hands each connection to gevent's pywsgi with
serving.RawRequestHandler, as the `orproxy` command does: 1,800-2,240 requests/s on that
core. It behaves as the `orproxy` command (header names as sent, a JSON 400 for a malformed
request) rather than as `-k gevent`.
"""
from gunicorn.workers.ggevent import GeventPyWSGIWorker

from orproxy.serving import GracefulWSGIServer, RawRequestHandler


class GeventWorker(GeventPyWSGIWorker):
    server_class = GracefulWSGIServer
    wsgi_handler = RawRequestHandler
