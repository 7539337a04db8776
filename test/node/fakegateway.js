"use strict";
// A minimal in-process server side of the resumable-session protocol
// (gateway/README.md, "Resumable sessions"), for the unit tests of
// wsbridge.js: welcome, acks both ways, replay above the client's count on a
// resume, reset when it cannot resume. It keeps every frame it ever sent, so
// a test can check what the client got against it. Plain connections (no
// resume parameter) go to the test's onPlain handler.

const { WebSocketServer, WebSocket } = require("ws");
const crypto = require("node:crypto");

class FakeGateway {
  constructor() {
    this.sessions = new Map(); // key → session
    this.gone = new Map(); // key → the reason a resume of it is refused
    this.requests = []; // every upgrade's path and query, in order
    this.refuseUpgrades = false; // answer upgrades 503, as an instance that is down
    this.ackIn = true; // acknowledge client data; false: as if each ack were lost
    this.lose = false; // drop client data unseen, as if the network lost it
    this.lost = 0; // client data messages dropped so
    this.sessionsOff = false; // refuse every session (reason off), as --resume-window 0
    this.newOnResume = false; // answer a resume with a new session instead of a reset
    this.sendOut = false; // welcome tells "out", the data messages sent in the session
    this.onPlain = null; // (ws) => …, for clients that did not ask for a session
    this.seq = 0;
  }

  // start listens on a free loopback port; url is ws://127.0.0.1:PORT/ws.
  async start() {
    this.wss = new WebSocketServer({
      host: "127.0.0.1",
      port: 0,
      verifyClient: (info, cb) => (this.refuseUpgrades ? cb(false, 503) : cb(true)),
    });
    this.wss.on("connection", (ws, req) => this._connection(ws, req));
    await new Promise((resolve, reject) => {
      this.wss.once("listening", resolve);
      this.wss.once("error", reject);
    });
    this.url = "ws://127.0.0.1:" + this.wss.address().port + "/ws";
    return this;
  }

  async stop() {
    for (const c of this.wss.clients) c.terminate();
    await new Promise((resolve) => this.wss.close(resolve));
  }

  // session returns the only session, or the one with the id.
  session(id) {
    const all = [...this.sessions.values()];
    if (id === undefined) {
      if (all.length !== 1) throw new Error("want one session, have " + all.length);
      return all[0];
    }
    return all.find((s) => s.id === id);
  }

  // push sends data (a string or a Buffer) to a session, keeping it for a
  // resume whether or not a socket is there to take it.
  push(s, data) {
    s.out.push(data);
    if (s.ws && s.ws.readyState === WebSocket.OPEN) s.ws.send(frame(data));
  }

  // cut ends a session's socket without a close frame: a network drop.
  cut(s) {
    if (s.ws) s.ws.terminate();
  }

  // forget ends a session on the gateway's side; a resume of it is refused
  // with reason.
  forget(s, reason) {
    this.sessions.delete(s.key);
    this.gone.set(s.key, reason);
  }

  _connection(ws, req) {
    this.requests.push(req.url);
    const q = new URL(req.url, "http://x").searchParams;
    const resume = q.get("resume");
    if (resume === null) {
      if (this.onPlain) this.onPlain(ws);
      return;
    }
    if (this.sessionsOff) return refuse(ws, "off");
    if (resume === "1" || this.newOnResume) {
      const n = ++this.seq;
      // A key with characters that must be URL-encoded (+ / =), as base64 has.
      const key = crypto.randomBytes(12).toString("base64") + "+/=" + n;
      const s = { key, id: "conn-" + n, token: "tok-" + n, out: [], acked: 0, in: 0, got: [], acks: [], ws: null, ended: null };
      this.sessions.set(key, s);
      return this._attach(s, ws, false);
    }
    const s = this.sessions.get(resume);
    const received = Number(q.get("received"));
    let reason = null;
    if (!s) reason = this.gone.get(resume) || "unknown";
    else if (!Number.isInteger(received) || received < s.acked || received > s.out.length) reason = "unknown";
    if (reason !== null) return refuse(ws, reason);
    s.acked = received;
    this._attach(s, ws, true);
  }

  _attach(s, ws, resumed) {
    if (s.ws) s.ws.terminate(); // the session moves to the new socket
    s.ws = ws;
    const welcome = { t: "welcome", key: s.key, id: s.id, token: s.token, resumed, in: s.in, window: 30 };
    if (this.sendOut) welcome.out = s.out.length;
    ws.send("c" + JSON.stringify(welcome));
    for (const data of s.out.slice(s.acked)) ws.send(frame(data));
    ws.on("message", (msg, isBinary) => {
      if (s.ws !== ws) return;
      const kind = String.fromCharCode(msg[0]);
      if (kind === "d") {
        if (this.lose) {
          this.lost++;
          return;
        }
        s.in++;
        s.got.push(isBinary ? Buffer.from(msg.subarray(1)) : msg.toString("utf8", 1));
        if (this.ackIn) ws.send("c" + JSON.stringify({ t: "ack", in: s.in }));
      } else if (kind === "c") {
        const m = JSON.parse(msg.toString("utf8", 1));
        if (m.t === "ack") {
          if (m.received < s.acked || m.received > s.out.length) throw new Error("bad ack " + m.received);
          s.acked = m.received;
          s.acks.push(m.received);
        }
      } else {
        throw new Error("client sent a message without a prefix: " + msg);
      }
    });
    ws.on("close", (code) => {
      if (s.ws !== ws) return;
      s.ws = null;
      // 1006: no close frame came (a drop, or our own cut): suspended. A
      // close frame, from either side, ends the session.
      if (code !== 1006) {
        s.ended = code;
        this.sessions.delete(s.key);
        this.gone.set(s.key, "unknown");
      }
    });
  }
}

function refuse(ws, reason) {
  ws.send("c" + JSON.stringify({ t: "reset", reason }));
  ws.close(4001, "session " + reason);
}

function frame(data) {
  return typeof data === "string" ? "d" + data : Buffer.concat([Buffer.from("d"), data]);
}

module.exports = { FakeGateway };
