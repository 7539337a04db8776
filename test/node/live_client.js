"use strict";
// A client of a real gateway for the Go tests (test/edge): it opens a
// resumable session with wsbridge.js over Node's ws, reports every event and
// message as one JSON line on stdout, sends "c1".."cN" (N from argv[3]), one
// every 20 ms, and closes the session when a line "close" comes on stdin.
//
//   node live_client.js ws://host:port/ws 40
const path = require("node:path");
const readline = require("node:readline");
const WebSocket = require("ws");
const WsBridge = require(path.join(__dirname, "..", "..", "gateway", "wsbridge.js"));

const [url, count] = [process.argv[2], Number(process.argv[3] || 0)];
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const s = new WsBridge(url, { WebSocket, minBackoff: 20, maxBackoff: 500 });
s.on("open", (ev) => out({ event: "open", id: ev.id, token: ev.token }));
s.on("resumed", (ev) => out({ event: "resumed", token: ev.token, missed: ev.missed }));
s.on("reset", (ev) => out({ event: "reset", reason: ev.reason }));
s.on("message", (d) => out({ event: "message", data: String(d) }));
s.on("close", (ev) => {
  out({ event: "close", code: ev.code, reason: ev.reason });
  setTimeout(() => process.exit(0), 50);
});
let sent = 0;
const timer = setInterval(() => {
  if (sent >= count) return clearInterval(timer);
  s.send("c" + ++sent);
}, 20);
readline.createInterface({ input: process.stdin }).on("line", (l) => {
  if (l.trim() === "close") s.close();
});
