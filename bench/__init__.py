"""orproxy benchmark harness: see README.md; run bench/run.py."""
