"""The hosting edge: the only code that knows gevent's pywsgi and gunicorn.

  incoming  Incoming: the client's request as the wire had it, read from the WSGI environ
  handler   orproxy's pywsgi request handler: raw target and headers, fewer writes
  server    serving an app on gevent: listen, signals, graceful stop, process settings
  gunicorn  the same apps under gunicorn: orproxy's worker class, the factories' wrapper
  app       HostedApp: what a server asks of the app it serves
"""
