"""What the UI watches as it happens: the live feed of changed rows (WebSocket and SSE) and
the live tail of one response being written."""
