"""The log store: each exchange's bodies and metadata document (the source of truth), in the
log dir's files or in an object store's segments and PostgreSQL, and the index built from
those documents (SQLite in the log dir, or PostgreSQL).

Nothing here speaks HTTP to browsers or knows an LLM API: bodies are understood by
`orproxy.logserver.llm`, and served by `web` and `live`.
"""
