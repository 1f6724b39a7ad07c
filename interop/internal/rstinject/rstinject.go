// Package rstinject lets the interop driver reset a yamux stream, which the
// yamux fork (andydunstall/yamux v0.1.6) cannot do through its public API.
//
// The fork's Stream has no Reset method. The only places it sends RST are
//
//   - Session.incomingStream, for SYNs beyond the accept backlog or after a
//     local GoAway (streams the peer opened, not ours);
//   - Stream.closeTimeout, which fires StreamCloseTimeout after Close() if
//     the peer never answers with FIN. Close() sends FIN first, so the peer
//     sees a clean EOF before the RST, which is not a reset from its reader's
//     point of view.
//
// So Conn sits between yamux and the transport, watches the frames yamux
// writes, and on request writes the same frame closeTimeout would write
// (type WindowUpdate, flags RST, the stream ID, length 0) at a frame
// boundary, so it never lands between a data frame's header and its body
// (yamux writes those with two Write calls). The local Stream object is not
// told; the caller must stop using it, and it stays in the session's map
// until the session ends.
package rstinject

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
)

// yamux v0 framing (spec §5.4).
const (
	headerSize       = 12
	typeData         = 0
	typeWindowUpdate = 1
	flagRST          = 0x8
)

// Conn wraps the connection a yamux session writes to.
type Conn struct {
	net.Conn

	mu   sync.Mutex
	cond *sync.Cond
	// Parser state over the outgoing byte stream: how much of the current
	// header has been written, and how many body bytes of the current data
	// frame remain. Both zero means we are at a frame boundary.
	hdr      [headerSize]byte
	hdrN     int
	bodyLeft uint32
	failed   error
}

// Wrap returns c wrapped so that Reset can inject frames into it.
func Wrap(c net.Conn) *Conn {
	w := &Conn{Conn: c}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// Write forwards b to the transport and tracks frame boundaries. Only the
// session's send loop writes, so the lock is uncontended except by Reset.
func (c *Conn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.Conn.Write(b)
	c.track(b[:n])
	if err != nil {
		// A failed write ends the session; wake any Reset so it fails too
		// instead of waiting for a boundary that will never come.
		c.failed = err
	}
	c.cond.Broadcast()
	return n, err
}

// track advances the frame parser over bytes that were written.
func (c *Conn) track(b []byte) {
	for len(b) > 0 {
		if c.bodyLeft > 0 {
			n := min(uint32(len(b)), c.bodyLeft)
			c.bodyLeft -= n
			b = b[n:]
			continue
		}
		n := copy(c.hdr[c.hdrN:], b)
		c.hdrN += n
		b = b[n:]
		if c.hdrN == headerSize {
			c.hdrN = 0
			if c.hdr[1] == typeData {
				c.bodyLeft = binary.BigEndian.Uint32(c.hdr[8:12])
			}
		}
	}
}

// Reset writes a RST frame for stream id at the next frame boundary. Frames
// yamux queued before the call (for example data from a completed
// Stream.Write) are already on the wire, so the RST follows them.
func (c *Conn) Reset(id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.hdrN != 0 || c.bodyLeft != 0 {
		if c.failed != nil {
			return c.failed
		}
		c.cond.Wait()
	}
	if c.failed != nil {
		return c.failed
	}
	var frame [headerSize]byte
	frame[0] = 0 // protocol version
	frame[1] = typeWindowUpdate
	binary.BigEndian.PutUint16(frame[2:4], flagRST)
	binary.BigEndian.PutUint32(frame[4:8], id)
	// Length (window delta) stays 0, as in yamux's own RST frames.
	n, err := c.Conn.Write(frame[:])
	if err == nil && n != headerSize {
		err = errors.New("short write of RST frame")
	}
	return err
}
