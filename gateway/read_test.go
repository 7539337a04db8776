package gateway

import (
	"bufio"
	"encoding/binary"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// rawClient is a WebSocket client written by hand over a TCP socket, so a
// test can send what no library would: frames cut short, lengths that lie,
// text that is not UTF-8.
type rawClient struct {
	c  *net.TCPConn
	br *bufio.Reader
}

// dialRaw upgrades a TCP connection to addr's /ws by hand.
func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answered %d, want 101", resp.StatusCode)
	}
	return &rawClient{c: c.(*net.TCPConn), br: br}
}

// Opcodes of RFC 6455 §5.2.
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
)

// frame builds a masked client frame whose header declares length bytes
// of payload; payload may be shorter (a frame cut off).
func frame(fin bool, op byte, length uint64, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch {
	case length < 126:
		out = append(out, 0x80|byte(length))
	case length <= 0xffff:
		out = append(out, 0x80|126, byte(length>>8), byte(length))
	default:
		out = append(out, 0x80|127)
		out = binary.BigEndian.AppendUint64(out, length)
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	out = append(out, mask[:]...)
	for i, p := range payload {
		out = append(out, p^mask[i%4])
	}
	return out
}

// send writes frames as one write.
func (r *rawClient) send(t *testing.T, frames ...[]byte) {
	t.Helper()
	var b []byte
	for _, f := range frames {
		b = append(b, f...)
	}
	if _, err := r.c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// closeCode reads server frames until a close frame and returns its code
// (-1 when the connection ends without one).
func (r *rawClient) closeCode(t *testing.T) int {
	t.Helper()
	for {
		var h [2]byte
		if _, err := readFull(r.br, h[:]); err != nil {
			return -1
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := readFull(r.br, l[:]); err != nil {
				return -1
			}
			n = uint64(binary.BigEndian.Uint16(l[:]))
		case 127:
			var l [8]byte
			if _, err := readFull(r.br, l[:]); err != nil {
				return -1
			}
			n = binary.BigEndian.Uint64(l[:])
		}
		p := make([]byte, n)
		if _, err := readFull(r.br, p); err != nil {
			return -1
		}
		if h[0]&0x0f == 0x8 {
			if len(p) < 2 {
				return 1005
			}
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

func readFull(br *bufio.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := br.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// transfers returns the data of every transfer invocation.
func (f *fakeFn) transfers() []string {
	var out []string
	for _, c := range f.of(subjects.ActionDataRecv) {
		out = append(out, c.ws.Data)
	}
	return out
}

// TestMessageCutByFINIsNotForwarded is the attack of a client that ends
// its TCP connection (FIN) in the middle of a message: a frame shorter than
// its header says, a first fragment without the rest, a header declaring
// 2^62 bytes and nothing after it. coder/websocket hands the io.EOF of the
// socket through Read as the end of the message, so each was forwarded as
// complete (512 bytes of 1,000; the first fragment; an empty binary
// message). A message is forwarded only when its last frame arrived: the
// message before each cut one is, the cut one is not.
func TestMessageCutByFINIsNotForwarded(t *testing.T) {
	s := serveAll(t, nil)
	half := strings.Repeat("h", 512)
	for _, tc := range []struct {
		name string
		cut  [][]byte
	}{
		{"frame shorter than its length", [][]byte{frame(true, opText, 1000, []byte(half))}},
		{"first fragment only", [][]byte{frame(false, opText, 5, []byte("first"))}},
		{"fragments without the last", [][]byte{frame(false, opText, 3, []byte("one")), frame(false, opContinuation, 3, []byte("two"))}},
		{"2^62-byte header only", [][]byte{frame(true, opBinary, 1<<62, nil)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.fn.transfers())
			cleanups := len(s.fn.of(subjects.ActionClosing))
			r := dialRaw(t, s.ws)
			whole := "whole before " + tc.name
			r.send(t, append([][]byte{frame(true, opText, uint64(len(whole)), []byte(whole))}, tc.cut...)...)
			if err := r.c.CloseWrite(); err != nil { // FIN
				t.Fatal(err)
			}
			waitFor(t, "the connection's cleanup", func() bool { return len(s.fn.of(subjects.ActionClosing)) > cleanups })
			got := s.fn.transfers()[before:]
			if len(got) != 1 || got[0] != whole {
				var lens []int
				for _, m := range got {
					lens = append(lens, len(m))
				}
				t.Errorf("forwarded %d messages of %v bytes %.40q, want only the whole one %q", len(got), lens, got, whole)
			}
		})
	}
	if m := metricsText(t, s.ops); !strings.Contains(m, `wsbridge_gateway_disconnects_total{reason="invalid"} 4`) {
		t.Errorf("the four cut messages are not counted as invalid disconnects:\n%s", grepLines(m, "disconnects_total"))
	}
}

// grepLines returns the lines of s containing sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestInvalidUTF8TextIsRefused is the attack of a client sending text
// frames that are not UTF-8: they were forwarded as text with U+FFFD in
// place of the bad bytes. RFC 6455 §8.1 has the endpoint fail the
// connection with 1007 instead; nothing is forwarded. A character split
// across two fragments is valid and forwarded whole, and binary messages
// are not text.
func TestInvalidUTF8TextIsRefused(t *testing.T) {
	s := serveAll(t, nil)
	for _, tc := range []struct {
		name   string
		frames [][]byte
	}{
		{"one frame", [][]byte{frame(true, opText, 5, []byte("ab\xffcd"))}},
		{"a sequence cut short", [][]byte{frame(true, opText, 3, []byte("a\xc3b"))}},
		{"a surrogate", [][]byte{frame(true, opText, 3, []byte("\xed\xa0\x80"))}},
		{"across fragments", [][]byte{frame(false, opText, 2, []byte("ok")), frame(true, opContinuation, 2, []byte("\xc3("))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.fn.transfers())
			cleanups := len(s.fn.of(subjects.ActionClosing))
			r := dialRaw(t, s.ws)
			const valid = "caf\xc3"
			// A valid message first, its é split across two fragments.
			r.send(t, frame(false, opText, 4, []byte(valid)), frame(true, opContinuation, 1, []byte("\xa9")))
			r.send(t, frame(true, opBinary, 2, []byte("\xff\xfe")))
			r.send(t, tc.frames...)
			if got := r.closeCode(t); got != 1007 {
				t.Errorf("close code %d, want 1007", got)
			}
			_ = r.c.CloseWrite() // ends it in any case
			waitFor(t, "the connection's cleanup", func() bool { return len(s.fn.of(subjects.ActionClosing)) > cleanups })
			got := s.fn.transfers()[before:]
			if len(got) != 2 || got[0] != "café" || got[1] != "//4=" {
				t.Errorf("forwarded %q, want only \"café\" and the binary message", got)
			}
		})
	}
	if m := metricsText(t, s.ops); !strings.Contains(m, `wsbridge_gateway_disconnects_total{reason="invalid"} 4`) {
		t.Errorf("the four refusals are not counted as invalid disconnects:\n%s", grepLines(m, "disconnects_total"))
	}
}

// Between messages the reader waits outside coder/websocket and takes a
// client's pong frames off the socket itself: a pong is recorded as one,
// and whatever comes with it or after it (a message in the same segment, a
// pong split over two segments, a client's ping) still reaches
// coder/websocket whole.
func TestPongsTakenBetweenMessages(t *testing.T) {
	s := serveAll(t, nil)
	r := dialRaw(t, s.ws)
	var c *conn
	waitFor(t, "the connection", func() bool {
		s.g.mu.Lock()
		defer s.g.mu.Unlock()
		for _, cc := range s.g.conns {
			c = cc
		}
		return c != nil
	})
	const opPing, opPong = 0x9, 0xA
	ponged := c.ponged.Load()
	sent := []string{}
	text := func(m string) []byte { sent = append(sent, m); return frame(true, opText, uint64(len(m)), []byte(m)) }
	pongs := func(after int64) func() bool { return func() bool { return c.ponged.Load() > after } }

	// 16 bytes in all: what a 16-byte reader reading ahead would hold
	// whole, leaving nothing on the socket to wake a wait for the next
	// frame.
	r.send(t, text("one"), text("b"))
	waitFor(t, "two messages of one segment forwarded", func() bool { return len(s.fn.transfers()) >= 2 })
	r.send(t, text("one"), text("two in one segment"), text("three"))
	r.send(t, frame(true, opPong, 2, []byte("p1")), text("with a pong before it"))
	waitFor(t, "the pong recorded", pongs(ponged))
	ponged = c.ponged.Load()
	time.Sleep(20 * time.Millisecond) // the reader back between messages
	r.send(t, frame(true, opPong, 0, nil))
	waitFor(t, "a pong alone recorded", pongs(ponged))
	r.send(t, text("after a pong alone"))
	split := frame(true, opPong, 5, []byte("split"))
	r.send(t, split[:3])
	time.Sleep(50 * time.Millisecond)
	r.send(t, split[3:], text("after a split pong"))
	r.send(t, frame(true, opPing, 4, []byte("ping")))
	_ = r.c.SetReadDeadline(time.Now().Add(waitTimeout))
	var h [2]byte
	if _, err := readFull(r.br, h[:]); err != nil || h[0] != 0x80|opPong {
		t.Fatalf("a client's ping: got frame %x (%v), want a pong", h, err)
	}
	r.send(t, text("after a ping"))
	waitFor(t, "every message forwarded", func() bool { return len(s.fn.transfers()) >= len(sent) })
	if got := s.fn.transfers(); strings.Join(got, "|") != strings.Join(sent, "|") {
		t.Errorf("forwarded %q, want %q", got, sent)
	}
}

// A client that sends its first message with the upgrade request, before
// the 101 (net/http has read it ahead): it is forwarded, and so is the
// next one.
func TestMessageWithTheUpgradeRequest(t *testing.T) {
	s := serveAll(t, nil)
	c, err := net.Dial("tcp", s.ws)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	req := "GET /ws HTTP/1.1\r\nHost: " + s.ws + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := c.Write(append([]byte(req), frame(true, opText, 5, []byte("early"))...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if _, err := c.Write(frame(true, opText, 5, []byte("later"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both messages forwarded", func() bool { return len(s.fn.transfers()) >= 2 })
	if got := strings.Join(s.fn.transfers(), "|"); got != "early|later" {
		t.Errorf("forwarded %q, want early|later", got)
	}
}
