"""The logging server: ingest of the proxy's streams into files, and (later) index, API and UI."""
