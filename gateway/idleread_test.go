package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// TestFinConnHoldsNoBufferWhileWaiting: bytes come through whole and in
// order whatever the sizes asked for, the buffer finConn read them into is
// given back once they are all read (a connection waiting for more holds
// none), and the client's FIN reads as errCutOff.
func TestFinConnHoldsNoBufferWhileWaiting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fc := newFinConn(server)
	defer fc.Close()
	if fc.rc == nil {
		t.Fatal("a TCP connection is read through net.Conn, not the socket")
	}
	r := bufio.NewReaderSize(fc, idleReadBuffer)

	for _, size := range []int{1, 15, 100, connReadBuffer - 1, connReadBuffer, 3*connReadBuffer + 7} {
		want := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := client.Write(want); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, size)
		// Byte by byte first, as frame headers are read, then the rest.
		for i := range min(size, 3) {
			b, err := r.ReadByte()
			if err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			got[i] = b
		}
		if size > 3 {
			if _, err := io.ReadFull(r, got[3:]); err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("size %d: bytes read differ from those written", size)
		}
		if r.Buffered() != 0 || fc.pooled != nil || len(fc.pending) != 0 {
			t.Fatalf("size %d: every byte read, yet a buffer is held (bufio %d, pending %d)", size, r.Buffered(), len(fc.pending))
		}
	}
	_ = client.Close()
	if _, err := r.ReadByte(); !errors.Is(err, errCutOff) {
		t.Fatalf("after the client's FIN: %v, want errCutOff", err)
	}
}
