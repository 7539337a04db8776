package gateway

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"sync"
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
type finConn struct {
	net.Conn
	rc      syscall.RawConn // nil: reads go through net.Conn
	pending []byte          // read from the socket and not yet asked for; in a pooled buffer
	pooled  *[]byte         // the pooled buffer of pending
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
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.release()
		}
		return n, nil
	}
	if len(p) == 0 {
		return 0, nil
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
	} else {
		readBuffers.Put(b)
	}
	return m, nil
}

// release gives back the buffer of pending, all of it read.
func (c *finConn) release() {
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
