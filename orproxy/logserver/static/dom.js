// Building DOM nodes from data, safely.
//
// Logged headers and bodies are attacker-controlled text. Everything the UI shows goes
// through h(), which puts strings in as text nodes and sets attributes one by one, so no
// logged byte is ever parsed as HTML. The page also has a Content-Security-Policy that
// forbids inline scripts (static.py) as a second line of defence.

/** h("div.cls.other", {title: "x", onclick: fn}, "text", node, [more, children]) */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key === "class") {
      node.className += (node.className ? " " : "") + value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

/** Append children: strings become text nodes, arrays are flattened, null skipped. */
export function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
  return node;
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** Copy text to the clipboard; resolves to true on success. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_) {
    const area = h("textarea.offscreen", { "aria-hidden": "true" });
    area.value = text;
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
    area.remove();
    return ok;
  }
}

/** A short message at the bottom of the screen. */
export function toast(message) {
  const box = h("div.toast", { role: "status" }, message);
  document.body.appendChild(box);
  setTimeout(() => box.classList.add("gone"), 1600);
  setTimeout(() => box.remove(), 2000);
}

/** The id `step` rows from `selected` in `ids` (j/k, arrows), kept within the list; the
 * first (or last) when nothing is selected; null for an empty list. */
export function stepped(ids, selected, step) {
  if (!ids.length) return null;
  const i = ids.indexOf(selected);
  return ids[i < 0 ? (step > 0 ? 0 : ids.length - 1) : Math.min(ids.length - 1, Math.max(0, i + step))];
}
