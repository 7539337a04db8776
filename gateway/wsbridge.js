/*
 * wsbridge.js: the client of the wsbridge gateway's resumable sessions
 * (wire protocol version 1, gateway/README.md, "Resumable sessions").
 *
 * A session outlives its sockets: when one drops, the library reconnects with
 * the session's key and the count of data messages it has received, and the
 * gateway replays what it missed; the library resends what the gateway had
 * not passed on. So every message arrives once and in order, both ways,
 * across network changes, sleeps and rolling restarts.
 *
 *   const s = new WsBridge("wss://host/ws", {resume: true});
 *   s.on("message", (data) => …); // a string, or an ArrayBuffer
 *   s.send("hello");               // buffered while disconnected
 *
 * Browsers: <script src="/wsbridge.js"> defines the global WsBridge. Node 18
 * or later: const WsBridge = require("./wsbridge.js"), and pass a WebSocket
 * implementation such as the npm package ws as options.WebSocket.
 * No dependencies.
 */
(function (root, factory) {
  "use strict";
  const WsBridge = factory();
  if (typeof module === "object" && module.exports) module.exports = WsBridge;
  else root.WsBridge = WsBridge;
})(typeof globalThis !== "undefined" ? globalThis : this, function () {
  "use strict";

  const DATA = 0x64; // "d"
  const CONTROL = 0x63; // "c"
  const CLOSE_RESET = 4001;

  // Close codes that say "come back": 1001 (an instance shutting down; its
  // session waits for the client elsewhere), 1006 (no close frame: the
  // network dropped), 1012-1014 (restart, try again later: 1013 is a resume
  // the gateway could not decide yet). Every other code is the session
  // ending on purpose (1000 a backend's close, 1008 a policy, 1009, 1011…),
  // as the Go client has it (gateway/README.md, "Resumable sessions").
  const RESUME = new Set([1001, 1006, 1012, 1013, 1014]);

  const DEFAULTS = {
    resume: true,
    minBackoff: 100, // ms
    maxBackoff: 5000, // ms
    ackEvery: 32, // messages
    ackAfter: 1000, // ms
    WebSocket: undefined,
    protocols: undefined,
  };

  // backoff is the delay before reconnect attempt number attempt (0 first)
  // after consecutive failures: full jitter, a uniform draw below an
  // exponential cap, so clients cut off together (an instance restarted)
  // do not all come back in the same instant.
  function backoff(attempt, min, max, random) {
    const cap = Math.min(max, min * Math.pow(2, Math.min(attempt, 30)));
    return (random || Math.random)() * cap;
  }

  // encode copies data behind prefix ("" or "d"): the caller may reuse its
  // buffer, and a message may be sent again after a resume.
  function encode(data, prefix) {
    if (typeof data === "string") return prefix + data;
    let bytes;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else throw new TypeError("WsBridge: send takes a string, an ArrayBuffer or a typed array");
    const out = new Uint8Array(bytes.length + prefix.length);
    if (prefix) out[0] = DATA;
    out.set(bytes, prefix.length);
    return out;
  }

  // decode undoes encode, for the unsent messages handed back to the app.
  function decode(frame, prefix) {
    const n = prefix.length;
    return typeof frame === "string" ? frame.slice(n) : frame.slice(n).buffer;
  }

  // withQuery appends q to url, leaving the URL's own query as it was written.
  function withQuery(url, q) {
    if (!url.includes("?")) return url + "?" + q;
    return url + (/[?&]$/.test(url) ? "" : "&") + q;
  }

  function noop() {}

  class WsBridge {
    constructor(url, options) {
      const o = Object.assign({}, DEFAULTS, options);
      if (!(o.minBackoff >= 0 && o.maxBackoff >= o.minBackoff)) {
        throw new RangeError("WsBridge: want 0 <= minBackoff <= maxBackoff");
      }
      if (!(Number.isInteger(o.ackEvery) && o.ackEvery >= 1 && o.ackAfter >= 0)) {
        throw new RangeError("WsBridge: want ackEvery an integer >= 1 and ackAfter >= 0");
      }
      this._WS = o.WebSocket || globalThis.WebSocket;
      if (typeof this._WS !== "function") {
        throw new TypeError("WsBridge: no WebSocket here: pass one as options.WebSocket (in Node: require(\"ws\"))");
      }
      this.url = String(url);
      this.options = o;
      this._prefix = o.resume ? "d" : "";
      this.id = undefined;
      this.token = undefined;
      this.state = "connecting";

      this._on = {}; // event name → listeners
      this._ws = null; // the current socket
      this._welcomed = false; // the current socket got its welcome (plain mode: opened)
      this._resetReason = null; // the current socket said reset
      this._timer = null; // the next reconnect
      this._attempt = 0; // sockets in a row that got no welcome

      this._key = null; // the session to resume; null: ask for a new one
      this._received = 0; // data messages received in the session
      this._acked = 0; // the last count the gateway was told
      this._ackTimer = null;
      // Sent data messages the gateway has not said it passed on, numbered
      // from _passed+1; plain mode: the sends waiting for the socket to open.
      this._unsent = [];
      this._passed = 0;

      this._connect(); // now, so that a malformed URL throws here
    }

    on(event, fn) {
      (this._on[event] || (this._on[event] = [])).push(fn);
      return this;
    }

    off(event, fn) {
      const l = this._on[event];
      if (l && l.indexOf(fn) >= 0) l.splice(l.indexOf(fn), 1);
      return this;
    }

    // send queues data and writes it at once when the session is open. It
    // stays queued until the gateway acknowledges it, so a message written
    // into a socket that then died is sent again on the next one.
    send(data) {
      if (this.state === "closed") throw new Error("WsBridge: send after the session closed");
      const frame = encode(data, this._prefix);
      if (this.options.resume || this.state !== "open") this._unsent.push(frame);
      if (this.state === "open") this._ws.send(frame);
    }

    // close ends the session: the gateway publishes its disconnect. The ack
    // first, so the gateway does not dead-letter what did arrive.
    close() {
      if (this.state === "closed") return;
      const ws = this._ws;
      if (ws) {
        if (this.options.resume && this._welcomed) this._ack();
        this._detach();
        try {
          ws.close(1000);
        } catch (e) {
          // Already closing: the gateway has its close frame or its drop.
        }
      }
      this._end(1000, "", true);
    }

    // drop loses the socket but not the session, as a network change does.
    // A close frame would end the session, and browsers cannot close without
    // one: there the socket is abandoned, and the gateway closes it when the
    // session is resumed on the next. ws in Node can cut it (terminate).
    drop() {
      const ws = this._ws;
      if (this.state === "closed" || !ws) return;
      this._detach();
      if (typeof ws.terminate === "function") ws.terminate();
      else if (!this.options.resume) ws.close();
      if (this.options.resume) this._retry(1006, "dropped");
      else this._end(1006, "dropped", false);
    }

    _connect() {
      this._timer = null;
      let url = this.url;
      if (this.options.resume) {
        url = withQuery(url, this._key === null ? "resume=1"
          : "resume=" + encodeURIComponent(this._key) + "&received=" + this._received);
        // The URL's count tells the gateway what arrived, as an ack would.
        this._acked = this._received;
      }
      const p = this.options.protocols;
      const ws = p === undefined ? new this._WS(url) : new this._WS(url, p);
      ws.binaryType = "arraybuffer";
      this._ws = ws;
      this._welcomed = false;
      this._resetReason = null;
      // Events of a socket given up on (drop, close) must not touch the
      // session: it has moved on to another socket or ended.
      ws.onopen = () => { if (ws === this._ws) this._onOpen(); };
      ws.onmessage = (ev) => { if (ws === this._ws) this._onMessage(ev.data); };
      ws.onclose = (ev) => { if (ws === this._ws) this._onClose(ev.code, ev.reason); };
      // A close event follows every error; ws (Node) throws on an error
      // event nobody listens to.
      ws.onerror = noop;
    }

    // _onOpen matters only in plain mode: a session is open at its welcome.
    _onOpen() {
      if (this.options.resume) return;
      this._welcomed = true;
      this.state = "open";
      for (const frame of this._unsent.splice(0)) this._ws.send(frame);
      this._emit("open", { id: undefined, token: undefined });
    }

    _onMessage(data) {
      if (!this.options.resume) return this._emit("message", data);
      const text = typeof data === "string";
      const kind = text ? data.charCodeAt(0) : new Uint8Array(data)[0];
      if (kind === DATA) {
        if (!this._welcomed) return this._violation("a data message before the welcome");
        this._received++;
        if (this._received - this._acked >= this.options.ackEvery) this._ack();
        else if (this._ackTimer === null) this._ackTimer = setTimeout(() => this._ack(), this.options.ackAfter);
        return this._emit("message", data.slice(1));
      }
      if (kind !== CONTROL) return this._violation("a message that is neither data (d) nor control (c)");
      let m;
      try {
        m = JSON.parse(text ? data.slice(1) : new TextDecoder().decode(data.slice(1)));
      } catch (e) {
        return this._violation("a control message that is not JSON");
      }
      switch (m && m.t) {
        case "welcome": return this._onWelcome(m);
        case "ack": return this._dropPassed(m.in);
        case "reset": this._resetReason = String(m.reason || ""); return;
        // Other types come from a newer gateway: ignored, so it can add some.
      }
    }

    _onWelcome(m) {
      if (this._welcomed) return this._violation("a second welcome");
      if (this._key !== null && m.resumed !== true) {
        // A resume answered with a new session instead of a reset: the
        // old session is over all the same.
        this.state = "connecting";
        this._emit("reset", { reason: "not resumed", unsent: this._forget() });
        if (this._ws === null) return; // the listener closed or dropped it
      }
      const resumed = this._key !== null;
      this._welcomed = true;
      this._attempt = 0;
      this._key = String(m.key);
      this.id = m.id;
      this.token = m.token;
      this.state = "open";
      this._dropPassed(m.in);
      // The gateway expects the rest again, in order, before anything new.
      for (const frame of this._unsent) this._ws.send(frame);
      if (!resumed) return this._emit("open", { id: this.id, token: this.token });
      // The protocol's welcome does not count what it replays; a gateway that
      // adds "out" (data messages it sent in the session) lets us tell.
      const missed = typeof m.out === "number" ? m.out - this._received : null;
      this._emit("resumed", { id: this.id, token: this.token, missed: missed });
    }

    // _dropPassed forgets the sent messages numbered up to n: the gateway has
    // them.
    _dropPassed(n) {
      const k = Math.min(Number(n) - this._passed, this._unsent.length);
      if (k > 0) {
        this._unsent.splice(0, k);
        this._passed += k;
      }
    }

    _ack() {
      clearTimeout(this._ackTimer);
      this._ackTimer = null;
      if (this._received === this._acked || !this._welcomed) return;
      this._acked = this._received;
      this._ws.send("c" + JSON.stringify({ t: "ack", received: this._received }));
    }

    _onClose(code, reason) {
      this._detach();
      if (!this.options.resume) return this._end(code, reason, false);
      if (code === CLOSE_RESET || this._resetReason !== null) {
        // "closed": the session was ended while the client was away, by a
        // close: over, like a close it had seen.
        if (this._key !== null && this._resetReason !== "closed") return this._reset(this._resetReason || "");
        // A new session refused (sessions are off): asking again will not
        // help, and the app may fall back to resume: false.
        return this._end(CLOSE_RESET, this._resetReason || reason, false);
      }
      if (!RESUME.has(code)) return this._end(code, reason, false);
      this._retry(code, reason);
    }

    // _reset gives up the session the gateway refused to resume and starts a
    // new one. The messages it never passed on go back to the app, which
    // knows whether they still mean anything to a new connection (it may
    // send them again from its reset listener).
    _reset(reason) {
      this.state = "connecting";
      this._emit("reset", { reason: reason, unsent: this._forget() });
      if (this.state !== "closed") this._retry(CLOSE_RESET, reason);
    }

    // _forget drops the session, so the next welcome starts a new one, in
    // which both directions count from 1 again; it returns the unsent.
    _forget() {
      const unsent = this._unsent.map((f) => decode(f, this._prefix));
      this._unsent = [];
      this._key = null;
      this.id = this.token = undefined;
      this._received = this._acked = this._passed = 0;
      return unsent;
    }

    _retry(code, reason) {
      this.state = this._key === null ? "connecting" : "reconnecting";
      const delay = backoff(this._attempt++, this.options.minBackoff, this.options.maxBackoff);
      this._timer = setTimeout(() => this._connect(), delay);
      this._emit("reconnecting", { code: code, reason: reason, delay: delay });
    }

    _detach() {
      const ws = this._ws;
      this._ws = null;
      clearTimeout(this._ackTimer);
      this._ackTimer = null;
      ws.onopen = ws.onmessage = ws.onclose = null;
      ws.onerror = noop;
    }

    // _violation ends the session: a peer that breaks the protocol cannot
    // be trusted to count. close() without a code, since browsers allow a
    // script only 1000 and 3000-4999; the app hears 1002.
    _violation(what) {
      const ws = this._ws;
      this._detach();
      try {
        ws.close();
      } catch (e) {
        // Closing already.
      }
      this._end(1002, "wsbridge: protocol error: " + what, false);
    }

    // _end is the session's end. From close() the event waits for the
    // caller to return, as a socket's would.
    _end(code, reason, later) {
      clearTimeout(this._timer);
      this._timer = null;
      this.state = "closed";
      const unsent = this._unsent.map((f) => decode(f, this._prefix));
      this._unsent = [];
      const ev = { code: code, reason: reason, unsent: unsent };
      if (later) Promise.resolve().then(() => this._emit("close", ev));
      else this._emit("close", ev);
    }

    // _emit calls the listeners; one that throws must not leave the session
    // half updated, so its error is rethrown on its own.
    _emit(event, arg) {
      for (const fn of (this._on[event] || []).slice()) {
        try {
          fn.call(this, arg);
        } catch (e) {
          setTimeout(() => { throw e; });
        }
      }
    }
  }

  WsBridge.backoff = backoff;
  return WsBridge;
});
