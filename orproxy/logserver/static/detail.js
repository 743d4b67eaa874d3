// The detail view of one exchange: a summary, actions (replay, copy as curl, raw downloads),
// and tabs: Conversation, Diff (against the previous turn, diffview.js), Response,
// Request, Events, Metadata. An exchange still in flight is followed live (tail.js): its
// answer and raw body grow as tokens arrive.

import { h, fill, copyText, toast } from "./dom.js";
import * as fmt from "./format.js";
import { exchangeHarUrl, getExchange, getRequest, rawUrl } from "./api.js";
import { jsonView } from "./jsontree.js";
import { headersTable, messageView, eventsView, bodyView } from "./message.js";
import { requestTurns, answerTurns, offeredTools, requestParams, renderTurn, liveAnswer } from "./conversation.js";
import { curlCommand } from "./curl.js";
import { cannotReplay, openReplay } from "./replay.js";
import { followTail } from "./tail.js";
import { fillDiffTab } from "./diffview.js";

/** The tabs keys 1-5 show (app.js); "d" shows the Diff. */
export const TABS = ["conversation", "response", "request", "events", "metadata"];
const ORDER = ["conversation", "diff", "response", "request", "events", "metadata"];
const TAB_NAMES = { conversation: "Conversation", diff: "Diff", response: "Response", request: "Request", events: "Events", metadata: "Metadata" };
const TAB_KEYS = { conversation: "1", diff: "d", response: "2", request: "3", events: "4", metadata: "5" };

function chip(label, value, title) {
  if (value === null || value === undefined || value === "" || value === fmt.NONE) return null;
  return h("span.chip", { title: title || "" }, h("span.chip-label", label), " ", h("span.chip-value", value));
}

export class DetailView {
  constructor(root, { onClose, onOpen, onScope }) {
    this.root = root;
    this.onClose = onClose;
    this.onOpen = onOpen;     // open another exchange (a replay, the exchange it replays)
    this.onScope = onScope;   // filter on a conversation_id or session_id (app.js)
    this.id = null;
    this.row = null;
    this.view = null;
    this.tab = null;          // the tab the user chose last (kept across exchanges)
    this.tail = null;
    this.live = null;
    this.token = 0;
    this.tailDone = null;     // the id whose tail has ended: not followed again
    this.gone = null;         // the id the live feed said was deleted
    this.failed = null;       // the id that could not be loaded (not logged yet)
  }

  get isOpen() { return this.id !== null; }

  close() {
    this._stopTail();
    this.id = this.row = this.view = null;
    this.token++;
    fill(this.root);
  }

  _stopTail() {
    if (this.tail) this.tail.close();
    this.tail = null;
    this.live = null;
  }

  /** Show exchange `id`; `row` (its list item, if known) draws the summary at once. */
  async open(id, row) {
    this._stopTail();
    const token = ++this.token;
    const same = id === this.id && this.view;
    const scroll = same ? this.root.scrollTop : 0;
    if (id !== this.id) this.tailDone = null;
    this.gone = this.failed = null;
    this.id = id;
    this.row = row || null;
    if (!same) {
      this.view = null;
      this.files = {};
      this.metadata = null;
      this._render(true);
    }
    let data;
    let view;
    try {
      [data, view] = await Promise.all([getRequest(id), getExchange(id)]);
    } catch (e) {
      if (token !== this.token) return;
      this.failed = id; // an exchange opened before it was logged (a replay's): loaded once the feed has it
      fill(this.root, h("div.d-error", `Cannot load ${id}: ${e.message}`),
        h("button", { type: "button", onclick: () => this.onClose() }, "Close"));
      return;
    }
    if (token !== this.token) return;
    this.metadata = data.metadata;
    this.files = data.files || {};
    if (!this.row || (data.seq ?? 0) >= (this.row.seq ?? 0)) this.row = data;
    this.view = view;
    this._render(false);
    this.root.scrollTop = scroll;
    if (this.row.state === "in_flight" && this.tailDone !== id) this._startTail(token);
  }

  /** The live feed changed the row: refresh the summary (and the rest, once it ends). */
  update(row) {
    if (row.id !== this.id || (this.row && (this.row.seq ?? 0) > (row.seq ?? 0))) return;
    if (this.failed === row.id) { this.open(row.id, row); return; }
    const wasInFlight = this.row && this.row.state === "in_flight";
    const linked = !(this.row && this.row.previous_id) && row.previous_id; // derived after it ended
    this.row = { ...this.row, ...row };
    const summary = this.root.querySelector(".d-summary");
    if (summary) summary.replaceWith(this._summary());
    if (wasInFlight && row.state !== "in_flight" && !this.tail) this.open(this.id, this.row);
    else if (linked && this.view && !this.tail) this._render(false); // now it has a Diff tab
  }

  /** The live feed says exchange `id` was deleted (here, or by retention): if it is the
   * one shown, stop following it and say so; what is on screen stays readable. */
  deleted(id) {
    if (id !== this.id || this.gone === id) return;
    this.gone = id;
    this._stopTail();
    this.token++; // a load or reload in progress must not replace the notice
    const notice = h("div.d-deleted", { role: "status", "data-testid": "detail-deleted" },
      "This exchange has been deleted: its files are gone.");
    const head = this.root.querySelector(".d-head");
    if (head) head.after(notice);
    else this.root.prepend(notice);
  }

  // -- live tail ----------------------------------------------------------------------

  /** A tail will follow (or is following) this exchange. */
  _following() {
    return !!this.tail || (this.row && this.row.state === "in_flight" && this.tailDone !== this.id);
  }

  /** Run `change` (it appends text); if the view was scrolled to the end, stay there,
   * as `tail -f` does. */
  _follow(change) {
    const root = this.root;
    const atEnd = root.scrollHeight - root.scrollTop - root.clientHeight < 40;
    change();
    if (atEnd) root.scrollTop = root.scrollHeight;
  }

  _startTail(token) {
    const rawBody = h("pre.text-body.live-raw", { "data-testid": "tail-raw" });
    const status = h("div.start-line", "waiting for the response…");
    const headersBox = h("details.headers-box", h("summary", "Headers"), h("div.muted", "not yet"));
    const notes = h("div");
    this.live = liveAnswer();
    this.liveResponse = h("div.message.live-response", status, headersBox, notes,
      h("div.view-bar", h("span.view-label", "Body, as it arrives"), h("span.badge.live-badge", "live")), rawBody);
    this._showLive();
    this.tail = followTail(this.id, {
      onHead: (d) => {
        status.textContent = d.start_line;
        fill(headersBox, h("summary", `Headers (${d.headers.length})`), headersTable(d.headers));
      },
      onBody: (text) => this._follow(() => rawBody.append(text)),
      onDeltas: (deltas) => this._follow(() => { if (this.live) deltas.forEach((d) => this.live.apply(d)); }),
      onNotice: (message) => notes.append(h("div.note", message)),
      onEnd: () => {
        if (token !== this.token) return;
        if (this.live) this.live.end();
        this.tail = null;
        this.tailDone = this.id;
        // The response is complete: show it parsed (events, assembled message).
        setTimeout(() => { if (token === this.token) this.open(this.id, this.row); }, 150);
      },
      onLost: () => {
        if (token !== this.token) return;
        this.tail = null;
        setTimeout(() => { if (token === this.token) this.open(this.id, this.row); }, 1000);
      },
    });
  }

  /** Put the live answer and the live raw body where the parsed ones would go. */
  _showLive() {
    const conv = this.root.querySelector('[data-panel="conversation"] .answer');
    if (conv && this.live) fill(conv, this.live.el);
    const resp = this.root.querySelector('[data-panel="response"]');
    if (resp && this.liveResponse) fill(resp, this.liveResponse);
  }

  // -- rendering ------------------------------------------------------------------------

  _tabs() {
    const view = this.view;
    const req = view && view.request && view.request.body;
    const turns = req && req.kind === "json" ? requestTurns(req.json) : null;
    const events = view && view.response && view.response.body && view.response.body.events;
    const available = {
      conversation: !!turns,
      diff: !!turns, // against the previous turn, or any exchange given
      response: true,
      request: true,
      events: !!(events && events.length) && !this._following(), // partial while it streams
      metadata: true,
    };
    return { available, turns, events };
  }

  _render(loading) {
    const head = h("header.d-head",
      h("div.d-title",
        h("span.d-method", (this.row && this.row.method) || ""),
        h("span.d-path", { title: (this.row && this.row.path) || "" }, (this.row && this.row.path) || this.id),
        h("span.spacer"),
        h("button.icon", { type: "button", title: "Close (Esc)", "aria-label": "Close", onclick: () => this.onClose() }, "✕")),
      this.row ? this._summary() : h("div.d-summary"),
      this._actions());
    if (loading) {
      fill(this.root, head, h("div.d-loading", "Loading…"));
      this.showTab = (name) => { this.tab = name; }; // a tab's key pressed meanwhile: shown once loaded
      return;
    }
    const { available, turns, events } = this._tabs();
    let tab = this.tab && available[this.tab] ? this.tab : (available.conversation ? "conversation" : "response");
    const nav = h("nav.tabs", { role: "tablist" });
    const panels = h("div.d-panels");
    const show = (name) => {
      tab = name;
      for (const b of nav.children) b.setAttribute("aria-selected", String(b.dataset.tab === name));
      for (const p of panels.children) {
        p.hidden = p.dataset.panel !== name;
        if (!p.hidden && p.dataset.lazy) this._fillLazy(p);
      }
    };
    ORDER.forEach((name) => {
      if (!available[name]) return;
      const label = name === "events" ? `${TAB_NAMES[name]} (${events.length})` : TAB_NAMES[name];
      nav.append(h("button.tab", {
        type: "button", role: "tab", dataset: { tab: name }, title: `${TAB_NAMES[name]} (${TAB_KEYS[name]})`,
        onclick: () => { this.tab = name; show(name); },
      }, label));
      if (name === "diff") {
        panels.append(h("section.panel", { dataset: { panel: name, lazy: "diff" }, role: "tabpanel" }));
        return;
      }
      panels.append(h("section.panel", { dataset: { panel: name }, role: "tabpanel" }, this._panel(name, turns)));
    });
    this.showTab = (name) => { if (available[name]) { this.tab = name; show(name); } };
    fill(this.root, h("div.d-sticky", head, nav), panels);
    show(tab);
    if (this.live) this._showLive();
  }

  /** A tab whose content is fetched when first shown (the diff). */
  _fillLazy(panel) {
    delete panel.dataset.lazy;
    const token = this.token;
    fillDiffTab(panel, this.id, { hasPrevious: !!(this.row && this.row.previous_id),
      onOpen: (id) => this.onOpen(id), isCurrent: () => token === this.token });
  }

  _summary() {
    const r = this.row;
    const cls = fmt.statusClass(r);
    const statusText = r.state === "in_flight" ? (r.status ? `${r.status} · in flight` : "in flight")
      : [r.status, r.error].filter(Boolean).join(" ") || r.state;
    const model = r.model_requested && r.model_answered && r.model_requested !== r.model_answered
      ? `${r.model_requested} → ${r.model_answered}` : r.model;
    const tokens = r.prompt_tokens != null || r.completion_tokens != null
      ? `${r.prompt_tokens ?? 0} in${r.cached_tokens ? ` (${r.cached_tokens} cached)` : ""} · ${r.completion_tokens ?? 0} out${r.reasoning_tokens ? ` (${r.reasoning_tokens} reasoning)` : ""}`
      : null;
    return h("div.d-summary",
      h(`span.status.${cls}`, { "data-testid": "detail-status" }, statusText),
      chip("route", r.route),
      chip("model", model),
      chip("provider", r.provider),
      chip("started", fmt.clock(r.started_at), fmt.fullTime(r.started_at)),
      chip("duration", r.state === "in_flight" ? null : fmt.duration(r.duration_ms)),
      chip("TTFT", fmt.duration(r.ttft_ms)),
      chip("tokens", tokens),
      chip("tok/s", r.tokens_per_s != null ? fmt.rate(r.tokens_per_s) : null),
      chip("cost", r.cost != null ? fmt.costView(r.cost, r.cost_source) : null),
      chip("finish", r.finish_reason),
      chip("error", r.error_message, r.error_message),
      r.conversation_id ? h("button.chip", {
        type: "button", "data-testid": "open-conversation",
        title: r.previous_id ? "A later turn of a conversation: show all its turns" : "The first turn of a conversation: show all its turns",
        onclick: () => this.onScope("conversation_id", r.conversation_id),
      }, h("span.chip-label", "conversation"), " ", h("span.chip-value.mono", r.conversation_id.slice(0, 8))) : null,
      r.session_id ? h("button.chip", {
        type: "button", "data-testid": "open-session", title: `Every exchange of client session ${r.session_id}`,
        onclick: () => this.onScope("session_id", r.session_id),
      }, h("span.chip-label", "session"), " ", h("span.chip-value.mono", r.session_id.slice(0, 12))) : null,
      r.replay_of ? h("button.chip", {
        type: "button", title: `A replay of ${r.replay_of}: open it`, "data-testid": "replay-of",
        onclick: () => this.onOpen(r.replay_of),
      }, h("span.chip-label", "replay of"), " ", h("span.chip-value.mono", r.replay_of.slice(0, 8))) : null,
      h("button.chip.chip-id", {
        type: "button", title: "Copy the id (X-Request-Id)",
        onclick: async () => toast(await copyText(r.id) ? "Id copied" : "Copy failed"),
      }, h("span.chip-label", "id"), " ", h("span.chip-value.mono", r.id.slice(0, 8))));
  }

  _actions() {
    const files = this.files || {};
    const unreplayable = this.view ? cannotReplay(this.view) : "Loading…";
    return h("div.d-actions",
      h("button.small", {
        type: "button", title: unreplayable || "Send the request again through the proxy, edited or not, with your key",
        disabled: !!unreplayable, "data-testid": "replay",
        onclick: () => openReplay(this.id, this.view, { onSent: (id) => this.onOpen(id) }),
      }, "Replay"),
      h("button.small", {
        type: "button", title: "Copy the request as a curl command (secrets stay masked)",
        disabled: !this.view || !this.view.request,
        onclick: async () => {
          const text = curlCommand(this.view.request, this.row || {});
          toast(await copyText(text) ? "curl command copied (secrets are masked)" : "Copy failed");
        },
      }, "Copy as curl"),
      h("a.button.small", { href: rawUrl(this.id, "request"), download: files.request ? files.request.name || "" : "",
        class: this.view && !files.request ? "disabled" : null }, "Raw request"),
      h("a.button.small", { href: rawUrl(this.id, "response"), download: files.response ? files.response.name || "" : "",
        class: this.view && !files.response ? "disabled" : null }, "Raw response"),
      h("a.button.small", { href: exchangeHarUrl(this.id), download: `orproxy-${this.id.slice(0, 8)}.har`,
        title: "This exchange as a HAR 1.2 file (secrets stay masked)", "data-testid": "detail-har" }, "Download HAR"),
      h("button.small", {
        type: "button", title: "Copy a link to this view",
        onclick: async () => toast(await copyText(location.href) ? "Link copied" : "Copy failed"),
      }, "Copy link"));
  }

  _panel(name, turns) {
    const view = this.view || {};
    if (name === "conversation") return this._conversation(turns);
    if (name === "response") return messageView(view.response, { rawUrl: rawUrl(this.id, "response"), label: "Response" });
    if (name === "request") return messageView(view.request, { rawUrl: rawUrl(this.id, "request"), label: "Request" });
    if (name === "events") return eventsView(view.response && view.response.body);
    return jsonView(this.metadata || {}, { label: "Metadata file" });
  }

  _conversation(turns) {
    const req = this.view.request.body.json;
    const params = requestParams(req);
    const tools = offeredTools(req);
    const resp = this.view.response && this.view.response.body;
    const answer = resp ? (resp.assembled || (resp.kind === "json" ? resp.json : null)) : null;
    const answers = answerTurns(answer);
    const answerBox = h("div.answer");
    if (answers) answers.forEach((t) => answerBox.append(renderTurn(t, ".is-answer")));
    else if (resp && resp.size) answerBox.append(h("div.turn.role-response.is-answer",
      h("div.turn-head", h("span.turn-role", "response")), bodyView(resp, { rawUrl: rawUrl(this.id, "response") })));
    else if (this.row && this.row.state !== "in_flight") answerBox.append(h("div.muted", "no response"));
    return h("div.conversation",
      params.length ? h("div.params", params.map(([k, v]) => chip(k, v))) : null,
      tools.length ? h("details.tools-offered",
        h("summary", `${fmt.plural(tools.length, "tool")} offered: ${tools.map(([n]) => n).join(", ")}`),
        h("ul", tools.map(([n, d]) => h("li", h("span.tool-name", n), d ? h("span.muted", ` — ${d}`) : null)))) : null,
      turns.map((t) => renderTurn(t)),
      answerBox);
  }
}
