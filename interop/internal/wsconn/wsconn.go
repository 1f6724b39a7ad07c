// Package wsconn is the WebSocket byte-stream adapter that Piko v0.9.0 puts
// under yamux (its pkg/websocket package, spec §5.3), reproduced here
// because the Go module proxy refuses to serve github.com/andydunstall/piko
// in this environment (see ../../README.md). It follows Piko's adapter
// behaviour exactly, since that behaviour is what goes on the wire:
//
//   - every Write sends exactly one binary message (gorilla fragments client
//     messages larger than its 4 KiB write buffer; peers must reassemble);
//   - Read concatenates the payloads of consecutive binary messages with no
//     regard to message boundaries; a text message is a fatal error;
//   - any WebSocket close condition, including gorilla's close code 1006 for
//     an abrupt EOF, is reported as net.ErrClosed (the v0.9.0 defect in
//     spec §5.7.2 comes from exactly this mapping);
//   - Close closes the TCP connection without a close frame;
//   - pings are answered by gorilla's default handler while Read runs; this
//     side never sends WebSocket pings (yamux pings carry liveness).
package wsconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

// HandshakeTimeout is the Go client's WebSocket handshake timeout (§5.2.1).
const HandshakeTimeout = 60 * time.Second

// Conn is a net.Conn carried over a WebSocket connection.
type Conn struct {
	ws *websocket.Conn
	// msg is the reader of the message currently being consumed, or nil if
	// the next Read must start a new message.
	msg io.Reader
}

var _ net.Conn = (*Conn)(nil)

// New wraps an established WebSocket connection.
func New(ws *websocket.Conn) *Conn {
	return &Conn{ws: ws}
}

// NewUpgrader returns the upgrader Piko's upstream server uses: gorilla's
// defaults (no subprotocol, no compression, same-origin check), which gives
// the rejection rules of spec §5.2.3.
func NewUpgrader() *websocket.Upgrader {
	return &websocket.Upgrader{}
}

// Dial connects to a ws:// or wss:// URL the way Piko's Go agent and SDK do
// (60 s handshake timeout, optional bearer token, optional TLS settings for
// wss://, nil meaning Go's defaults). A non-101 answer is reported as
// "<status>: <error>" like Piko's client.
func Dial(ctx context.Context, url string, token string, tlsConfig *tls.Config) (*Conn, error) {
	dialer := &websocket.Dialer{HandshakeTimeout: HandshakeTimeout, TLSClientConfig: tlsConfig}
	header := make(http.Header)
	if token != "" {
		header.Set("Authorization", "Bearer "+token)
	}
	ws, resp, err := dialer.DialContext(ctx, url, header)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%d: %w", resp.StatusCode, err)
		}
		return nil, err
	}
	return New(ws), nil
}

// Read reads from the concatenated payloads of incoming binary messages.
func (c *Conn) Read(b []byte) (int, error) {
	for {
		if c.msg == nil {
			mt, r, err := c.ws.NextReader()
			if err != nil {
				return 0, mapErr(err)
			}
			if mt != websocket.BinaryMessage {
				return 0, fmt.Errorf("unexpected websocket message type %d", mt)
			}
			c.msg = r
		}
		n, err := c.msg.Read(b)
		if errors.Is(err, io.EOF) {
			// End of this message; an empty read means we move straight on
			// to the next one rather than returning (0, nil).
			c.msg = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		if err != nil {
			return n, mapErr(err)
		}
		return n, nil
	}
}

// Write sends b as one binary message.
func (c *Conn) Write(b []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		return 0, mapErr(err)
	}
	return len(b), nil
}

// Close closes the underlying connection without a WebSocket close frame,
// as Piko does.
func (c *Conn) Close() error {
	return c.ws.Close()
}

// LocalAddr returns the local network address.
func (c *Conn) LocalAddr() net.Addr { return c.ws.LocalAddr() }

// RemoteAddr returns the remote network address.
func (c *Conn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

// SetDeadline sets both deadlines through gorilla (not the raw net.Conn),
// since gorilla keeps its own deadline state for control frames.
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }

// mapErr turns every WebSocket close condition into net.ErrClosed, which is
// what yamux and Piko's listener test for.
func mapErr(err error) error {
	var closeErr *websocket.CloseError
	if errors.As(err, &closeErr) {
		return net.ErrClosed
	}
	return err
}
