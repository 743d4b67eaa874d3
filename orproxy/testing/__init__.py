"""Test doubles shipped with the package, for orproxy's tests and benchmark and for trying
orproxy without an API key.

  fake_upstream  a fake OpenAI-compatible (and Anthropic) HTTP upstream, a process of its
                 own: ``python -m orproxy.testing.fake_upstream --port 8081``
  ws_upstream    a WebSocket upstream on the ``websockets`` library:
                 ``python -m orproxy.testing.ws_upstream``
  seed_logs      a log directory of made-up exchanges, as the logging server writes them:
                 ``python -m orproxy.testing.seed_logs DIR --count N``

The two upstreams share no code with the proxy: what they check of it they check on the
wire. Nothing in the proxy or the logging server imports this package.
"""
