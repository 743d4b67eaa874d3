// The request list: one table row per exchange, newest first, updated in place by the
// live feed; the selection and its keyboard movement live here too.

import { h, fill, stepped } from "./dom.js";
import * as fmt from "./format.js";

const older = (a, b) => a.started_at < b.started_at || (a.started_at === b.started_at && a.id < b.id);

function statusCell(row) {
  const cls = fmt.statusClass(row);
  let text;
  if (row.state === "in_flight") text = row.status ? String(row.status) : "…";
  else if (row.error && (!row.status || row.error !== "upstream_broken")) text = row.status ? `${row.status} ${row.error}` : row.error;
  else text = row.status ? String(row.status) : (row.state === "incomplete" ? "broken" : fmt.NONE);
  return h("td.c-status", h(`span.status.${cls}`, { title: row.error_message || row.error || "" }, text));
}

function timeParts(t) {
  const [main, ms] = fmt.clockParts(t);
  return [main, ms ? h("span.ms", ms) : null];
}

/** Where the search matched (`snippet`: [{text, match}]), the matches in <mark>. */
export function snippetView(snippet) {
  return h("span.snippet", { "data-testid": "snippet" },
    snippet.map((piece) => (piece.match ? h("mark", piece.text) : piece.text)));
}

/** A link to the row's conversation; a click filters on it (app.js) rather than open the row. */
function conversationLink(row) {
  const turn = row.previous_id ? "a later turn" : "its first turn";
  return h("a.row-scope", {
    href: `?conversation_id=${encodeURIComponent(row.conversation_id)}`,
    dataset: { scope: "conversation_id", value: row.conversation_id },
    title: `Open the conversation (this is ${turn})`, "aria-label": "Open the conversation",
  }, row.previous_id ? "⤷" : "◆");
}

function cells(row, now) {
  const inFlight = row.state === "in_flight";
  const elapsed = inFlight && typeof row.started_at === "number" ? Math.max(0, now - row.started_at * 1000) : null;
  const model = row.model || "";
  const tokTitle = [
    row.prompt_tokens != null ? `prompt ${row.prompt_tokens}` : "",
    row.cached_tokens ? `cached ${row.cached_tokens}` : "",
    row.completion_tokens != null ? `completion ${row.completion_tokens}` : "",
    row.reasoning_tokens ? `reasoning ${row.reasoning_tokens}` : "",
    row.tokens_per_s ? `${row.tokens_per_s} tok/s` : "",
  ].filter(Boolean).join(", ");
  return [
    h("td.c-state", h(`span.dot.${fmt.statusClass(row)}`, { title: row.state.replace("_", " ") })),
    h("td.c-time", { title: fmt.fullTime(row.started_at) }, ...timeParts(row.started_at)),
    h("td.c-method", row.method || ""),
    h("td.c-path", { title: row.path || "" },
      row.conversation_id ? conversationLink(row) : null,
      h("span.path", row.path || ""),
      row.snippet ? snippetView(row.snippet)
        : row.prompt_preview ? h("span.preview", row.prompt_preview) : null),
    h("td.c-route", row.route || ""),
    h("td.c-model", { title: row.model_requested && row.model_answered && row.model_requested !== row.model_answered
      ? `${row.model_requested} → ${row.model_answered}` : model }, model,
      row.tool_calls && row.tool_calls.length ? h("span.tools", { title: row.tool_calls.join(", ") }, ` ⚙${row.tool_calls.length}`) : null),
    statusCell(row),
    h("td.c-dur.num", inFlight ? h("span.elapsed", elapsed === null ? "…" : `${fmt.duration(elapsed)}…`)
      : fmt.duration(row.duration_ms)),
    h("td.c-ttft.num", fmt.duration(row.ttft_ms)),
    h("td.c-tok.num", { title: tokTitle }, fmt.tokens(row)),
    h("td.c-cost.num", fmt.costView(row.cost, row.cost_source)),
    h("td.c-size.num", { title: `request ${fmt.bytes(row.request_bytes)}, response ${fmt.bytes(row.response_bytes)}` },
      fmt.bytes(row.response_bytes ?? row.stored_bytes)),
  ];
}

export class RequestList {
  /** onOpen(id): Enter or a click; onSelect(id): the selection moved; onScope(name,
   * value): a conversation link was clicked (filter on it). */
  constructor(table, { onOpen, onSelect, onScope }) {
    this.table = table;
    this.body = table.tBodies[0];
    this.onOpen = onOpen;
    this.onSelect = onSelect;
    this.rows = new Map();   // id -> {row, tr}
    this.selected = null;
    this.hasMore = false;
    this.clockOffset = 0;    // server time - browser time, ms
    this.emptyText = "No requests yet.";
    this.body.addEventListener("click", (e) => {
      const scope = e.target.closest("[data-scope]");
      if (scope && onScope) {
        e.preventDefault();
        onScope(scope.dataset.scope, scope.dataset.value);
        return;
      }
      const tr = e.target.closest("tr[data-id]");
      if (!tr) return;
      this.select(tr.dataset.id, { scroll: false });
      this.onOpen(tr.dataset.id);
    });
  }

  now() { return Date.now() + this.clockOffset; }

  _tr(row) {
    const tr = h(`tr.row${row.state === "in_flight" ? ".in-flight" : ""}`, { dataset: { id: row.id } },
      cells(row, this.now()));
    if (row.id === this.selected) tr.classList.add("selected");
    return tr;
  }

  _empty() {
    if (this.rows.size) {
      this.body.querySelector("tr.empty")?.remove();
    } else if (!this.body.querySelector("tr.empty")) {
      this.body.append(h("tr.empty", h("td", { colspan: "12" }, this.emptyText)));
    }
  }

  /** Replace everything (a new filter, a reload). */
  setRows(items, hasMore) {
    this.rows.clear();
    fill(this.body);
    this.appendRows(items, hasMore);
  }

  /** The next page, older than everything shown. */
  appendRows(items, hasMore) {
    this.hasMore = hasMore;
    const frag = document.createDocumentFragment();
    for (const row of items) {
      if (this.rows.has(row.id)) continue;
      const tr = this._tr(row);
      this.rows.set(row.id, { row, tr });
      frag.append(tr);
    }
    this.body.append(frag);
    this._empty();
  }

  /** A row from the live feed: update it in place, or insert it where it belongs. */
  upsert(row) {
    const known = this.rows.get(row.id);
    if (known) {
      if ((known.row.seq ?? 0) > (row.seq ?? 0)) return; // an older change arriving late
      if (!row.snippet && known.row.snippet) row = { ...row, snippet: known.row.snippet }; // the feed has none
      const tr = this._tr(row);
      known.tr.replaceWith(tr);
      this.rows.set(row.id, { row, tr });
      return;
    }
    let before = null;
    for (const { row: other, tr } of this.rows.values()) {
      if (older(other, row) && (!before || older(before.row, other))) before = { row: other, tr };
    }
    if (!before && this.hasMore) return; // older than the loaded pages: it shows when scrolled to
    const tr = this._tr(row);
    tr.classList.add("fresh");
    setTimeout(() => tr.classList.remove("fresh"), 1500);
    this.rows.set(row.id, { row, tr });
    if (before) this.body.insertBefore(tr, before.tr);
    else this.body.append(tr);
    this._empty();
  }

  /** Keep at most `max` rows on screen, dropping the oldest; true if any went. */
  trim(max) {
    const trs = this.body.querySelectorAll("tr[data-id]");
    for (let i = max; i < trs.length; i++) {
      if (trs[i].dataset.id === this.selected) continue;
      this.rows.delete(trs[i].dataset.id);
      trs[i].remove();
    }
    if (trs.length > max) this.hasMore = true;
    return trs.length > max;
  }

  remove(id) {
    const known = this.rows.get(id);
    if (!known) return;
    known.tr.remove();
    this.rows.delete(id);
    this._empty();
  }

  get(id) { return this.rows.get(id)?.row; }

  /** Visible row ids in order. */
  ids() { return [...this.body.querySelectorAll("tr[data-id]")].map((tr) => tr.dataset.id); }

  select(id, { scroll = true } = {}) {
    if (this.selected) this.rows.get(this.selected)?.tr.classList.remove("selected");
    this.selected = id;
    const known = id ? this.rows.get(id) : null;
    if (known) {
      known.tr.classList.add("selected");
      if (scroll) known.tr.scrollIntoView({ block: "nearest" });
    }
  }

  /** Move the selection by `step` rows (j/k, arrows); returns the new id. */
  move(step) {
    const id = stepped(this.ids(), this.selected, step);
    if (id === null) return null;
    this.select(id);
    this.onSelect(id);
    return id;
  }

  /** Refresh the running durations of exchanges in flight. */
  tick() {
    const now = this.now();
    for (const { row, tr } of this.rows.values()) {
      if (row.state !== "in_flight" || typeof row.started_at !== "number") continue;
      const span = tr.querySelector(".elapsed");
      if (span) span.textContent = `${fmt.duration(Math.max(0, now - row.started_at * 1000))}…`;
    }
  }
}
