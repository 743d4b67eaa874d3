"""The logging server (`orlogserver`): the proxy's exchanges written to files as they
stream, indexed, and served to people through a REST API and a UI.

  app.py   the WSGI app: builds the parts, dispatches from the route table
  store/   the body stores (stores.py): the log dir (logdir.py), or an S3-compatible object
           store (objectstore.py: segments.py, objects.py, documents in PostgreSQL), each
           exchange's metadata document and its state
           (record.py), ingest of the proxy's PUTs (ingest.py, batched per connection:
           batching.py), the derived LLM fields (deriving.py), the SQLite index (index.py,
           its columns: schema.py), rebuilding it (reindex.py), retention, and following a
           part file while it grows (follow.py)
  llm/     reading logged HTTP files (httpfile.py) and SSE (sse.py), bodies (bodies.py),
           the derived fields (derive.py), the parsed view (view.py); one module per API
           in apis/, whose registry tells which API a thing is
  web/     the route table (routes.py), the REST API (api.py), its query parameters
           (query.py), statistics, the OpenAPI document, the UI's files, JSON replies, units
  live/    the live feed (feed.py, transports.py), the live tail (tail.py), SSE writing
           (eventstream.py)
  static/  the UI (plain JavaScript, no build step)

One request's way: `PUT /{uuid}/response` reaches app.py, which finds ingest's route in
web/routes.py; store/ingest.py writes the body to its .bin file as it arrives and, when
the part ends, rewrites the metadata document (once per pipelined batch), deriving the
LLM fields there if the exchange is small (store/deriving.py, llm/); its subscribers
get the record written, and the index queues its row (store/index.py, on a thread). The
live feed polls the index for changed rows and pushes them to the UI; the tail follows
the .bin file as it grows.
"""
