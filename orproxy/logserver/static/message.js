// One HTTP message of an exchange, as GET /api/requests/{id}/exchange gives it: start
// line, headers (secrets masked as stored), body (JSON folded, SSE events, text, binary).

import { h } from "./dom.js";
import { jsonView, textView } from "./jsontree.js";
import * as fmt from "./format.js";

const EVENTS_SHOWN = 1000;

export function headersTable(headers) {
  if (!headers || !headers.length) return h("div.muted", "no headers");
  return h("table.headers",
    h("tbody", headers.map(([name, value]) =>
      h("tr", h("th", name), h("td", value)))));
}

function bodyNotes(body) {
  const notes = [];
  if (body.encoding) notes.push(`Content-Encoding ${body.encoding}, ${fmt.bytes(body.size)} → ${fmt.bytes(body.decoded_size)} decoded`);
  if (body.truncated) notes.push("only the start is shown: download the raw file for all of it");
  if (body.decode_error) notes.push(body.decode_error);
  return notes.map((n) => h("div.note", n));
}

/** The body view; `rawUrl` is offered for binary bodies. */
export function bodyView(body, { rawUrl, label = "Body" } = {}) {
  if (!body || body.kind === "empty" || !body.size) return h("div.muted", "empty body");
  const size = ` · ${fmt.bytes(body.size)}`;
  if (body.kind === "json" && body.json !== undefined) {
    return h("div", bodyNotes(body), jsonView(body.json, { label: `${label} · JSON${size}` }));
  }
  if (body.kind === "sse" || body.kind === "ndjson") {
    const parts = [bodyNotes(body)];
    if (body.assembled) parts.push(jsonView(body.assembled, { label: `Assembled message (from ${fmt.plural((body.events || []).length, "event")})` }));
    parts.push(h("details.raw", h("summary", `Raw stream${size}`), textView(body.text || "", { label: body.kind.toUpperCase() })));
    return h("div", parts);
  }
  if (typeof body.text === "string") return h("div", bodyNotes(body), textView(body.text, { label: `${label} · text${size}` }));
  return h("div", bodyNotes(body), h("div.muted", `binary body${size}`, " ",
    rawUrl ? h("a", { href: rawUrl, download: "" }, "download") : null));
}

/** Start line, headers, body. */
export function messageView(message, { rawUrl, label }) {
  if (!message) return h("div.muted", `no ${label.toLowerCase()} was logged`);
  return h("div.message",
    h("div.start-line", message.start_line || ""),
    h("details.headers-box", { open: true },
      h("summary", `Headers (${(message.headers || []).length})`), headersTable(message.headers)),
    bodyView(message.body, { rawUrl, label: "Body" }));
}

function eventSummary(event) {
  const text = event.data || "";
  return text.length > 240 ? text.slice(0, 239) + "…" : text;
}

const quoted = (s) => JSON.stringify(s.length > 80 ? s.slice(0, 79) + "…" : s);

/** What an LLM stream event says, in a few words: the text it adds, the tool it calls,
 * its usage or finish reason; "" when it is none of these. */
export function eventGist(json) {
  if (!json || typeof json !== "object") return "";
  const choice = Array.isArray(json.choices) ? json.choices[0] : null;
  if (choice && typeof choice === "object") {
    const d = choice.delta || {};
    const bits = [];
    if (typeof d.content === "string" && d.content) bits.push(quoted(d.content));
    if (typeof d.reasoning === "string" && d.reasoning) bits.push(`reasoning ${quoted(d.reasoning)}`);
    for (const call of Array.isArray(d.tool_calls) ? d.tool_calls : []) {
      const fn = (call && call.function) || {};
      bits.push(`tool ${fn.name || ""}${fn.arguments ? " " + quoted(fn.arguments) : ""}`.trim());
    }
    if (d.role && !bits.length) bits.push(`role ${d.role}`);
    if (choice.finish_reason) bits.push(`finish ${choice.finish_reason}`);
    if (json.usage) bits.push(`usage ${json.usage.prompt_tokens ?? "?"} → ${json.usage.completion_tokens ?? "?"}`);
    return bits.join(" · ");
  }
  if (json.usage && Array.isArray(json.choices)) return `usage ${json.usage.prompt_tokens ?? "?"} → ${json.usage.completion_tokens ?? "?"}`;
  if (json.error) return `error ${quoted(String(json.error.message || ""))}`;
  const d = json.delta || {};
  if (typeof d.text === "string") return quoted(d.text);
  if (typeof d.thinking === "string") return `thinking ${quoted(d.thinking)}`;
  if (typeof d.partial_json === "string") return `input ${quoted(d.partial_json)}`;
  if (typeof json.delta === "string") return quoted(json.delta);
  if (d.stop_reason) return `stop ${d.stop_reason}`;
  if (json.content_block && json.content_block.type) return `${json.content_block.type} ${json.content_block.name || ""}`.trim();
  return "";
}

/** The SSE events of a response, one row each; a click opens the event's JSON. */
export function eventsView(body) {
  const events = (body && body.events) || [];
  if (!events.length) return h("div.muted", "no events");
  const rows = events.slice(0, EVENTS_SHOWN).map((event, i) => {
    const name = event.event || (event.json && typeof event.json.type === "string" ? event.json.type : "");
    const line = () => h("span.ev-line", h("span.ev-gist", eventGist(event.json)), " ", h("span.ev-raw", eventSummary(event)));
    const detail = h("td.ev-data", line());
    const tr = h(`tr.ev${event.complete === false ? ".ev-incomplete" : ""}`,
      h("td.num.ev-n", String(i + 1)),
      h("td.ev-name", { title: name }, name || (event.data === "[DONE]" ? "" : "data")),
      detail);
    if (event.json !== null && event.json !== undefined) {
      tr.classList.add("expandable");
      tr.addEventListener("click", () => {
        if (tr.classList.toggle("open")) detail.replaceChildren(jsonView(event.json));
        else detail.replaceChildren(line());
      });
    }
    return tr;
  });
  return h("div.events",
    h("div.view-bar", h("span.view-label", `${fmt.plural(events.length, "event")}${body.events_truncated ? " (more not shown)" : ""}` +
      (body.comments ? `, ${fmt.plural(body.comments, "comment")}` : "")), h("span.spacer"),
      h("span.muted", "click an event to open it")),
    h("table.events-table", h("tbody", rows)),
    events.length > EVENTS_SHOWN ? h("div.note", `the first ${EVENTS_SHOWN} of ${events.length} events are shown`) : null);
}
