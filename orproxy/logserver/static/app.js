// The logging UI: wires the filters (kept in the URL), the list, the conversation view
// (the list's place while a conversation_id is chosen), the live feed, the detail view
// and the keyboard together. No framework and no build step: ES modules
// served as they are by orlogserver.

import { $, h, fill } from "./dom.js";
import * as fmt from "./format.js";
import { FILTERS, SCOPES, filterParams, harUrl, listRequests, getStats } from "./api.js";
import { RequestList } from "./list.js";
import { ConversationView } from "./turns.js";
import { DetailView, TABS } from "./detail.js";
import { LiveFeed } from "./live.js";

const PAGE = 100;
const MAX_ROWS = 5000;     // a day of live rows: older ones leave the screen (and memory)
const STATS_EVERY_MS = 3000;
const OPEN_DELAY_MS = 120; // j/k with the detail open: open the row once the key rests

const state = { filters: {}, cursor: null, loadToken: 0, loadingMore: false, statsTimer: null, statsAt: 0 };
const form = $("#filters");
const list = new RequestList($("#requests"), { onOpen: (id) => openDetail(id, true), onSelect: selectionMoved, onScope: scopeTo });
const turns = new ConversationView($("#turns"), { onOpen: openTurn, onClose: () => scopeTo("conversation_id", ""), onScope: scopeTo });
const detail = new DetailView($("#detail"), { onClose: () => closeDetail(true), onOpen: (id) => openDetail(id, true), onScope: scopeTo });
const feed = new LiveFeed({ onMessage: liveMessage, onStatus: liveStatus });
const known = { models: new Set(), routes: new Set() };

// -- URL <-> filters ------------------------------------------------------------------

function readUrl() {
  const params = new URLSearchParams(location.search);
  state.filters = {};
  for (const name of FILTERS) state.filters[name] = params.get(name) || "";
  return params.get("id");
}

function writeUrl(push) {
  const params = new URLSearchParams(filterParams(state.filters));
  if (detail.id) params.set("id", detail.id);
  const url = `${location.pathname}${params.toString() ? "?" + params : ""}`;
  if (url === `${location.pathname}${location.search}`) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

function ensureOption(select, value, label) {
  if (!value || [...select.options].some((o) => o.value === value)) return;
  select.append(h("option", { value }, label || value));
}

function showFilters() {
  for (const name of FILTERS) {
    const field = form.elements[name];
    if (!field) continue;
    if (field.tagName === "SELECT") ensureOption(field, state.filters[name]);
    if (field !== document.activeElement) field.value = state.filters[name] || ""; // not under the cursor
    field.classList.remove("invalid");
  }
  const active = FILTERS.some((n) => state.filters[n]);
  $("#clear-filters").hidden = !active;
  $("#download-har").href = harUrl(filterParams(state.filters)); // the list as shown
  showScopes();
}

// -- conversation and session (filters without a field: chips set them) ---------------

const SCOPE_NAMES = { conversation_id: "conversation", session_id: "session" };

/** The scope chips in the filter bar, and the conversation view in the list's place. */
function showScopes() {
  fill($("#scopes"), SCOPES.filter((name) => state.filters[name]).map((name) =>
    h("span.chip.scope", { "data-testid": `scope-${name}` },
      h("span.chip-label", SCOPE_NAMES[name]), " ",
      h("span.chip-value.mono", { title: state.filters[name] }, state.filters[name].slice(0, 12)),
      h("button.chip-clear", { type: "button", title: `Show every ${SCOPE_NAMES[name]}`, "aria-label": `Clear the ${SCOPE_NAMES[name]} filter`,
        onclick: () => scopeTo(name, "") }, "✕"))));
  const conversation = state.filters.conversation_id;
  document.body.classList.toggle("conversation-open", !!conversation);
  if (!conversation) turns.close();
  else if (turns.id !== conversation) turns.load(conversation);
}

/** Show one conversation (its turns alone) or one session (within the other filters);
 * "" leaves it. A new history entry: Back returns to the list as it was. */
function scopeTo(name, value) {
  if (name === "conversation_id" && value) {
    for (const other of FILTERS) state.filters[other] = "";
  }
  if (name === "session_id" && value) state.filters.conversation_id = "";
  state.filters[name] = value || "";
  showFilters();
  writeUrl(true);
  loadList();
}

/** A turn of the conversation view: open it (on tab `tab`, if given). */
function openTurn(id, tab) {
  if (tab) detail.tab = tab;
  if (detail.id === id && detail.showTab) {
    detail.showTab(tab || detail.tab);
    return;
  }
  openDetail(id, true);
}

function readFilters() {
  for (const name of FILTERS) {
    const field = form.elements[name];
    if (field) state.filters[name] = field.value.trim();
  }
}

// -- the list -------------------------------------------------------------------------

async function loadList() {
  const token = ++state.loadToken;
  list.emptyText = "Loading…";
  $("#list-error").hidden = true;
  let page;
  try {
    page = await listRequests(state.filters, null, PAGE);
  } catch (e) {
    if (token !== state.loadToken) return;
    list.emptyText = "";
    list.setRows([], false);
    const error = $("#list-error");
    error.textContent = e.parameter ? `${e.message}` : `Cannot load the list: ${e.message}`;
    error.hidden = false;
    if (e.parameter && form.elements[e.parameter]) form.elements[e.parameter].classList.add("invalid");
    if (!e.status) setTimeout(() => { if (token === state.loadToken) loadList(); }, 2000); // server down
    return;
  }
  if (token !== state.loadToken) return;
  const filtered = FILTERS.some((n) => state.filters[n]);
  list.emptyText = filtered ? "Nothing matches these filters."
    : "No requests yet. Send one through the proxy and it shows up here at once.";
  list.setRows(page.items, page.has_more);
  page.items.forEach((row) => turns.upsert(row)); // the newest turns, should they be newer than its own load
  state.trimmed = false;
  page.items.forEach(learn);
  state.cursor = page.next_cursor;
  if (detail.id) { list.select(detail.id, { scroll: false }); turns.select(detail.id, { scroll: false }); }
  feed.start(filterParams(state.filters), page.max_seq);
  refreshStats(true);
  fillPage();
}

async function loadMore() {
  if (!state.cursor || state.loadingMore) return;
  state.loadingMore = true;
  const token = state.loadToken;
  try {
    const page = await listRequests(state.filters, state.cursor, PAGE);
    if (token !== state.loadToken) return;
    list.appendRows(page.items, page.has_more);
    page.items.forEach(learn);
    state.cursor = page.next_cursor;
  } catch (_) {
    /* the next scroll tries again */
  } finally {
    state.loadingMore = false;
  }
  fillPage();
}

/** Load pages until the list fills the screen (or there is no more). */
function fillPage() {
  const pane = $("#list-pane");
  $("#more").textContent = state.cursor ? "Loading more…"
    : state.trimmed ? `Only the newest ${MAX_ROWS} exchanges stay on screen: filter, or reload to page back.` : "";
  if (state.cursor && pane.scrollHeight <= pane.clientHeight + 200) loadMore();
}

function learn(row) {
  if (row.model && !known.models.has(row.model)) {
    known.models.add(row.model);
    $("#models").append(h("option", { value: row.model }));
  }
  if (row.route && !known.routes.has(row.route)) {
    known.routes.add(row.route);
    ensureOption(form.elements.route, row.route);
  }
}

// -- live feed ------------------------------------------------------------------------

function liveMessage(message) {
  if (message.type === "hello") {
    list.clockOffset = message.time * 1000 - Date.now();
  } else if (message.type === "rows") {
    for (const row of message.items) {
      list.upsert(row);
      turns.upsert(row);
      detail.update(row);
      learn(row);
    }
    for (const id of message.removed) { list.remove(id); turns.remove(id); } // no longer matches, or deleted
    for (const id of message.deleted || []) detail.deleted(id);
    if (list.rows.size > MAX_ROWS && list.trim(MAX_ROWS)) {
      state.cursor = null; // the next page would start after rows no longer shown
      state.trimmed = true;
      fillPage();
    }
    if (detail.id && list.selected !== detail.id) list.select(detail.id, { scroll: false });
    if (detail.id && turns.selected !== detail.id) turns.select(detail.id, { scroll: false });
    refreshStats(false);
  } else if (message.type === "reset") {
    loadList();
  }
}

function liveStatus(status, transport) {
  const box = $("#live-status");
  box.dataset.state = status;
  const label = status === "live" ? (transport === "sse" ? "live (SSE)" : "live")
    : status === "connecting" ? "connecting…" : "reconnecting…";
  box.querySelector(".label").textContent = label;
  box.title = status === "live" ? `Updates arrive as they happen (${transport === "sse" ? "server-sent events" : "WebSocket"})`
    : "The logging server cannot be reached; retrying";
}

// -- stats ----------------------------------------------------------------------------

function refreshStats(now) {
  clearTimeout(state.statsTimer);
  const wait = now ? 0 : Math.max(0, state.statsAt + STATS_EVERY_MS - Date.now());
  state.statsTimer = setTimeout(async () => {
    state.statsAt = Date.now();
    try {
      showStats(await getStats(state.filters));
    } catch (_) { /* shown again on the next change */ }
  }, wait);
}

function showStats(s) {
  const p50 = s.latency_ms && s.latency_ms.p50;
  fill($("#stats"),
    h("span.stat", { title: "exchanges matching the filters" }, h("b", fmt.count(s.count)), " requests"),
    s.in_flight ? h("span.stat.stat-flight", h("b", String(s.in_flight)), " in flight") : null,
    h(`span.stat${s.errors ? ".stat-errors" : ""}`, h("b", fmt.count(s.errors)), " errors"),
    h("span.stat", { title: `prompt ${s.prompt_tokens} · completion ${s.completion_tokens}` },
      h("b", fmt.count(s.prompt_tokens)), " in · ", h("b", fmt.count(s.completion_tokens)), " out tokens"),
    s.cost ? h("span.stat", h("b", fmt.cost(s.cost))) : null,
    p50 != null ? h("span.stat", { title: "median duration" }, "p50 ", h("b", fmt.duration(p50))) : null);
  document.title = s.in_flight ? `(${s.in_flight}) orproxy logs` : "orproxy logs";
}

async function loadOptions() {
  try {
    const s = await getStats({});
    (s.by_model || []).forEach((m) => learn({ model: m.name }));
    (s.by_route || []).forEach((r) => learn({ route: r.name }));
  } catch (_) { /* the list fills them in as rows arrive */ }
}

// -- detail ---------------------------------------------------------------------------

let openTimer = null;

function openDetail(id, push) {
  clearTimeout(openTimer);
  document.body.classList.add("detail-open");
  list.select(id, { scroll: false });
  turns.select(id, { scroll: false });
  detail.open(id, list.get(id) || turns.get(id));
  writeUrl(push);
}

function closeDetail(push) {
  clearTimeout(openTimer);
  detail.close();
  document.body.classList.remove("detail-open");
  writeUrl(push);
  const tr = turns.isOpen ? turns.selected && turns.trs.get(turns.selected) : list.selected && list.rows.get(list.selected)?.tr;
  if (tr) tr.scrollIntoView({ block: "nearest" });
}

/** The rows the keyboard moves over: the conversation's turns, or the list. */
function rowsShown() {
  return turns.isOpen ? turns : list;
}

function moveSelection(step) {
  const id = rowsShown().move(step);
  if (turns.isOpen && id) selectionMoved(id); // the list calls it itself
}

function selectionMoved(id) {
  if (!detail.isOpen) return;
  clearTimeout(openTimer);
  openTimer = setTimeout(() => openDetail(id, false), OPEN_DELAY_MS);
}

// -- keyboard -------------------------------------------------------------------------

function typing(target) {
  return target && (target.tagName === "INPUT" || target.tagName === "SELECT" || target.tagName === "TEXTAREA");
}

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (typing(e.target)) {
    if (e.key === "Escape") e.target.blur();
    else if (e.key === "ArrowDown" && e.target.tagName === "INPUT") { e.target.blur(); moveSelection(1); e.preventDefault(); }
    return;
  }
  if ((e.key === "Enter" || e.key === " ") && e.target.closest && e.target.closest("button, a, summary")) return;
  const help = $("#help");
  switch (e.key) {
    case "j": case "ArrowDown": moveSelection(1); break;
    case "k": case "ArrowUp": moveSelection(-1); break;
    case "Enter": case "o":
      if (rowsShown().selected) openDetail(rowsShown().selected, !detail.isOpen);
      break;
    case "Escape":
      if (!help.hidden) help.hidden = true;
      else if (detail.isOpen) closeDetail(true);
      else if (turns.isOpen) scopeTo("conversation_id", "");
      else list.select(null);
      break;
    case "d":
      if (!detail.isOpen || !detail.showTab) return;
      detail.showTab("diff");
      break;
    case "/": $("#f-q").focus(); $("#f-q").select(); break;
    case "?": help.hidden = !help.hidden; break;
    case "PageDown": case " ":
      if (!detail.isOpen) return;
      $("#detail").scrollBy({ top: $("#detail").clientHeight * 0.85 }); break;
    case "PageUp":
      if (!detail.isOpen) return;
      $("#detail").scrollBy({ top: -$("#detail").clientHeight * 0.85 }); break;
    default:
      if (/^[1-5]$/.test(e.key) && detail.isOpen && detail.showTab) { detail.showTab(TABS[Number(e.key) - 1]); break; }
      return;
  }
  e.preventDefault();
});

// -- wiring ---------------------------------------------------------------------------

let typingTimer = null;

function filtersChanged() {
  readFilters();
  showFilters();
  writeUrl(false);
  loadList();
}

form.addEventListener("input", (e) => {
  if (e.target.tagName === "SELECT") return;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(filtersChanged, 300);
});
form.addEventListener("change", (e) => { if (e.target.tagName === "SELECT") filtersChanged(); });
form.addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(typingTimer); filtersChanged(); });
$("#clear-filters").addEventListener("click", () => {
  for (const name of FILTERS) state.filters[name] = "";
  showFilters();
  writeUrl(false);
  loadList();
});
$("#help-button").addEventListener("click", () => { $("#help").hidden = !$("#help").hidden; });
$("#help").addEventListener("click", (e) => { if (e.target.id === "help" || e.target.closest(".close-help")) $("#help").hidden = true; });

new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); },
  { root: $("#list-pane"), rootMargin: "400px" }).observe($("#more"));

window.addEventListener("popstate", () => {
  const id = readUrl();
  showFilters();
  loadList();
  if (id && id !== detail.id) openDetail(id, false);
  else if (!id && detail.isOpen) { detail.close(); document.body.classList.remove("detail-open"); }
});

setInterval(() => list.tick(), 250);

const initialId = readUrl();
showFilters();
loadOptions();
loadList();
if (initialId) openDetail(initialId, false);
