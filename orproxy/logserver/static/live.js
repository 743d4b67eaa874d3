// The live feed client: a WebSocket to /api/live, or SSE from /api/events where the
// WebSocket cannot connect, reconnecting by itself (with `since`, so nothing is missed)
// when the logging server restarts. Messages are described in live/feed.py.

const BACKOFF_MS = [250, 500, 1000, 2000, 3000];
const SILENCE_MS = 40000; // the server pings every 15 s: this long without a word is a dead link

const hasWebSocket = () => typeof window.WebSocket === "function";

export class LiveFeed {
  /**
   * onMessage(message): every message (hello, rows, reset).
   * onStatus(status, transport): "connecting" | "live" | "reconnecting".
   */
  constructor({ onMessage, onStatus }) {
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.params = {};
    this.since = null;
    this.generation = 0;
    this.attempts = 0;
    this.socket = null;
    this.source = null;
    this.timer = null;
    this.watchdog = null;
    this.wsWorked = false;    // a WebSocket has opened before: failures mean "server down"
    this.useSse = !hasWebSocket();
    this.transport = null;
  }

  /** (Re)connect with these filter parameters, from this seq on. */
  start(params, since) {
    this.params = params;
    this.since = since;
    this.attempts = 0;
    this._open();
  }

  stop() {
    this.generation++;
    this._teardown();
  }

  _teardown() {
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    if (this.socket) { this.socket.onclose = this.socket.onmessage = this.socket.onopen = null; this.socket.close(); }
    if (this.source) this.source.close();
    this.socket = this.source = null;
  }

  _url(path) {
    const query = new URLSearchParams(this.params);
    if (this.since !== null && this.since !== undefined) query.set("since", String(this.since));
    const text = query.toString();
    return path + (text ? `?${text}` : "");
  }

  _open() {
    this.generation++;
    this._teardown();
    const generation = this.generation;
    this.onStatus(this.attempts ? "reconnecting" : "connecting", null);
    if (this.useSse) this._openSse(generation);
    else this._openWebSocket(generation);
  }

  _openWebSocket(generation) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let opened = false;
    let socket;
    try {
      socket = new WebSocket(`${scheme}//${location.host}${this._url("/api/live")}`);
    } catch (_) {
      this.useSse = true;
      this._openSse(generation);
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      if (generation !== this.generation) return;
      opened = true;
      this.wsWorked = true;
      this._connected("websocket");
    };
    socket.onmessage = (e) => { if (generation === this.generation) this._receive(e.data); };
    socket.onclose = () => {
      if (generation !== this.generation) return;
      // Never opened, and never has: something in between refuses WebSockets. Try SSE.
      if (!opened && !this.wsWorked) this.useSse = true;
      this._retry();
    };
  }

  _openSse(generation) {
    const source = new EventSource(this._url("/api/events"));
    this.source = source;
    let opened = false;
    source.onopen = () => {
      if (generation !== this.generation) return;
      opened = true;
      this._connected("sse");
    };
    source.onmessage = (e) => { if (generation === this.generation) this._receive(e.data); };
    source.onerror = () => {
      if (generation !== this.generation) return;
      // EventSource would reconnect by itself, but with the old `since`: do it ourselves.
      source.close();
      if (!opened && !this.wsWorked && hasWebSocket()) this.useSse = false; // maybe just down
      this._retry();
    };
  }

  _connected(transport) {
    this.transport = transport;
    this.attempts = 0;
    this.onStatus("live", transport);
    this._kick();
  }

  _kick() {
    clearTimeout(this.watchdog);
    const generation = this.generation;
    this.watchdog = setTimeout(() => { if (generation === this.generation) this._retry(); }, SILENCE_MS);
  }

  _retry() {
    this._teardown();
    const generation = ++this.generation;
    this.onStatus("reconnecting", null);
    const delay = BACKOFF_MS[Math.min(this.attempts, BACKOFF_MS.length - 1)];
    this.attempts++;
    this.timer = setTimeout(() => { if (generation === this.generation) this._open(); }, delay);
  }

  _receive(text) {
    this._kick();
    let message;
    try { message = JSON.parse(text); } catch (_) { return; }
    if (message.type === "rows" && typeof message.seq === "number") {
      this.since = Math.max(this.since ?? 0, message.seq);
    } else if (message.type === "hello" && (this.since === null || this.since === undefined)) {
      this.since = message.seq;
    } else if (message.type === "reset") {
      this.stop(); // the owner reloads its list and calls start() with the list's seq
    }
    this.onMessage(message);
  }
}
