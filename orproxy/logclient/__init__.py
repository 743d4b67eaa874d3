"""The log client: what the proxy sends to the logging server, and how, without ever
slowing, failing or altering the traffic it logs (CONTRACT.md, "Logging stream").

  exchange_log  ExchangeLog: one exchange's request and response parts and its metadata
  tee           one block stream, two consumers: the traffic, and a log part
  part          Part: one part's log data at offsets, in memory or spilled to the spool
  sink          LogSink: opens parts; the budget, the spool and the state they share
  sender        one greenlet, one connection: batches to orlogserver, plain PUTs elsewhere
  spool         the write-ahead log on disk for what the logging server cannot take yet
  budget        Budget: the memory the whole process may hold for log data not yet sent
"""
