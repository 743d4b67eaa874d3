// Numbers, times and sizes as the list and the detail view show them: short, aligned,
// and never "NaN" or "undefined" (a missing value is an en dash).

import { h } from "./dom.js";

export const NONE = "–";

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** [main, millis]: ["17:45:32", ".123"] today; ["Sep 09 17:45:32", ""] on other days. */
export function clockParts(t) {
  if (typeof t !== "number") return [NONE, ""];
  const d = new Date(t * 1000);
  const now = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return [time, `.${pad(d.getMilliseconds(), 3)}`];
  const month = d.toLocaleString("en", { month: "short" });
  const year = d.getFullYear() === now.getFullYear() ? "" : ` ${d.getFullYear()}`;
  return [`${month} ${pad(d.getDate())}${year} ${time}`, ""];
}

/** 17:45:32.123 today; Sep 09 17:45:32 on other days. `t` is epoch seconds. */
export function clock(t) {
  return clockParts(t).join("");
}

/** Full local date and time with the zone offset, for tooltips. */
export function fullTime(t) {
  if (typeof t !== "number") return "";
  const d = new Date(t * 1000);
  const off = -d.getTimezoneOffset();
  const zone = `${off >= 0 ? "+" : "-"}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)} ${zone}`;
}

/** 85 ms, 1.24 s, 12.3 s, 2m 05s, 1h 02m. */
export function duration(ms) {
  if (typeof ms !== "number" || !isFinite(ms)) return NONE;
  if (ms < 1) return "<1 ms";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(Math.floor(s % 60))}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}

/** 512 B, 1.5 kB, 12 MB (decimal units, as curl prints). */
export function bytes(n) {
  if (typeof n !== "number") return NONE;
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n;
  let i = -1;
  do { v /= 1000; i++; } while (v >= 1000 && i < units.length - 1);
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** 950, 12.3k, 1.2M */
export function count(n) {
  if (typeof n !== "number") return NONE;
  if (n < 1000) return String(n);
  if (n < 1e6) return `${(n / 1000).toFixed(n < 1e4 ? 1 : 0)}k`;
  return `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)}M`;
}

/** $0.0012, $1.23; sub-cent costs keep two significant digits. */
export function cost(c) {
  if (typeof c !== "number") return NONE;
  if (c === 0) return "$0";
  if (c >= 1) return `$${c.toFixed(2)}`;
  if (c >= 0.01) return `$${c.toFixed(3)}`;
  return `$${c.toPrecision(2)}`;
}

export const ESTIMATED = "estimated from the price table";

/** A row's cost as text: "≈$0.012" when it was estimated from the price table
 * (`cost_source` "price_table"), "$0.012" when the upstream reported it. */
export function costText(c, source) {
  if (typeof c !== "number") return NONE;
  return source === "price_table" ? `≈${cost(c)}` : cost(c);
}

/** The cost as a node: an estimate is marked, and says so in its title. */
export function costView(c, source) {
  if (source === "price_table" && typeof c === "number") {
    return h("span.cost-estimated", { title: ESTIMATED }, costText(c, source));
  }
  return h("span.cost", { title: typeof c === "number" && source === "reported" ? "reported by the upstream" : null },
    costText(c, source));
}

/** 42.5 tokens/s; whole numbers from 100 on. */
export function rate(r) {
  if (typeof r !== "number") return NONE;
  return r >= 100 ? count(Math.round(r)) : r.toFixed(1);
}

export function tokens(row) {
  const p = row.prompt_tokens;
  const c = row.completion_tokens;
  if (typeof p !== "number" && typeof c !== "number") return NONE;
  return `${count(p ?? 0)} → ${count(c ?? 0)}`;
}

/** "2xx" etc., for colouring. */
export function statusClass(row) {
  if (row.state === "in_flight") return "s-flight";
  if (row.error && !row.status) return "s-err";
  const s = row.status;
  if (typeof s !== "number") return row.state === "incomplete" ? "s-err" : "s-none";
  if (s >= 500) return "s-5xx";
  if (s >= 400) return "s-4xx";
  if (s >= 300) return "s-3xx";
  if (s >= 200) return "s-2xx";
  return "s-1xx";
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
