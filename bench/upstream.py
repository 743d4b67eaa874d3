"""The benchmark's upstream: tests/fake_upstream.py as it is, but listening with a backlog of
4,096 connections instead of gevent's default 128.

With 128, a proxy that opens upstream connections faster than the fake upstream accepts
them (scenario streams10k: hundreds per second) overflows its listen queue, and each dropped
connection waits for the SYN retry (1, 3, 7, 15 s): that would be charged to the proxy.
The proxy's own listen queue is left as the proxy sets it.

    python bench/upstream.py [--host H] [--port P]     (same options and output)
"""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

import gevent.pywsgi  # noqa: E402

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
gevent.pywsgi.WSGIServer.backlog = BACKLOG

import fake_upstream  # noqa: E402

if __name__ == "__main__":
    sys.exit(fake_upstream.main())
