"""The log client: what the proxy sends to the logging server, and how, without ever
slowing, failing or altering the traffic it logs (CONTRACT.md, "Logging stream").

  exchange_log  ExchangeLog: one exchange's request and response streams and its metadata
  tee           one block stream, two consumers: the traffic, and a log stream
  stream        LogStream: one part's log data, queued within its budgets, never blocking
  sink          LogSink: opens streams, starts them, and the policy for a failing server
  lane          complete parts as pipelined PUTs on one connection
  budget        Budget: the memory the whole process may hold for log data not yet sent
"""
