// "Replay": send an exchange's request again through the proxy it went through, its body
// edited or not, with your own key (POST /api/requests/{id}/replay).
//
// The key lives in this module's memory only, so that a second replay need not ask for it
// again: never in localStorage, sessionStorage, a cookie or the address bar, and gone
// with the page. It goes to the logging server in the POST's JSON, which never writes it.

import { h, fill } from "./dom.js";
import { replayRequest } from "./api.js";

let key = "";

const MASKED = /^(\S+ )?\*{4}\S{0,4}$/; // how the proxy logs a secret: "Bearer ****abcd"

/** The URL the request was sent to (X-Proxy-Path), or null. */
function calledUrl(request) {
  const called = (request.headers || []).find(([n]) => n.toLowerCase() === "x-proxy-path");
  return called ? called[1] : null;
}

/** Why exchange `view` cannot be replayed from the UI, or null if it can. */
export function cannotReplay(view) {
  const request = view && view.request;
  if (!request) return "No request was logged";
  const url = calledUrl(request);
  if (!url) return "The logged request has no X-Proxy-Path: the proxy it went through is unknown";
  if (/^wss?:/.test(url)) return "A WebSocket session cannot be replayed";
  return null;
}

function masked(request) {
  return (request.headers || []).filter(([n, v]) => MASKED.test(v) && !/^(set-)?cookie$/i.test(n)).map(([n]) => n);
}

/** The replay's JSON: {} for the request as logged, `edits` when only the model changed, else the whole `body`. */
function ask(original, text, initialText) {
  if (text === initialText) return {};
  let edited;
  try {
    edited = JSON.parse(text);
  } catch (e) {
    throw new Error(`The body is not valid JSON: ${e.message}`);
  }
  const isObject = (v) => v && typeof v === "object" && !Array.isArray(v);
  if (isObject(edited) && isObject(original) && typeof edited.model === "string"
    && JSON.stringify({ ...edited, model: original.model }) === JSON.stringify(original)) {
    return edited.model === original.model ? {} : { edits: { model: edited.model } };
  }
  return { body: edited };
}

/**
 * Open the replay dialog for exchange `id`; `view` is its parsed exchange (GET .../exchange).
 * `onSent(newId)` is called with the new exchange once the proxy has answered.
 */
export function openReplay(id, view, { onSent }) {
  const request = view.request;
  const body = request.body || {};
  const editable = body.kind === "json" && body.json !== undefined;
  const original = editable ? body.json : null;
  const initialText = editable ? JSON.stringify(original, null, 2) : (body.text || "");
  const secrets = masked(request);

  const error = h("div.replay-error", { role: "alert", "data-testid": "replay-error" });
  const area = h("textarea.replay-body", { spellcheck: "false", "aria-label": "Request body", "data-testid": "replay-body",
    readonly: editable ? null : true });
  area.value = initialText;
  const model = h("input.replay-model", { type: "text", spellcheck: "false", "aria-label": "Model", "data-testid": "replay-model",
    disabled: !(editable && typeof original.model === "string") });
  model.value = editable && typeof original.model === "string" ? original.model : "";
  // The model field and the body stay one: each edit of one shows in the other.
  model.addEventListener("input", () => {
    try {
      const doc = JSON.parse(area.value);
      if (doc && typeof doc === "object" && !Array.isArray(doc)) area.value = JSON.stringify({ ...doc, model: model.value }, null, 2);
    } catch (_) { /* the body is being edited into shape: it wins */ }
  });
  area.addEventListener("input", () => {
    try {
      const doc = JSON.parse(area.value);
      if (doc && typeof doc.model === "string") model.value = doc.model;
    } catch (_) { /* not JSON yet */ }
  });
  const keyInput = h("input.replay-key", { type: "password", autocomplete: "off", spellcheck: "false",
    placeholder: "sk-…", "aria-label": "API key", "data-testid": "replay-key" });
  keyInput.value = key;
  const send = h("button.primary", { type: "button", "data-testid": "replay-send" }, "Send");
  const cancel = h("button", { type: "button" }, "Cancel");

  const close = () => overlay.remove();
  const box = h("div.replay-box", { role: "dialog", "aria-label": "Replay the request", "aria-modal": "true" },
    h("h2", "Replay the request"),
    h("div.replay-to", "Sent again to ", h("code", { "data-testid": "replay-to" }, `${request.method || ""} ${calledUrl(request)}`),
      h("span.muted", " through the proxy, which logs it as a new exchange.")),
    h("label.replay-field", h("span", "Model"), model),
    h("label.replay-field.replay-field-body", h("span", "Body"), area),
    editable ? null : h("div.muted", body.size ? "The body is not JSON: it is sent as it was logged." : "The request had no body."),
    h("label.replay-field", h("span", "API key"), keyInput),
    h("div.muted.replay-key-note",
      secrets.length === 1 ? `${secrets[0]} was masked in the log: your key takes its place (without one, it is left out). `
        : secrets.length ? `${secrets.join(", ")} were masked in the log: your key takes their place (without one, they are left out). `
          : "Nothing was masked in the log: a key given goes as Authorization: Bearer. ",
      "The key stays in this page's memory only."),
    error,
    h("div.replay-buttons", cancel, send));
  const overlay = h("div.replay", { "data-testid": "replay-dialog" }, box);

  for (const field of [area, model]) field.addEventListener("input", () => fill(error));
  cancel.addEventListener("click", close);
  overlay.addEventListener("click", (e) => { if (e.target === overlay) close(); });
  overlay.addEventListener("keydown", (e) => { if (e.key === "Escape") { e.stopPropagation(); close(); } });
  send.addEventListener("click", async () => {
    fill(error);
    let json;
    try {
      json = editable ? ask(original, area.value, initialText) : {};
    } catch (e) {
      error.textContent = e.message;
      return;
    }
    key = keyInput.value.trim();
    if (key) json.key = key;
    send.disabled = true;
    send.textContent = "Sending…";
    try {
      const answer = await replayRequest(id, json);
      close();
      onSent(answer.id);
    } catch (e) {
      error.append(e.message);
      const newId = e.data && e.data.id;
      if (newId) error.append(" ", h("button.small", { type: "button", onclick: () => { close(); onSent(newId); } }, "Open the new exchange"));
      send.disabled = false;
      send.textContent = "Send";
    }
  });
  document.body.append(overlay);
  (editable ? model : keyInput).focus();
  return overlay;
}
