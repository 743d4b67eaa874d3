"""The log store: the files of each exchange (the source of truth), the metadata document
kept beside them, and the SQLite index built from those documents.

Nothing here speaks HTTP to browsers or knows an LLM API: bodies are understood by
`orproxy.logserver.llm`, and served by `web` and `live`.
"""
