// Following a response while it streams: GET /api/requests/{id}/tail (tail.py) as SSE.
//
// The tail always starts from the beginning of the response, so a broken connection is
// not resumed: EventSource's own reconnect would repeat the text. The caller is told
// (onLost) and starts over with a fresh view instead.

import { tailUrl } from "./api.js";

export function followTail(id, { onHead, onBody, onDeltas, onNotice, onEnd, onLost }) {
  const source = new EventSource(tailUrl(id));
  let done = false;
  const parse = (e) => { try { return JSON.parse(e.data); } catch (_) { return null; } };
  source.addEventListener("head", (e) => { const d = parse(e); if (d) onHead(d); });
  source.addEventListener("body", (e) => { const d = parse(e); if (d) onBody(d.text || ""); });
  source.addEventListener("deltas", (e) => { const d = parse(e); if (Array.isArray(d)) onDeltas(d); });
  source.addEventListener("notice", (e) => { const d = parse(e); if (d) onNotice(d.message || ""); });
  source.addEventListener("end", (e) => {
    done = true;
    source.close();
    onEnd(parse(e) || {});
  });
  source.onerror = () => {
    if (done) return;
    done = true;
    source.close();
    onLost();
  };
  return {
    close() { done = true; source.close(); },
  };
}
