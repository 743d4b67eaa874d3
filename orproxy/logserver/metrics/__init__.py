"""`GET /metrics`: the logged exchanges in Prometheus' text format, summed over every worker
process (files.py: the shared values; counting.py: what is counted, once, and when)."""
