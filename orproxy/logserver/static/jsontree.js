// A foldable JSON view. Children are built only when a node is opened, so a 5 MB body
// costs nothing until someone looks inside it. Every value is inserted as text (dom.js).

import { h, copyText, toast } from "./dom.js";

const OPEN_DEPTH = 5;        // levels open at first
const AUTO_OPEN_MAX = 60;    // containers with more entries than this start folded
const LONG_STRING = 400;     // characters shown before "… more"
const EXPAND_ALL_MAX = 4000; // containers "expand all" opens at most

function primitive(value) {
  if (value === null) return h("span.j-null", "null");
  switch (typeof value) {
    case "string": {
      const text = JSON.stringify(value);
      if (text.length <= LONG_STRING) return h("span.j-str", text);
      const span = h("span.j-str", text.slice(0, LONG_STRING));
      const more = h("button.j-more", { type: "button", title: "Show the whole string" },
        `… ${(text.length - LONG_STRING).toLocaleString()} more characters`);
      more.addEventListener("click", (e) => { e.stopPropagation(); span.textContent = text; more.remove(); });
      return h("span", span, more);
    }
    case "number": return h("span.j-num", String(value));
    case "boolean": return h("span.j-bool", String(value));
    default: return h("span", String(value));
  }
}

function node(key, value, depth, comma) {
  const keyPart = key === undefined ? null
    : [h("span.j-key", typeof key === "number" ? String(key) : JSON.stringify(key)), h("span.j-punct", ": ")];
  const isArray = Array.isArray(value);
  if (value === null || typeof value !== "object") {
    return h("div.j-line", keyPart, primitive(value), comma ? h("span.j-punct", ",") : null);
  }
  const entries = isArray ? value.map((v, i) => [i, v]) : Object.entries(value);
  const [open, close] = isArray ? ["[", "]"] : ["{", "}"];
  if (!entries.length) {
    return h("div.j-line", keyPart, h("span.j-punct", open + close), comma ? h("span.j-punct", ",") : null);
  }
  const toggle = h("button.j-toggle", { type: "button", "aria-label": "fold" });
  const summary = h("span.j-summary", ` ${entries.length} ${isArray ? (entries.length === 1 ? "item" : "items") : (entries.length === 1 ? "key" : "keys")} `);
  const head = h("div.j-line.j-head", toggle, keyPart, h("span.j-punct", open), summary,
    h("span.j-punct.j-inline-close", close + (comma ? "," : "")));
  const children = h("div.j-children");
  const tail = h("div.j-line.j-tail", h("span.j-punct", close + (comma ? "," : "")));
  const wrap = h("div.j-node", head, children, tail);
  let built = false;
  wrap.setOpen = (opened) => {
    if (opened && !built) {
      built = true;
      entries.forEach(([k, v], i) => children.appendChild(node(isArray ? undefined : k, v, depth + 1, i < entries.length - 1)));
    }
    wrap.classList.toggle("folded", !opened);
    toggle.setAttribute("aria-expanded", String(opened));
  };
  wrap.setOpen(depth < OPEN_DEPTH && entries.length <= AUTO_OPEN_MAX);
  const flip = (e) => { e.stopPropagation(); wrap.setOpen(wrap.classList.contains("folded")); };
  toggle.addEventListener("click", flip);
  summary.addEventListener("click", flip);
  return wrap;
}

function setAll(root, opened) {
  if (!opened) {
    root.querySelectorAll(".j-node").forEach((n) => n.setOpen(false));
    const top = root.querySelector(".j-node");
    if (top) top.setOpen(true);
    return;
  }
  let budget = EXPAND_ALL_MAX;
  let folded;
  while (budget > 0 && (folded = root.querySelectorAll(".j-node.folded")).length) {
    for (const n of folded) {
      if (budget-- <= 0) break;
      n.setOpen(true);
    }
  }
}

/** The JSON `value` as a foldable tree with expand/collapse/copy buttons. */
export function jsonView(value, { label } = {}) {
  const tree = h("div.j-tree", node(undefined, value, 0, false));
  const bar = h("div.view-bar",
    label ? h("span.view-label", label) : null,
    h("span.spacer"),
    h("button.small", { type: "button", onclick: () => setAll(tree, true) }, "Expand all"),
    h("button.small", { type: "button", onclick: () => setAll(tree, false) }, "Collapse"),
    h("button.small", {
      type: "button",
      onclick: async () => toast(await copyText(JSON.stringify(value, null, 2)) ? "JSON copied" : "Copy failed"),
    }, "Copy"));
  return h("div.json-view", bar, tree);
}

/** Plain text (a body that is not JSON), with a copy button. */
export function textView(text, { label } = {}) {
  return h("div.json-view",
    h("div.view-bar", label ? h("span.view-label", label) : null, h("span.spacer"),
      h("button.small", {
        type: "button",
        onclick: async () => toast(await copyText(text) ? "Copied" : "Copy failed"),
      }, "Copy")),
    h("pre.text-body", text));
}
