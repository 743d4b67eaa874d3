// The conversation view: the turns of one conversation (GET /api/requests?conversation_id=),
// oldest first, each with its time, model, tokens and cost, and the running totals up to
// it. A turn opens in the detail view, on its Conversation or its Diff tab. The live feed
// (app.js) adds and updates turns as they happen, so the totals grow with the agent run.

import { h, fill, stepped } from "./dom.js";
import * as fmt from "./format.js";
import { harUrl, listRequests } from "./api.js";

const PAGE = 1000;
const MAX_PAGES = 20; // 20,000 turns: more is not a conversation anyone reads

const inOrder = (a, b) => (a.started_at - b.started_at) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

function tokensText(row) {
  if (row.prompt_tokens == null && row.completion_tokens == null) return fmt.NONE;
  const cached = row.cached_tokens ? ` (${fmt.count(row.cached_tokens)} cached)` : "";
  return `${fmt.count(row.prompt_tokens ?? 0)}${cached} → ${fmt.count(row.completion_tokens ?? 0)}`;
}

/** The running total of the turns so far: a sum of the costs known, marked as an
 * estimate when any of them is one. */
class Totals {
  constructor() { this.prompt = 0; this.completion = 0; this.cached = 0; this.cost = 0; this.priced = 0; this.estimated = 0; this.unknown = 0; }

  add(row) {
    this.prompt += row.prompt_tokens || 0;
    this.completion += row.completion_tokens || 0;
    this.cached += row.cached_tokens || 0;
    if (typeof row.cost === "number") {
      this.cost += row.cost;
      this.priced++;
      if (row.cost_source === "price_table") this.estimated++;
    } else if (row.state !== "in_flight") {
      this.unknown++;
    }
  }

  tokens() { return `${fmt.count(this.prompt)} → ${fmt.count(this.completion)}`; }

  costView() {
    if (!this.priced) return h("span", fmt.NONE);
    const notes = [
      this.estimated ? `${fmt.plural(this.estimated, "turn")} ${fmt.ESTIMATED}` : "",
      this.unknown ? `${fmt.plural(this.unknown, "turn")} without a known cost` : "",
    ].filter(Boolean).join("; ");
    return h(this.estimated ? "span.cost-estimated" : "span.cost", { title: notes || "reported by the upstream" },
      fmt.costText(this.cost, this.estimated ? "price_table" : "reported"));
  }
}

export class ConversationView {
  /** onOpen(id, tab): open a turn (tab "diff" for its diff); onClose(): leave the view;
   * onScope(name, value): filter on a session. */
  constructor(root, { onOpen, onClose, onScope }) {
    this.root = root;
    this.onOpen = onOpen;
    this.onClose = onClose;
    this.onScope = onScope;
    this.id = null;
    this.rows = new Map();  // id -> row
    this.trs = new Map();   // id -> tr
    this.selected = null;
    this.token = 0;
    this.head = h("div.conv-head");
    this.body = h("tbody");
    this.message = h("div.conv-message");
    this.table = h("table.requests.turns", { "data-testid": "turns" },
      h("thead", h("tr",
        h("th.t-n.num", "#"), h("th.t-time", "Time"), h("th.t-model", "Model"),
        h("th.t-tok.num", { title: "prompt tokens (cached) → completion tokens" }, "Tokens"),
        h("th.t-cost.num", "Cost"),
        h("th.t-sum-tok.num", { title: "prompt → completion tokens of the turns so far" }, "Σ tokens"),
        h("th.t-sum-cost.num", { title: "the cost of the turns so far" }, "Σ cost"),
        h("th.t-links", ""))),
      this.body);
    this.body.addEventListener("click", (e) => {
      const tr = e.target.closest("tr[data-id]");
      if (!tr) return;
      const link = e.target.closest("[data-tab]");
      if (link) e.preventDefault();
      this.select(tr.dataset.id, { scroll: false });
      this.onOpen(tr.dataset.id, link ? link.dataset.tab : null);
    });
  }

  get isOpen() { return this.id !== null; }

  /** Show conversation `id`: every turn, fetched page by page. */
  async load(id) {
    const token = ++this.token;
    if (id !== this.id) {
      this.rows.clear();
      this.selected = null;
    }
    this.id = id;
    fill(this.root, this.head, this.message, this.table);
    this.message.textContent = "Loading…";
    this._render();
    let cursor = null;
    try {
      for (let page = 0; page < MAX_PAGES; page++) {
        const answer = await listRequests({ conversation_id: id }, cursor, PAGE);
        if (token !== this.token) return;
        answer.items.forEach((row) => this._keep(row));
        cursor = answer.next_cursor;
        if (!answer.has_more || !cursor) break;
      }
    } catch (e) {
      if (token !== this.token) return;
      this.message.textContent = `Cannot load the conversation: ${e.message}`;
      return;
    }
    this.message.textContent = this.rows.size ? "" : "No exchange of this conversation is logged (deleted?).";
    this._render();
  }

  close() {
    this.token++;
    this.id = null;
    this.rows.clear();
    this.trs.clear();
    this.selected = null;
    fill(this.root);
  }

  _keep(row) {
    const known = this.rows.get(row.id);
    if (known && (known.seq ?? 0) > (row.seq ?? 0)) return false;
    this.rows.set(row.id, row);
    return true;
  }

  /** A row from the live feed (it carries this conversation's filter). */
  upsert(row) {
    if (!this.isOpen || row.conversation_id !== this.id) return;
    if (this._keep(row)) {
      this.message.textContent = "";
      this._render();
    }
  }

  remove(id) {
    if (this.rows.delete(id)) this._render();
  }

  /** Every turn again: the running totals of the later ones change with any of them. */
  _render() {
    const turns = [...this.rows.values()].sort(inOrder);
    const totals = new Totals();
    this.trs.clear();
    const frag = document.createDocumentFragment();
    turns.forEach((row, i) => {
      totals.add(row);
      const tr = this._tr(row, i, totals);
      this.trs.set(row.id, tr);
      frag.append(tr);
    });
    fill(this.body, frag);
    this._header(turns, totals);
  }

  _tr(row, i, totals) {
    const tr = h(`tr.row.turn-row${row.state === "in_flight" ? ".in-flight" : ""}${row.id === this.selected ? ".selected" : ""}`,
      { dataset: { id: row.id } },
      h("td.t-n.num", String(i + 1)),
      h("td.t-time", { title: fmt.fullTime(row.started_at) }, fmt.clock(row.started_at)),
      h("td.t-model", { title: row.model || "" }, h(`span.dot.${fmt.statusClass(row)}`), " ", row.model || fmt.NONE),
      h("td.t-tok.num", tokensText(row)),
      h("td.t-cost.num", fmt.costView(row.cost, row.cost_source)),
      h("td.t-sum-tok.num", totals.tokens()),
      h("td.t-sum-cost.num", totals.costView()),
      h("td.t-links",
        h("a", { href: `?conversation_id=${encodeURIComponent(this.id)}&id=${encodeURIComponent(row.id)}`,
          dataset: { tab: "conversation" }, title: "Open this turn's exchange" }, "open"),
        row.previous_id ? h("a", { href: `?conversation_id=${encodeURIComponent(this.id)}&id=${encodeURIComponent(row.id)}`,
          dataset: { tab: "diff" }, title: "What changed since the previous turn" }, "diff") : null));
    return tr;
  }

  _header(turns, totals) {
    const sessions = new Set(turns.map((r) => r.session_id).filter(Boolean));
    const session = sessions.size === 1 ? [...sessions][0] : null;
    fill(this.head,
      h("span.conv-title", "Conversation ", h("span.mono", { title: this.id }, this.id.slice(0, 8))),
      h("span.stat", { "data-testid": "conv-turns" }, h("b", String(turns.length)), turns.length === 1 ? " turn" : " turns"),
      h("span.stat.stat-tokens", { title: `prompt ${totals.prompt} · cached ${totals.cached} · completion ${totals.completion}` },
        h("b", totals.tokens()), " tokens"),
      h("span.stat", { "data-testid": "conv-total" }, h("b", totals.costView())),
      session ? h("button.chip", { type: "button", title: `Every exchange of session ${session}`,
        onclick: () => this.onScope("session_id", session) },
      h("span.chip-label", "session"), " ", h("span.chip-value.mono", session.slice(0, 12))) : null,
      h("span.spacer"),
      h("a.button.small", { href: harUrl({ conversation_id: this.id }), download: `orproxy-conversation-${this.id.slice(0, 8)}.har`,
        title: "The turns of this conversation as a HAR 1.2 file (secrets stay masked)" }, "Download HAR"),
      h("button.small", { type: "button", title: "Back to the list (Esc)", onclick: () => this.onClose() }, "All requests"));
  }

  // -- selection, as the request list has it (app.js's keyboard) ------------------------

  ids() { return [...this.rows.values()].sort(inOrder).map((r) => r.id); }

  get(id) { return this.rows.get(id); }

  select(id, { scroll = true } = {}) {
    if (this.selected) this.trs.get(this.selected)?.classList.remove("selected");
    this.selected = id;
    const tr = id ? this.trs.get(id) : null;
    if (tr) {
      tr.classList.add("selected");
      if (scroll) tr.scrollIntoView({ block: "nearest" });
    }
  }

  move(step) {
    const id = stepped(this.ids(), this.selected, step);
    if (id !== null) this.select(id);
    return id;
  }
}
