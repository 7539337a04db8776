package gateway

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// idleReadBuffer is the size of an accepted WebSocket's bufio.Reader: the
// least bufio allows. Bytes come from the socket connReadBuffer at a time
// into a buffer finConn holds only until they are read, so a connection
// waiting for its client's next frame, which is what most connections do
// most of the time, holds none.
const idleReadBuffer = 16

var readBuffers = sync.Pool{New: func() any { b := make([]byte, connReadBuffer); return &b }}

// finConn is an upgraded connection whose reads end with errCutOff instead
// of io.EOF, and which holds a read buffer only while bytes wait in it.
//
// Reading the socket itself (rc), it gives a read of at most
// idleReadBuffer bytes (the WebSocket's bufio.Reader filling its buffer)
// one byte: that reader then never holds bytes its caller did not ask for,
// so once a message is read whole nothing of the next one waits in it, and
// the connection's reader can wait for the next frame on the socket
// (takePong) knowing that only pending may hold bytes before it.
//
// Reads come from one goroutine at a time (coder/websocket's read lock:
// the connection's reader, or a close handshake); takePong, from the
// connection's reader between messages, sees their state through held and
// socketReads.
type finConn struct {
	net.Conn
	rc      syscall.RawConn // nil: reads go through net.Conn
	pending []byte          // read from the socket and not yet asked for; in a pooled buffer
	pooled  *[]byte         // the pooled buffer of pending

	held        atomic.Bool   // pending is not empty
	socketReads atomic.Uint64 // reads of the socket by Read
}

// newFinConn wraps a hijacked connection. Reads go to the socket itself
// (through the runtime's poller, as net.Conn's do) when it is under
// wrappers that only count connections (the listener's caps); over TLS
// they go through the TLS connection, with its own buffers.
func newFinConn(c net.Conn) *finConn {
	fc := &finConn{Conn: c}
	for nc := c; nc != nil; {
		if _, ok := nc.(*tls.Conn); ok {
			break
		}
		if sc, ok := nc.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				fc.rc = rc
			}
			break
		}
		w, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = w.NetConn()
	}
	return fc
}

func (c *finConn) Read(p []byte) (int, error) {
	if c.rc == nil {
		n, err := c.Conn.Read(p)
		return n, cutOff(err)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) <= idleReadBuffer {
		p = p[:1] // the bufio.Reader's fill: see finConn
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.release()
		}
		return n, nil
	}
	// A read as large as a buffer goes straight to p.
	direct := len(p) >= connReadBuffer
	var b *[]byte
	var n int
	var rerr error
	err := c.rc.Read(func(fd uintptr) bool {
		dst := p
		if !direct {
			// Taken only now that the socket may have bytes: a
			// connection waiting for them holds no buffer.
			b = readBuffers.Get().(*[]byte)
			dst = *b
		}
		for {
			n, rerr = syscall.Read(int(fd), dst)
			if rerr != syscall.EINTR {
				break
			}
		}
		if n > 0 {
			c.socketReads.Add(1)
		}
		if rerr == syscall.EAGAIN {
			if b != nil {
				readBuffers.Put(b)
				b = nil
			}
			return false // wait until readable
		}
		return true
	})
	if err == nil && rerr != nil {
		err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	}
	if err == nil && n <= 0 {
		err = errCutOff // the client's FIN
	}
	if err != nil {
		if b != nil {
			readBuffers.Put(b)
		}
		return 0, cutOff(err)
	}
	if direct {
		return n, nil
	}
	m := copy(p, (*b)[:n])
	if m < n {
		c.pending, c.pooled = (*b)[m:n], b
		c.held.Store(true)
	} else {
		readBuffers.Put(b)
	}
	return m, nil
}

// release gives back the buffer of pending, all of it read.
func (c *finConn) release() {
	c.held.Store(false)
	c.pending = nil
	readBuffers.Put(c.pooled)
	c.pooled = nil
}

func cutOff(err error) error {
	if err == io.EOF {
		return errCutOff
	}
	return err
}

// Peeked at a frame's start: a client's pong is FIN and opcode 0xA, masked,
// with at most 125 bytes of payload.
const (
	pongFirstByte = 0x8A
	maxPongFrame  = 2 + 4 + 125
)

var peekBuffers = sync.Pool{New: func() any { b := make([]byte, maxPongFrame); return &b }}

// takePong waits until the socket has bytes and, when they begin with a
// whole client pong frame, reads that frame off and reports true. It
// reports false, having read nothing, for anything else (bytes pending,
// another frame, a pong not yet whole, the end of the connection, an
// error, another reader taking bytes meanwhile): the WebSocket reader takes
// it from there. It is called between messages only, when the stream is at
// a frame's start: pending first, then the socket.
func (c *finConn) takePong() bool {
	if c.rc == nil || c.held.Load() {
		return false
	}
	reads := c.socketReads.Load()
	took, broken := false, false
	err := c.rc.Read(func(fd uintptr) bool {
		// Called holding the socket's read lock: no other read of it
		// comes between the peek and the read of the pong.
		if c.held.Load() || c.socketReads.Load() != reads {
			return true // a close handshake read meanwhile: its bytes come first
		}
		bp := peekBuffers.Get().(*[]byte)
		defer peekBuffers.Put(bp)
		var n int
		var err error
		for {
			n, _, err = syscall.Recvfrom(int(fd), *bp, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err != syscall.EINTR {
				break
			}
		}
		if err == syscall.EAGAIN {
			return false // wait until readable, holding no buffer
		}
		b := (*bp)[:max(n, 0)]
		if err != nil || len(b) < 2 || b[0] != pongFirstByte || b[1]&0x80 == 0 || b[1]&0x7f > 125 {
			return true
		}
		size := 2 + 4 + int(b[1]&0x7f)
		if len(b) < size {
			return true
		}
		// The frame is in the socket's buffer: one read of its size
		// takes exactly it.
		var m int
		for {
			m, err = syscall.Read(int(fd), b[:size])
			if err != syscall.EINTR {
				break
			}
		}
		took = err == nil && m == size
		broken = !took && m > 0
		return true
	})
	if broken {
		// Part of a frame taken: what follows is not a frame's start.
		_ = c.Conn.Close()
	}
	return err == nil && took
}
