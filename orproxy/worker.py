"""`gunicorn -k orproxy.worker.GeventWorker`: the public name of orproxy's gunicorn worker
(hosting/gunicorn.py). It imports nothing of orproxy but the worker: gunicorn loads it in
its master, before monkey-patching."""
from orproxy.hosting.gunicorn import GeventWorker

__all__ = ["GeventWorker"]
