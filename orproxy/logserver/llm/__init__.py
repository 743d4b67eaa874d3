"""Understanding logged LLM traffic: HTTP files and SSE read back, bodies decoded and
classified, streamed answers assembled, and the LLM fields derived from them.

Pure functions over bytes and parsed values: no files are found, no index is written here
(the store hands in what it read).
"""
