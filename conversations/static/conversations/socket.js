// One websocket to /ws/chat/ that comes back by itself.
//
// Reconnects with exponential backoff (with jitter, so that a restarted server is
// not hit by every tab at the same instant), at once when the browser says it is
// back online or the tab becomes visible again, and closes a socket that stopped
// answering pings (a dead Wi-Fi can leave one "open" for minutes).

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15_000;
const PING_EVERY_MS = 25_000;

export class Connection {
  /**
   * @param {string} url
   * @param {{onFrame: (frame: object) => void, onState: (state: "online"|"offline") => void,
   *          onUnauthenticated: () => void}} handlers
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.lastHeard = Date.now();
    setInterval(() => this.keepAlive(), PING_EVERY_MS);
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) this.reconnectNow();
    });
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.attempt = 0;
      this.lastHeard = Date.now();
    });
    socket.addEventListener("message", (event) => {
      this.lastHeard = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return; // not protocol v1: ignore, as the protocol asks of clients
      }
      this.handlers.onFrame(frame);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return; // an old socket we already replaced
      if (event.code === 4401) {
        this.handlers.onUnauthenticated();
        return;
      }
      this.handlers.onState("offline");
      this.schedule();
    });
  }

  get isOpen() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  /** Send a frame if the socket is open; false when it is not (the caller may retry later). */
  send(frame) {
    if (!this.isOpen) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  schedule() {
    if (this.timer) return;
    const base = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.attempt);
    const delay = base * (0.8 + Math.random() * 0.4);
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Drop this socket and come back after the usual backoff (the server asked us to). */
  reconnectLater() {
    const old = this.socket;
    this.socket = null;
    old?.close();
    this.handlers.onState("offline");
    this.schedule();
  }

  reconnectNow() {
    if (this.timer) this.connect();
  }

  keepAlive() {
    if (!this.isOpen) return;
    if (Date.now() - this.lastHeard > 2 * PING_EVERY_MS) {
      // No pong to the last ping. A dead link may take minutes to report its close,
      // so drop the socket now rather than wait for its close event.
      const dead = this.socket;
      this.socket = null;
      dead.close();
      this.handlers.onState("offline");
      this.schedule();
      return;
    }
    this.send({ type: "ping", id: Date.now() });
  }
}
