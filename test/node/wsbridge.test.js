"use strict";
// Unit tests of gateway/wsbridge.js against an in-process server side of the
// protocol (fakegateway.js). They check what the library promises: every
// message once and in order across drops, unacknowledged sends sent again,
// a refused resume starting a new session, final close codes ending it,
// reconnect delays within their bounds.

const test = require("node:test");
const assert = require("node:assert/strict");
const WebSocket = require("ws");
const WsBridge = require("../../gateway/wsbridge.js");
const { FakeGateway } = require("./fakegateway.js");

// waitTimeout bounds every wait: a limit on a hang, not a speed claim.
const waitTimeout = 10000;

// fast: small delays so reconnects do not slow the suite down.
const fast = { WebSocket, minBackoff: 5, maxBackoff: 50, ackAfter: 20 };

async function waitFor(what, cond) {
  const deadline = Date.now() + waitTimeout;
  for (;;) {
    if (cond()) return;
    if (Date.now() > deadline) throw new Error("gave up waiting for " + what);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function once(s, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no " + event + " event within " + waitTimeout + " ms")), waitTimeout);
    const fn = (arg) => {
      clearTimeout(timer);
      s.off(event, fn);
      resolve(arg);
    };
    s.on(event, fn);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// setup starts a fake gateway and a client of it, both gone after the test.
async function setup(t, options, gwSetup) {
  const gw = await new FakeGateway().start();
  if (gwSetup) gwSetup(gw);
  const s = new WsBridge(options && options.url ? options.url(gw) : gw.url, Object.assign({}, fast, options));
  const events = [];
  for (const e of ["open", "resumed", "reset", "close", "reconnecting"]) s.on(e, (ev) => events.push([e, ev]));
  const got = [];
  s.on("message", (data) => got.push(data));
  t.after(async () => {
    s.close();
    await gw.stop();
  });
  return { gw, s, got, events };
}

test("a new session: welcome, text and binary both ways, acks", async (t) => {
  const { gw, s, got } = await setup(t, { ackAfter: 60000 });
  const open = await once(s, "open");
  const ss = gw.session();
  assert.deepEqual(open, { id: ss.id, token: ss.token });
  assert.equal(s.state, "open");
  assert.equal(s.id, ss.id);
  assert.equal(s.token, ss.token);
  assert.match(gw.requests[0], /^\/ws\?resume=1$/);

  for (let i = 1; i <= 70; i++) gw.push(ss, "m" + i);
  gw.push(ss, Buffer.from([0, 1, 0xfe, 0xff]));
  await waitFor("71 messages", () => got.length === 71);
  assert.deepEqual(got.slice(0, 70), Array.from({ length: 70 }, (_, i) => "m" + (i + 1)));
  assert.ok(got[70] instanceof ArrayBuffer);
  assert.deepEqual([...new Uint8Array(got[70])], [0, 1, 0xfe, 0xff]);
  await waitFor("the acks", () => ss.acked === 64);
  await sleep(50);
  assert.deepEqual(ss.acks, [32, 64]); // every 32 messages

  const bytes = new Uint8Array([9, 8, 7, 6]);
  s.send("hello");
  s.send(bytes.subarray(1, 3)); // a view: only its bytes go
  s.send(new Uint8Array([1, 2]).buffer);
  await waitFor("3 messages at the gateway", () => ss.got.length === 3);
  assert.deepEqual(ss.got, ["hello", Buffer.from([8, 7]), Buffer.from([1, 2])]);
  assert.throws(() => s.send({}), TypeError);
});

test("the rest is acked ackAfter after the first unacked message", async (t) => {
  const { gw, s } = await setup(t, { ackAfter: 20 });
  await once(s, "open");
  const ss = gw.session();
  for (const m of ["a", "b", "c"]) gw.push(ss, m);
  await waitFor("the ack of 3", () => ss.acked === 3);
  await sleep(50);
  assert.equal(ss.acks.at(-1), 3); // nothing more once all is acked
});

test("every message once and in order across drops and cuts", async (t) => {
  const { gw, s, got, events } = await setup(t, {}, (g) => { g.sendOut = true; });
  const open = await once(s, "open");
  const ss = gw.session();
  const total = 600;
  let pushed = 0;
  // Push in small bursts while the connection is dropped from both ends;
  // some pushes find no socket and wait for the resume.
  const pusher = setInterval(() => {
    for (let i = 0; i < 7 && pushed < total; i++) gw.push(ss, "p" + ++pushed);
  }, 1);
  let drops = 0;
  while (pushed < total) {
    await sleep(15);
    if (drops % 2 === 0) s.drop();
    else gw.cut(ss);
    drops++;
    await once(s, "resumed");
  }
  clearInterval(pusher);
  await waitFor("all " + total + " messages", () => got.length >= total);
  await sleep(50); // a duplicate would arrive by now
  assert.deepEqual(got, Array.from({ length: total }, (_, i) => "p" + (i + 1)));
  assert.ok(drops >= 3, "only " + drops + " drops");

  const resumed = events.filter(([e]) => e === "resumed").map(([, ev]) => ev);
  assert.equal(resumed.length, drops);
  for (const r of resumed) {
    assert.equal(r.id, open.id);
    assert.equal(r.token, open.token);
    assert.ok(Number.isInteger(r.missed) && r.missed >= 0, "missed " + r.missed);
  }
  assert.ok(resumed.some((r) => r.missed > 0), "no resume replayed anything");
  assert.equal(events.filter(([e]) => e === "open").length, 1);
  assert.equal(events.filter(([e]) => e === "reset").length, 0);
  // Every resume presented the key, URL-encoded, and the count received.
  for (const u of gw.requests.slice(1)) {
    assert.match(u, /^\/ws\?resume=[^&]+&received=\d+$/);
    assert.equal(new URL(u, "http://x").searchParams.get("resume"), ss.key);
  }
});

test("missed counts what the gateway replayed, when its welcome says", async (t) => {
  const { gw, s, got } = await setup(t, { ackEvery: 1000, ackAfter: 60000 }, (g) => { g.sendOut = true; });
  await once(s, "open");
  const ss = gw.session();
  gw.push(ss, "a");
  gw.push(ss, "b");
  await waitFor("2 messages", () => got.length === 2);
  s.drop();
  gw.push(ss, "c");
  gw.push(ss, "d");
  gw.push(ss, "e");
  const r = await once(s, "resumed");
  assert.equal(r.missed, 3);
  gw.sendOut = false;
  s.drop();
  assert.equal((await once(s, "resumed")).missed, null); // the protocol's welcome does not say
});

test("sends the gateway did not pass on are sent again after a resume, and only those", async (t) => {
  const { gw, s } = await setup(t);
  await once(s, "open");
  const ss = gw.session();
  gw.ackIn = false; // passed on, but the acks are lost
  s.send("a");
  s.send(new Uint8Array([0x62]));
  await waitFor("a and b at the gateway", () => ss.got.length === 2);
  gw.lose = true; // lost on the way: never passed on
  s.send("c");
  s.send("d");
  await waitFor("c and d lost", () => gw.lost === 2);
  s.drop();
  s.send("e"); // while disconnected: queued
  assert.equal(s.state, "reconnecting");
  gw.ackIn = true;
  gw.lose = false;
  await once(s, "resumed");
  await waitFor("c, d and e at the gateway", () => ss.got.length >= 5);
  await sleep(50);
  assert.deepEqual(ss.got, ["a", Buffer.from("b"), "c", "d", "e"]);
  const closed = once(s, "close");
  s.close();
  assert.deepEqual((await closed).unsent, [], "acked sends still queued");
});

test("a refused resume: reset, the unsent messages back, a new session", async (t) => {
  const { gw, s, got, events } = await setup(t, { ackEvery: 1000, ackAfter: 60000 });
  const first = await once(s, "open");
  const old = gw.session();
  gw.push(old, "x");
  await waitFor("x", () => got.length === 1);
  gw.lose = true;
  s.send("lost 1");
  s.send(new Uint8Array([1, 2, 3]));
  await waitFor("both lost", () => gw.lost === 2);
  gw.lose = false;
  gw.forget(old, "expired");
  s.drop();
  const reset = await once(s, "reset");
  assert.equal(reset.reason, "expired");
  assert.equal(reset.unsent.length, 2);
  assert.equal(reset.unsent[0], "lost 1");
  assert.deepEqual([...new Uint8Array(reset.unsent[1])], [1, 2, 3]);
  assert.equal(s.state, "connecting");
  assert.equal(s.id, undefined);
  s.send("after the reset"); // queued for the new session

  const second = await once(s, "open");
  assert.notEqual(second.id, first.id);
  const ss = gw.session();
  assert.equal(ss.id, second.id);
  assert.match(gw.requests.at(-1), /^\/ws\?resume=1$/);
  await waitFor("the new session's first message", () => ss.got.length === 1);
  assert.deepEqual(ss.got, ["after the reset"]);
  // The new session counts from 1: its first push is message 1.
  gw.push(ss, "y");
  await waitFor("y", () => got.length === 2);
  s.drop();
  await once(s, "resumed");
  assert.match(gw.requests.at(-1), /&received=1$/);
  assert.deepEqual(events.map(([e]) => e).filter((e) => e !== "reconnecting"), ["open", "reset", "open", "resumed"]);
});

test("a resume refused because the session was closed ends the client", async (t) => {
  const { gw, s, events } = await setup(t);
  await once(s, "open");
  gw.forget(gw.session(), "closed");
  s.drop();
  const ev = await once(s, "close");
  assert.equal(ev.code, 4001);
  assert.equal(ev.reason, "closed");
  assert.equal(s.state, "closed");
  await sleep(200);
  assert.equal(gw.requests.length, 2); // the session and its resume: no new session
  assert.ok(!events.some(([e]) => e === "reset" || e === "open" && events.filter(([x]) => x === "open").length > 1));
});

test("a resume answered with a new session is a reset too", async (t) => {
  const { gw, s, events } = await setup(t);
  const first = await once(s, "open");
  gw.lose = true;
  s.send("unsent");
  await waitFor("the send lost", () => gw.lost === 1);
  gw.lose = false;
  gw.newOnResume = true;
  // The new session's welcome brings both events at once: the reset
  // listener's sends go to the new session.
  s.on("reset", (ev) => { for (const m of ev.unsent) s.send("again: " + m); });
  const reset = once(s, "reset");
  const opened = once(s, "open");
  s.drop();
  assert.deepEqual(await reset, { reason: "not resumed", unsent: ["unsent"] });
  const second = await opened;
  assert.notEqual(second.id, first.id);
  const ss = gw.session(second.id);
  await waitFor("the resend", () => ss.got.length === 1);
  assert.deepEqual(ss.got, ["again: unsent"]);
  assert.deepEqual(events.map(([e]) => e).filter((e) => e !== "reconnecting"), ["open", "reset", "open"]);
});

test("sessions off: a refused new session ends, after the old one's reset", async (t) => {
  const { gw, s, events } = await setup(t);
  await once(s, "open");
  gw.sessionsOff = true;
  s.drop();
  const reset = await once(s, "reset");
  assert.equal(reset.reason, "off");
  const ev = await once(s, "close");
  assert.equal(ev.code, 4001);
  assert.equal(ev.reason, "off");
  assert.equal(s.state, "closed");
  await sleep(100);
  assert.equal(gw.requests.length, 3); // the session, its resume, the new session
  assert.deepEqual(events.map(([e]) => e).filter((e) => e !== "reconnecting"), ["open", "reset", "close"]);
});

test("final close codes end the session without a reconnect", async (t) => {
  for (const code of [1000, 1008, 1009, 1011, 4000]) {
    await t.test("code " + code, async (t) => {
      const { gw, s, events } = await setup(t);
      await once(s, "open");
      s.send("passed on");
      await waitFor("the first at the gateway", () => gw.session().got.length === 1);
      gw.lose = true;
      s.send("unsent");
      await waitFor("the second lost", () => gw.lost === 1);
      gw.session().ws.close(code, "bye " + code);
      const ev = await once(s, "close");
      assert.equal(ev.code, code);
      assert.equal(ev.reason, "bye " + code);
      assert.deepEqual(ev.unsent, ["unsent"]);
      assert.equal(s.state, "closed");
      await sleep(200); // four times maxBackoff: a reconnect would have come
      assert.equal(gw.requests.length, 1);
      assert.ok(!events.some(([e]) => e === "reconnecting"));
      assert.throws(() => s.send("x"), /closed/);
    });
  }
});

test("close codes that say come back resume the session", async (t) => {
  for (const code of [1001, 1012, 1013, 1014, "cut"]) {
    await t.test("code " + code, async (t) => {
      const { gw, s } = await setup(t);
      const open = await once(s, "open");
      const ss = gw.session();
      if (code === "cut") gw.cut(ss);
      else {
        // A close frame from the gateway ends the session in the fake; a
        // real gateway suspends it on 1001. Keep it for the resume.
        ss.ws.removeAllListeners("close");
        ss.ws.close(code);
        ss.ws = null;
      }
      const r = await once(s, "resumed");
      assert.equal(r.id, open.id);
      assert.equal(s.state, "open");
    });
  }
});

test("close() acks what arrived, then closes with 1000", async (t) => {
  const { gw, s, got, events } = await setup(t, { ackEvery: 1000, ackAfter: 60000 });
  await once(s, "open");
  const ss = gw.session();
  for (let i = 0; i < 5; i++) gw.push(ss, "m" + i);
  await waitFor("5 messages", () => got.length === 5);
  assert.equal(ss.acked, 0);
  const closed = once(s, "close");
  s.close();
  assert.equal(s.state, "closed");
  assert.deepEqual(await closed, { code: 1000, reason: "", unsent: [] });
  await waitFor("the session's end at the gateway", () => ss.ended !== null);
  assert.equal(ss.ended, 1000);
  assert.deepEqual(ss.acks, [5]);
  s.close(); // idempotent
  await sleep(100);
  assert.equal(events.filter(([e]) => e === "close").length, 1);
  assert.equal(gw.requests.length, 1);
});

test("reconnect delays stay within the backoff bounds", async (t) => {
  // The pure function: full jitter below min·2^attempt, capped at max.
  for (let a = 0; a < 40; a++) {
    const cap = Math.min(5000, 100 * 2 ** a);
    assert.equal(WsBridge.backoff(a, 100, 5000, () => 0), 0);
    assert.ok(WsBridge.backoff(a, 100, 5000, () => 0.999999) <= cap);
    assert.ok(WsBridge.backoff(a, 100, 5000, () => 0.999999) > cap * 0.99);
  }
  assert.equal(WsBridge.backoff(1000, 0, 0, () => 1), 0);

  // In use: an instance that refuses upgrades is retried, each delay under
  // its cap; after a welcome the delays start from the bottom again.
  const { gw, s, events } = await setup(t, { minBackoff: 2, maxBackoff: 16 }, (g) => { g.refuseUpgrades = true; });
  await waitFor("7 refused upgrades", () => events.filter(([e]) => e === "reconnecting").length >= 7);
  assert.equal(s.state, "connecting");
  gw.refuseUpgrades = false;
  await once(s, "open");
  const delays = events.filter(([e]) => e === "reconnecting").map(([, ev]) => ev.delay);
  delays.forEach((d, i) => assert.ok(d >= 0 && d <= Math.min(16, 2 * 2 ** i), "delay " + i + ": " + d));
  events.length = 0;
  s.drop();
  await once(s, "resumed");
  assert.ok(events[0][0] === "reconnecting" && events[0][1].delay <= 2, "after a welcome: " + JSON.stringify(events[0]));
});

test("the URL keeps its own query", async (t) => {
  const { gw, s } = await setup(t, { url: (g) => g.url + "?app=1&x=a%20b" });
  await once(s, "open");
  s.drop();
  await once(s, "resumed");
  assert.equal(gw.requests[0], "/ws?app=1&x=a%20b&resume=1");
  assert.match(gw.requests[1], /^\/ws\?app=1&x=a%20b&resume=[^&]+&received=0$/);
});

test("a server that breaks the protocol ends the session (1002)", async (t) => {
  const { gw, s } = await setup(t);
  await once(s, "open");
  gw.session().ws.send("no prefix");
  const ev = await once(s, "close");
  assert.equal(ev.code, 1002);
  assert.match(ev.reason, /protocol error/);
  await sleep(100);
  assert.equal(gw.requests.length, 1);
});

test("resume: false is a plain WebSocket", async (t) => {
  const { gw, s, got } = await setup(t, { resume: false }, (g) => {
    g.onPlain = (ws) => ws.on("message", (m, binary) => ws.send(binary ? m : "echo " + m));
  });
  s.send("early"); // before the socket opens: queued
  const open = await once(s, "open");
  assert.deepEqual(open, { id: undefined, token: undefined });
  s.send(new Uint8Array([1, 2]));
  await waitFor("2 echoes", () => got.length === 2);
  assert.equal(got[0], "echo early");
  assert.deepEqual([...new Uint8Array(got[1])], [1, 2]);
  assert.equal(gw.requests[0], "/ws");
  const closed = once(s, "close");
  for (const c of gw.wss.clients) c.close(1001);
  assert.equal((await closed).code, 1001);
  await sleep(100);
  assert.equal(gw.requests.length, 1);
});

test("options are checked", () => {
  assert.throws(() => new WsBridge("ws://127.0.0.1:1/", { WebSocket, minBackoff: 10, maxBackoff: 5 }), RangeError);
  assert.throws(() => new WsBridge("ws://127.0.0.1:1/", { WebSocket, ackEvery: 0 }), RangeError);
  if (typeof globalThis.WebSocket !== "function") {
    assert.throws(() => new WsBridge("ws://127.0.0.1:1/"), /options.WebSocket/);
  }
});
