// The Diff tab of the exchange view: what changed since the previous turn of the
// conversation (GET /api/requests/{id}/diff, llm/diff.py): messages added, removed or
// changed, the system prompt, the tools, the model and the parameters.
//
// A long agent conversation is hundreds of messages and megabytes of text, so the view
// stays small: a run of unchanged messages is one line, a long text shows its start and
// a "show more" button, and a long unchanged stretch inside a character diff shows only
// the context around the changes. The DOM is built off-document and inserted once; every
// entry has `content-visibility: auto`, so the browser lays out only what is on screen.
// Every string goes in as text (dom.js).

import { h, fill } from "./dom.js";
import * as fmt from "./format.js";
import { getDiff } from "./api.js";

const TEXT_SHOWN = 1200;     // characters of an added or removed text shown at first
const PIECE_SHOWN = 2000;    // characters of an inserted or deleted piece shown at first
const CONTEXT = 160;         // unchanged characters kept each side of a change
const STEP = 20000;          // characters each "show more" adds

/** A text, its start shown and the rest a click away, a step at a time. */
function longText(text, shown = TEXT_SHOWN, spec = "div.diff-text") {
  const box = h(spec);
  if (text.length <= shown) return append(box, text);
  let at = shown;
  const more = h("button.diff-more", { type: "button" });
  const label = () => { more.textContent = `show more (${fmt.count(text.length - at)} more characters)`; };
  more.addEventListener("click", () => {
    const next = Math.min(text.length, at + STEP);
    more.before(text.slice(at, next));
    at = next;
    if (at >= text.length) more.remove();
    else label();
  });
  label();
  box.append(text.slice(0, shown), more);
  return box;
}

function append(node, text) {
  node.append(text);
  return node;
}

/** An unchanged stretch of a character diff: whole when short, else its ends around a
 * button that opens the middle. `first`/`last`: no context needed on that side. */
function unchanged(text, first, last) {
  const keepStart = first ? 0 : CONTEXT;
  const keepEnd = last ? 0 : CONTEXT;
  if (text.length <= keepStart + keepEnd + 80) return text;
  const middle = text.slice(keepStart, text.length - keepEnd);
  const span = h("span.diff-eq");
  const open = h("button.diff-elided", { type: "button", title: "Show the unchanged text" },
    `… ${fmt.count(middle.length)} unchanged characters …`);
  open.addEventListener("click", () => open.replaceWith(middle));
  span.append(text.slice(0, keepStart), open, text.slice(text.length - keepEnd));
  return span;
}

/** [[op, text], ...] (op "=", "-", "+") as one text with <del> and <ins>. */
export function charDiff(pieces) {
  const box = h("div.diff-text.char-diff", { "data-testid": "char-diff" });
  pieces.forEach(([op, text], i) => {
    if (op === "=") box.append(unchanged(text, i === 0, i === pieces.length - 1));
    else if (op === "-") box.append(longText(text, PIECE_SHOWN, "del"));
    else box.append(longText(text, PIECE_SHOWN, "ins"));
  });
  return box;
}

const OP_SIGN = { added: "+", removed: "−", changed: "~" };

function messageEntry(entry) {
  if (entry.op === "same") {
    const first = (entry.to ?? entry.from ?? 0) + 1;
    return h("div.diff-same", { "data-testid": "diff-same" },
      `${fmt.plural(entry.count, "unchanged message")}`,
      h("span.muted", entry.count > 1 ? ` (#${first}–#${first + entry.count - 1})` : ` (#${first})`));
  }
  const role = entry.role || "message";
  const head = h("div.turn-head",
    h("span.diff-op", OP_SIGN[entry.op] || entry.op),
    h("span.turn-role", role),
    h("span.muted", entry.op),
    entry.answer ? h("span.badge.answer-badge", { title: "The previous turn's answer, sent back by the client" }, "previous answer") : null,
    h("span.turn-finish", `#${(entry.to ?? entry.from) + 1}`));
  const body = entry.op === "changed" ? charDiff(entry.diff || []) : longText(entry.text || "");
  return h(`div.turn.diff-msg.diff-${entry.op}.role-${role.replace(/[^a-z_-]/gi, "")}${entry.answer ? ".is-prev-answer" : ""}`,
    { "data-testid": `diff-${entry.op}` },
    head, body,
    entry.truncated ? h("div.note", "only the start of this message is shown") : null);
}

function section(title, ...children) {
  return h("section.diff-section", h("h3.diff-title", title), children);
}

function jsonText(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function systemSection(system) {
  if (!system || system.op === "same") return null;
  const body = system.op === "changed" ? charDiff(system.diff || [])
    : h(`div.diff-${system.op}`, longText(system.text || ""));
  return section(`System prompt ${system.op}`, h("div.turn.role-system.diff-msg", body));
}

function toolsSection(tools) {
  if (!tools || !tools.length) return null;
  return section(`Tools (${tools.length} changed)`, tools.map((tool) =>
    h(`div.diff-tool.diff-${tool.op}`, { "data-testid": "diff-tool" },
      h("div.tool-head", h("span.diff-op", OP_SIGN[tool.op] || tool.op), h("span.tool-name", tool.name), h("span.muted", tool.op)),
      tool.op === "changed" ? charDiff(tool.diff || [])
        : h("details", h("summary", "declaration"), longText(jsonText(tool.declaration ?? ""), TEXT_SHOWN, "pre.tool-args")))));
}

function changeCells(from, to) {
  return [h("td", from === undefined ? "" : h("del", jsonText(from))), h("td", to === undefined ? "" : h("ins", jsonText(to)))];
}

function settingsSection(diff) {
  const rows = [];
  if (diff.model) rows.push(h("tr", { "data-testid": "diff-model" }, h("th", "model"), changeCells(diff.model.from, diff.model.to)));
  for (const p of diff.params || []) rows.push(h("tr", h("th", p.name), changeCells(p.from, p.to)));
  if (!rows.length) return null;
  return section("Model and parameters", h("table.diff-params", h("tbody", rows)));
}

/** The whole diff as one node. `onOpen(id)` opens the exchange compared against. */
export function diffView(diff, { onOpen }) {
  const c = diff.counts || {};
  const summary = ["added", "changed", "removed", "same"].filter((op) => c[op])
    .map((op) => `${c[op]} ${op === "same" ? "unchanged" : op}`).join(" · ");
  const against = h("button.chip", { type: "button", title: `Open ${diff.against}`, onclick: () => onOpen(diff.against) },
    h("span.chip-label", diff.against_is === "previous" ? "previous turn" : "against"), " ",
    h("span.chip-value.mono", diff.against.slice(0, 8)));
  const messages = (diff.messages || []).map(messageEntry);
  const settings = settingsSection(diff);
  const system = systemSection(diff.system);
  const tools = toolsSection(diff.tools);
  const nothing = !settings && !system && !tools && !(c.added || c.removed || c.changed);
  return h("div.diff-view", { "data-testid": "diff" },
    h("div.diff-summary", "Compared with the ", against, h("span.muted", ` · messages: ${summary || "none"}`)),
    nothing ? h("div.muted", "Nothing changed.") : null,
    settings, system, tools,
    messages.length ? section("Messages", messages) : null);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The Diff tab of exchange `id`: against its previous turn when it has one, and a field
 * to compare it with any other exchange (an id, as the id chip copies it). */
export function fillDiffTab(panel, id, { hasPrevious, onOpen, isCurrent }) {
  const field = h("input.diff-against", { type: "text", spellcheck: "false", placeholder: "another exchange's id",
    "aria-label": "Compare with exchange", "data-testid": "diff-against" });
  const result = h("div.diff-result");
  const compare = (against) => showDiff(result, id, { against, onOpen, isCurrent });
  const form = h("form.diff-bar", {
    onsubmit: (e) => {
      e.preventDefault();
      const against = field.value.trim();
      if (against && !UUID.test(against)) {
        field.classList.add("invalid");
        fill(result, h("div.d-error", { "data-testid": "diff-error" }, "An exchange id is a UUID (the id chip copies it)."));
        return;
      }
      field.classList.remove("invalid");
      compare(against || null);
    },
  }, h("span.muted", "Compare with "), field,
  h("button.small", { type: "submit", "data-testid": "diff-compare" }, "Compare"),
  hasPrevious ? h("span.muted", " (empty: the previous turn)") : null);
  fill(panel, form, result);
  if (hasPrevious) compare(null);
  else fill(result, h("div.muted", "This exchange continues no earlier turn: give the id of one to compare it with."));
}

/** Fetch and show the diff of exchange `id` in `panel`. It is timed for
 * bench/diff_view.py: performance.measure "orproxy:diff-fetch" (the API call),
 * "orproxy:diff-render" (the DOM built and inserted), "orproxy:diff-layout" (that plus
 * style and layout, which reading a size makes the browser do at once, as it would
 * before the next frame anyway) and "orproxy:diff-frame" (up to the next frame). */
export async function showDiff(panel, id, { against, onOpen, isCurrent }) {
  fill(panel, h("div.muted", "Loading the diff…"));
  const fetched = performance.now();
  let diff;
  try {
    diff = await getDiff(id, against);
  } catch (e) {
    if (isCurrent()) {
      fill(panel, h(e.status === 404 || e.status === 422 ? "div.muted" : "div.d-error", { "data-testid": "diff-error" },
        e.status === 404 && !against ? "This is the first turn of its conversation: there is nothing to compare it with." : e.message));
    }
    return;
  }
  if (!isCurrent()) return;
  const start = performance.now();
  performance.measure("orproxy:diff-fetch", { start: fetched, end: start });
  const view = diffView(diff, { onOpen });
  fill(panel, view);
  performance.measure("orproxy:diff-render", { start });
  void view.offsetHeight; // one layout, on purpose (see above)
  performance.measure("orproxy:diff-layout", { start });
  requestAnimationFrame(() => setTimeout(() => performance.measure("orproxy:diff-frame", { start }), 0));
}
