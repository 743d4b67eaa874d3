// The REST API as the UI uses it (the server documents it at /api/openapi.json).

/** The filters the UI offers: the names of GET /api/requests' query parameters. The last
 * two have no field in the form: a chip sets them (the conversation view, a session). */
export const FILTERS = ["q", "model", "route", "status", "state", "method", "since", "conversation_id", "session_id"];
export const SCOPES = ["conversation_id", "session_id"];

export class ApiError extends Error {
  constructor(status, message, parameter, data) {
    super(message);
    this.status = status;
    this.parameter = parameter;
    this.data = data; // the whole answer (a failed replay names the new exchange in it)
  }
}

async function answer(resp) {
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(resp.status, error.message || `${resp.status} ${resp.statusText}`, error.parameter, data);
  }
  return data;
}

export async function getJson(path, params) {
  const query = params ? new URLSearchParams(params).toString() : "";
  return answer(await fetch(path + (query ? `?${query}` : ""), { headers: { Accept: "application/json" } }));
}

export async function postJson(path, payload) {
  return answer(await fetch(path, {
    method: "POST", body: JSON.stringify(payload),
    headers: { Accept: "application/json", "Content-Type": "application/json" },
  }));
}

/** Only the filters that are set, as query parameters. */
export function filterParams(filters) {
  const out = {};
  for (const name of FILTERS) {
    const value = (filters[name] || "").trim();
    if (value) out[name] = value;
  }
  return out;
}

export const listRequests = (filters, cursor, limit = 100) =>
  getJson("/api/requests", { ...filterParams(filters), limit, ...(cursor ? { cursor } : {}) });

export const getRequest = (id) => getJson(`/api/requests/${encodeURIComponent(id)}`);
export const getExchange = (id) => getJson(`/api/requests/${encodeURIComponent(id)}/exchange`);
/** What changed since the previous turn (or since exchange `against`): llm/diff.py. */
export const getDiff = (id, against) =>
  getJson(`/api/requests/${encodeURIComponent(id)}/diff`, against ? { against } : null);
export const getStats = (filters) => getJson("/api/stats", filterParams(filters || {}));
/** A HAR 1.2 download of every exchange that `params` (GET /api/requests' filters, e.g.
 * filterParams(filters), or {conversation_id: id} for a conversation) match, newest first. */
export function harUrl(params) {
  const query = new URLSearchParams(params || {}).toString();
  return `/api/har${query ? `?${query}` : ""}`;
}

/** A HAR 1.2 download of one exchange. */
export const exchangeHarUrl = (id) => `/api/requests/${encodeURIComponent(id)}/har`;
export const rawUrl = (id, kind) => `/api/requests/${encodeURIComponent(id)}/${kind}`;
export const replayRequest = (id, ask) => postJson(`/api/requests/${encodeURIComponent(id)}/replay`, ask);
export const tailUrl = (id) => `/api/requests/${encodeURIComponent(id)}/tail`;
