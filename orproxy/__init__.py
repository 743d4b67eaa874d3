"""orproxy: a logging reverse proxy for LLM APIs, on gevent."""
__version__ = "0.1.0"
