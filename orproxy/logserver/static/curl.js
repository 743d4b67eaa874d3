// "Copy as curl": the logged request as a command that sends it again through the proxy.
//
// Secrets stay masked as they were stored (Authorization: Bearer ****abcd): the log never
// had them, and the user puts their own key back in. Headers that curl sets by itself or
// that the proxy added for the log (Host, Content-Length, X-Proxy-Path) are left out.

const SKIP = new Set(["host", "content-length", "transfer-encoding", "connection", "x-proxy-path",
  "keep-alive", "te", "trailer", "upgrade", "expect"]);

/** POSIX shell single quotes: the only character to escape is ' itself. */
export function shellQuote(text) {
  return `'${String(text).replace(/'/g, `'\\''`)}'`;
}

/**
 * view: the `request` of GET /api/requests/{id}/exchange; row: the exchange's list item.
 * Returns the curl command line.
 */
export function curlCommand(view, row) {
  const headers = view.headers || [];
  const called = headers.find(([n]) => n.toLowerCase() === "x-proxy-path");
  const host = headers.find(([n]) => n.toLowerCase() === "host");
  let url = called ? called[1] : `http://${host ? host[1] : "localhost"}${view.target || row.path || "/"}`;
  if (url.startsWith("ws://") || url.startsWith("wss://")) url = url.replace(/^ws/, "http");
  const method = view.method || row.method || "GET";
  const lines = [`curl ${shellQuote(url)}`];
  if (method !== "GET" || (view.body && view.body.size)) lines.push(`-X ${method}`);
  const body = view.body || {};
  for (const [name, value] of headers) {
    if (SKIP.has(name.toLowerCase())) continue;
    if (name.toLowerCase() === "content-encoding" && body.encoding && !body.decode_error) continue; // sent decoded
    lines.push(`-H ${shellQuote(`${name}: ${value}`)}`);
  }
  if (body.kind === "json" && body.json !== undefined) {
    lines.push(`--data-raw ${shellQuote(JSON.stringify(body.json))}`);
  } else if (typeof body.text === "string" && body.text) {
    lines.push(`--data-raw ${shellQuote(body.text)}`);
  } else if (body.size) {
    lines.push(`--data-binary @request-body.bin  # binary body: download the raw request`);
  }
  if (row && (row.streamed || row.stream)) lines.splice(1, 0, "-N");
  return lines.join(" \\\n  ");
}
