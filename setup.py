"""Packaging for orproxy: the proxy, the logging server and their two commands."""
from setuptools import find_packages, setup

setup(
    name="orproxy",
    version="0.1.0",
    description="A logging reverse proxy for LLM APIs, on gevent",
    python_requires=">=3.11",
    packages=find_packages(include=["orproxy", "orproxy.*"]),
    package_data={"orproxy": ["logserver/static/*", "logserver/static/**/*"]},
    install_requires=[
        "gevent>=24.2",
        "requests>=2.32",
        "PyYAML>=6.0",
        "httptools>=0.6",
        "brotli>=1.1",
        "websockets>=13",  # its C unmasking: the WebSocket message log reads client frames fast
        "simple-websocket>=1.0",  # the UI's live feed (/api/live), under pywsgi and gunicorn
        "orjson>=3.9",  # every exchange is JSON several times over: 3-15x the json module (jsoncodec.py)
        "genai-prices>=0.2",  # the price table of every provider, maintained, offline (llm/pricing.py)
        "diff-match-patch>=20230430",  # character diffs of long prompts, bounded in time (llm/diff.py)
        # GET /metrics and the proxy's metrics listener: the text format, its parser (the
        # tests), and mmap values that sum across gunicorn workers, kept by Prometheus' own
        "prometheus-client>=0.20",
    ],
    extras_require={
        "postgresql": ["psycopg[binary]>=3.2"],  # --index postgresql://: green under gevent (store/pgindex.py)
        # --store s3://: obstore's Rust client in a thread pool, the cheapest on the loop (store/objects.py)
        # and boto3 for the multipart uploads of large bodies, which obstore cannot drive part by part
        "s3": ["obstore>=0.12", "boto3>=1.36", "psycopg[binary]>=3.2"],
        "test": [
            "pytest>=8",
            "gunicorn>=23",
            "openai>=1.0",
            "websocket-client>=1.8",
            "wsproto>=1.2",                  # frames encoded independently of the proxy's decoder
            "jsonschema>=4.18",              # the API's answers checked against its OpenAPI document
            "openapi-spec-validator>=0.7",   # the OpenAPI document itself
            "playwright>=1.40",              # the UI in Debian's chromium (never `playwright install`)
            "hypothesis>=6.100",             # property tests of the parsers (tests/test_fuzz.py, make fuzz)
            "h11>=0.14",                     # the in-process wire tests read the proxy's answers with it
            "haralyzer>=2.4",                # a HAR reader of its own reads the HAR export back (tests/test_har.py)
            "moto[server]>=5",               # an S3 server on loopback for the object store's tests (testing/s3.py)
        ],
    },
    entry_points={
        "console_scripts": [
            "orproxy=orproxy.cli:proxy_main",
            "orlogserver=orproxy.cli:logserver_main",
        ],
    },
)
