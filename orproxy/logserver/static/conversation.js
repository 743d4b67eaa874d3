// The conversation view of an LLM exchange: system prompt, user, assistant, tool calls
// and tool results, then the answer, read from the request and response JSON of the
// OpenAI chat, Anthropic Messages and OpenAI Responses APIs (and legacy completions).
// Unknown shapes fall back to the JSON view; every string is shown as text.

import { h } from "./dom.js";
import { jsonView } from "./jsontree.js";

const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const str = (v) => (typeof v === "string" ? v : "");

function prettyArgs(args) {
  if (typeof args !== "string") return JSON.stringify(args, null, 2);
  try { return JSON.stringify(JSON.parse(args), null, 2); } catch (_) { return args; }
}

/** Content (a string, or a list of parts/blocks of any of the APIs) -> parts. */
function contentParts(content) {
  if (typeof content === "string") return content ? [{ kind: "text", text: content }] : [];
  if (!Array.isArray(content)) return content == null ? [] : [{ kind: "other", json: content }];
  const parts = [];
  for (const block of content) {
    if (typeof block === "string") { parts.push({ kind: "text", text: block }); continue; }
    if (!isObj(block)) continue;
    const type = block.type;
    if (["text", "input_text", "output_text"].includes(type)) parts.push({ kind: "text", text: str(block.text) });
    else if (type === "refusal") parts.push({ kind: "text", text: str(block.refusal) });
    else if (type === "thinking") parts.push({ kind: "thinking", text: str(block.thinking) });
    else if (type === "redacted_thinking") parts.push({ kind: "thinking", text: "[redacted thinking]" });
    else if (type === "tool_use" || type === "server_tool_use") {
      parts.push({ kind: "tool_call", id: str(block.id), name: str(block.name), args: block.input });
    } else if (type === "tool_result" || type === "function_call_output") {
      parts.push({ kind: "tool_result", id: str(block.tool_use_id || block.call_id), isError: !!block.is_error,
        parts: contentParts(block.content ?? block.output).map(jsonText) });
    } else if (type === "image_url" || type === "image" || type === "input_image") {
      const src = isObj(block.image_url) ? block.image_url.url : (block.image_url || (isObj(block.source) ? (block.source.url || block.source.media_type) : ""));
      parts.push({ kind: "media", text: `[image${src ? ": " + String(src).slice(0, 120) : ""}]` });
    } else if (type === "input_audio" || type === "document" || type === "file" || type === "input_file") {
      parts.push({ kind: "media", text: `[${type}]` });
    } else parts.push({ kind: "other", json: block });
  }
  return parts;
}

function openaiMessage(m) {
  const parts = [];
  const reasoning = str(m.reasoning) || str(m.reasoning_content);
  if (reasoning) parts.push({ kind: "thinking", text: reasoning });
  parts.push(...contentParts(m.content));
  if (m.refusal) parts.push({ kind: "text", text: str(m.refusal) });
  for (const call of Array.isArray(m.tool_calls) ? m.tool_calls : []) {
    const fn = isObj(call.function) ? call.function : {};
    parts.push({ kind: "tool_call", id: str(call.id), name: str(fn.name), args: fn.arguments });
  }
  if (isObj(m.function_call)) {
    parts.push({ kind: "tool_call", id: "", name: str(m.function_call.name), args: m.function_call.arguments });
  }
  if (m.role === "tool" || m.role === "function") {
    return { role: "tool", name: str(m.name), ref: str(m.tool_call_id), parts: parts.map(jsonText) };
  }
  return { role: str(m.role) || "message", name: str(m.name), parts };
}

/** A tool result's text that is JSON, shown pretty-printed. */
function jsonText(part) {
  if (part.kind !== "text" || !/^\s*[[{]/.test(part.text)) return part;
  try { return { kind: "code", text: JSON.stringify(JSON.parse(part.text), null, 2) }; } catch (_) { return part; }
}

function responsesItem(item) {
  if (typeof item === "string") return { role: "user", parts: contentParts(item) };
  if (!isObj(item)) return null;
  if (item.type === "function_call") {
    return { role: "assistant", parts: [{ kind: "tool_call", id: str(item.call_id), name: str(item.name), args: item.arguments }] };
  }
  if (item.type === "function_call_output") {
    return { role: "tool", ref: str(item.call_id), parts: contentParts(item.output).map(jsonText) };
  }
  if (item.type === "reasoning") {
    const text = (Array.isArray(item.summary) ? item.summary : []).map((s) => str(s.text)).join("\n");
    return { role: "assistant", parts: [{ kind: "thinking", text: text || "[reasoning]" }] };
  }
  if (item.role || item.type === "message") return { role: str(item.role) || "assistant", parts: contentParts(item.content) };
  return { role: "item", parts: [{ kind: "other", json: item }] };
}

/** The turns of a request body (null when it is not a conversation). */
export function requestTurns(body) {
  if (!isObj(body)) return null;
  const turns = [];
  if (body.system !== undefined) turns.push({ role: "system", parts: contentParts(body.system) });
  if (typeof body.instructions === "string") turns.push({ role: "system", parts: contentParts(body.instructions) });
  if (Array.isArray(body.messages)) {
    for (const m of body.messages) if (isObj(m)) turns.push(openaiMessage(m));
  } else if (body.input !== undefined && (typeof body.input === "string" || Array.isArray(body.input)) && body.model !== undefined) {
    if (typeof body.input === "string") turns.push({ role: "user", parts: contentParts(body.input) });
    else for (const item of body.input) { const t = responsesItem(item); if (t) turns.push(t); }
  } else if (typeof body.prompt === "string") {
    turns.push({ role: "user", parts: contentParts(body.prompt) });
  } else if (!turns.length) {
    return null;
  }
  return turns;
}

/** The answer's turns (assistant messages, or an error) from a response body or an
 * assembled stream; null when it is not an LLM answer. */
export function answerTurns(answer) {
  if (!isObj(answer)) return null;
  const turns = [];
  if (isObj(answer.error)) turns.push({ role: "error", parts: [{ kind: "text", text: str(answer.error.message) || JSON.stringify(answer.error) }] });
  if (Array.isArray(answer.choices)) {
    for (const c of answer.choices) {
      if (!isObj(c)) continue;
      const turn = isObj(c.message) ? openaiMessage(c.message) : { role: "assistant", parts: contentParts(str(c.text)) };
      turn.finish = c.finish_reason;
      if (answer.choices.length > 1) turn.name = `choice ${c.index ?? ""}`;
      turns.push(turn);
    }
  } else if (answer.type === "message" || (answer.role === "assistant" && Array.isArray(answer.content))) {
    turns.push({ role: "assistant", parts: contentParts(answer.content), finish: answer.stop_reason });
  } else if (Array.isArray(answer.output)) {
    for (const item of answer.output) { const t = responsesItem(item); if (t) turns.push(t); }
  }
  return turns.length ? turns : null;
}

/** The tools a request offers, as [name, description]. */
export function offeredTools(body) {
  if (!isObj(body) || !Array.isArray(body.tools)) return [];
  return body.tools.filter(isObj).map((t) => {
    const fn = isObj(t.function) ? t.function : t;
    return [str(fn.name) || str(t.type) || "tool", str(fn.description)];
  });
}

const SKIP_PARAMS = new Set(["messages", "tools", "system", "input", "instructions", "prompt"]);

/** Other request parameters (model, temperature, ...) as [key, short text]. */
export function requestParams(body) {
  if (!isObj(body)) return [];
  return Object.entries(body).filter(([k]) => !SKIP_PARAMS.has(k)).map(([k, v]) => {
    const text = typeof v === "string" ? v : JSON.stringify(v);
    return [k, text.length > 80 ? text.slice(0, 79) + "…" : text];
  });
}

// -- rendering -------------------------------------------------------------------------

function renderPart(part) {
  switch (part.kind) {
    case "text": return h("div.turn-text", part.text);
    case "thinking": return h("details.thinking", h("summary", "thinking"), h("div.turn-text", part.text));
    case "media": return h("div.turn-media", part.text);
    case "code": return h("pre.tool-args", part.text);
    case "tool_call":
      return h("div.tool-call",
        h("div.tool-head", h("span.tool-arrow", "→ "), h("span.tool-name", part.name || "(tool)"),
          part.id ? h("span.tool-id", part.id) : null),
        h("pre.tool-args", prettyArgs(part.args ?? "")));
    case "tool_result":
      return h(`div.tool-result${part.isError ? ".is-error" : ""}`,
        h("div.tool-head", h("span.tool-arrow", "← "), "result", part.id ? h("span.tool-id", part.id) : null),
        part.parts.map(renderPart));
    default: return jsonView(part.json);
  }
}

export function renderTurn(turn, extraClass = "") {
  const role = turn.role || "message";
  return h(`div.turn.role-${role.replace(/[^a-z_-]/gi, "")}${extraClass}`,
    h("div.turn-head",
      h("span.turn-role", role),
      turn.name ? h("span.turn-name", turn.name) : null,
      turn.ref ? h("span.tool-id", turn.ref) : null,
      turn.finish ? h("span.turn-finish", `finish: ${turn.finish}`) : null),
    turn.parts.length ? turn.parts.map(renderPart) : h("div.turn-empty", "(empty)"));
}

/** The answer while it streams in: apply(delta) appends the tail's increments. */
export function liveAnswer() {
  const thinking = h("div.turn-text");
  const thinkingBox = h("details.thinking.hidden", { open: true }, h("summary", "thinking"), thinking);
  const text = h("div.turn-text.live-text", { "data-testid": "live-answer" });
  const tools = h("div");
  const error = h("div.turn-error.hidden");
  const cursor = h("span.cursor", "▍");
  const finish = h("span.turn-finish");
  const el = h("div.turn.role-assistant.live",
    h("div.turn-head", h("span.turn-role", "assistant"), h("span.badge.live-badge", "streaming"), finish),
    thinkingBox, text, cursor, tools, error);
  const calls = new Map();
  return {
    el,
    apply(d) {
      if (d.reasoning) { thinkingBox.classList.remove("hidden"); thinking.append(d.reasoning); }
      if (d.text) text.append(d.text);
      if (d.tool) {
        let call = calls.get(d.tool.index);
        if (!call) {
          call = { name: h("span.tool-name"), args: h("pre.tool-args") };
          calls.set(d.tool.index, call);
          tools.append(h("div.tool-call", h("div.tool-head", h("span.tool-arrow", "→ "), call.name), call.args));
        }
        if (d.tool.name) call.name.textContent = d.tool.name;
        if (d.tool.arguments) call.args.append(d.tool.arguments);
      }
      if (d.error) { error.classList.remove("hidden"); error.textContent = d.error; }
      if (d.finish) finish.textContent = `finish: ${d.finish}`;
    },
    end() {
      cursor.remove();
      el.classList.remove("live");
      el.querySelector(".live-badge")?.remove();
    },
    get text() { return text.textContent; },
  };
}
