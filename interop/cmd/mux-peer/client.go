package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/andydunstall/yamux"

	"piko-interop/internal/pattern"
	"piko-interop/internal/pikomux"
	"piko-interop/internal/wsconn"
)

// maxCommandLine bounds the command line so a confused peer cannot make a
// handler buffer forever.
const maxCommandLine = 256

// reportSettle bounds how long report waits for close-first and
// expect-reset handlers that are still running.
const reportSettle = 5 * time.Second

// errNoCommand means the stream ended before its first byte: a stream the
// driver opened in advance and then closed unused. Not an error.
var errNoCommand = errors.New("stream closed before any command")

// runClient is client mode: dial the driver, make a yamux client session and
// serve every stream it opens until the session ends. It returns the exit
// code.
func runClient(url string, keepAlive, keepAliveTimeout time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), wsconn.HandshakeTimeout)
	conn, err := wsconn.Dial(ctx, url, "", nil)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "mux-peer: dial %s: %v\n", url, err)
		return 1
	}
	sess, err := yamux.Client(conn, pikomux.Config("client", keepAlive, keepAliveTimeout))
	if err != nil {
		fmt.Fprintf(os.Stderr, "mux-peer: yamux client: %v\n", err)
		return 1
	}
	defer sess.Close()

	r := &responder{sess: sess}
	if err := r.serve(); !normalEnd(err) {
		r.tally.add("error: session ended: %v", err)
	}

	// Handlers still running see the session's end as EOF or a write error
	// and finish promptly; the bound is only against a stuck stall sleep.
	done := make(chan struct{})
	go func() {
		r.handlers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		r.tally.add("error: stream handlers still running 10s after the session ended")
	}

	failed := false
	for _, line := range r.tally.lines() {
		fmt.Fprintln(os.Stderr, line)
		if strings.HasPrefix(line, "error: ") {
			failed = true
		}
	}
	if failed {
		return 1
	}
	return 0
}

// normalEnd reports whether a session ended because the peer (or we) closed
// the connection, as opposed to a keep-alive timeout or protocol error.
func normalEnd(err error) bool {
	return err == nil ||
		errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, yamux.ErrSessionShutdown) ||
		errors.Is(err, syscall.ECONNRESET)
}

// tally is the responder's record of what it saw, sent back by the report
// command: "error: ..." and "info: ..." lines.
type tally struct {
	mu      sync.Mutex
	entries []string
}

func (t *tally) add(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.entries = append(t.entries, fmt.Sprintf(format, args...))
}

func (t *tally) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.entries...)
}

// responder serves the per-stream command protocol.
type responder struct {
	sess     *yamux.Session
	tally    tally
	handlers sync.WaitGroup
	// wentAway is set just before we send GoAway, so the accept loop can tell
	// the fork's "accepting no more" net.ErrClosed from a dead session.
	wentAway atomic.Bool
	// recording counts close-first and expect-reset handlers that have not
	// yet recorded their verdict; report waits for them (see report).
	recording atomic.Int64
}

// serve accepts streams until the session ends and returns why it ended.
func (r *responder) serve() error {
	for {
		st, err := r.sess.AcceptStream()
		if err == nil {
			r.handlers.Go(func() { r.handle(st) })
			continue
		}
		if !errors.Is(err, net.ErrClosed) || !r.wentAway.Load() {
			return err
		}
		// After our GoAway the fork's Accept returns net.ErrClosed at once,
		// but the session carries on and streams accepted earlier keep
		// working. A SYN that arrived just before the GoAway may still be
		// queued: Accept picks at random between the queue and the closed
		// GoAway channel, so retrying a few times drains it (an un-accepted
		// stream is never ACKed and would make Piko's server kill the session
		// after its 75 s open timeout).
		for range 64 {
			if st, err := r.sess.AcceptStream(); err == nil {
				r.handlers.Go(func() { r.handle(st) })
			}
		}
		<-r.sess.CloseChan()
		return r.sessionErr()
	}
}

// sessionErr returns the error the session ended with. Once GoAway and
// shutdown have both happened, AcceptStream picks at random between
// net.ErrClosed (GoAway) and the shutdown error; asking repeatedly finds the
// latter unless it is net.ErrClosed too, which is then the answer.
func (r *responder) sessionErr() error {
	for range 64 {
		if _, err := r.sess.AcceptStream(); !errors.Is(err, net.ErrClosed) {
			return err
		}
	}
	return net.ErrClosed
}

// handle reads the stream's command line and acts on it.
func (r *responder) handle(st *yamux.Stream) {
	line, err := readCommand(st)
	if errors.Is(err, errNoCommand) {
		st.Close()
		return
	}
	if err != nil {
		r.tally.add("error: stream %d: reading command: %v", st.StreamID(), err)
		st.Close()
		return
	}

	cmd, arg, _ := strings.Cut(line, " ")
	switch cmd {
	case "echo":
		r.echo(st)
	case "source":
		r.source(st, arg)
	case "stall":
		r.stall(st, arg)
	case "close-first":
		r.recording.Add(1)
		defer r.recording.Add(-1)
		r.closeFirst(st)
	case "expect-reset":
		r.recording.Add(1)
		defer r.recording.Add(-1)
		r.expectReset(st)
	case "goaway":
		r.goAway(st)
	case "report":
		r.report(st)
	default:
		r.tally.add("error: unknown command %s", line)
		st.Close()
	}
}

// readCommand reads up to and excluding '\n' one byte at a time, so the
// payload that follows stays in the stream for the command to read.
func readCommand(st *yamux.Stream) (string, error) {
	var line []byte
	var b [1]byte
	for len(line) < maxCommandLine {
		n, err := st.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return string(line), nil
			}
			line = append(line, b[0])
			continue
		}
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return "", errNoCommand
		}
		if err != nil {
			return "", fmt.Errorf("after %q: %w", line, err)
		}
	}
	return "", fmt.Errorf("no newline in the first %d bytes", maxCommandLine)
}

// echo copies the stream back to itself until EOF, then half-closes.
func (r *responder) echo(st *yamux.Stream) {
	buf := make([]byte, 32*1024)
	if _, err := io.CopyBuffer(st, st, buf); err != nil {
		r.tally.add("error: echo: stream %d: %v", st.StreamID(), err)
	}
	if err := st.Close(); err != nil {
		r.tally.add("error: echo: stream %d: close: %v", st.StreamID(), err)
	}
}

// source writes N pattern bytes, half-closes, then discards until EOF.
func (r *responder) source(st *yamux.Stream, arg string) {
	n, err := strconv.ParseInt(arg, 10, 64)
	if err != nil || n < 0 {
		r.tally.add("error: source: bad length %q", arg)
		st.Close()
		return
	}
	if err := pattern.Write(st, 0, n); err != nil {
		r.tally.add("error: source: stream %d: %v", st.StreamID(), err)
		st.Close()
		return
	}
	if err := st.Close(); err != nil {
		r.tally.add("error: source: stream %d: close: %v", st.StreamID(), err)
		return
	}
	if _, err := io.Copy(io.Discard, st); err != nil {
		r.tally.add("error: source: stream %d: draining: %v", st.StreamID(), err)
	}
}

// stall sleeps without reading, so the driver runs into the flow-control
// window, then echoes.
func (r *responder) stall(st *yamux.Stream, arg string) {
	ms, err := strconv.Atoi(arg)
	if err != nil || ms < 0 {
		r.tally.add("error: stall: bad duration %q", arg)
		st.Close()
		return
	}
	time.Sleep(time.Duration(ms) * time.Millisecond)
	r.echo(st)
}

// closeFirst half-closes before the driver does and checks that the driver
// can still send to us afterwards.
func (r *responder) closeFirst(st *yamux.Stream) {
	if _, err := io.WriteString(st, "bye\n"); err != nil {
		r.tally.add("error: close-first: write: %v", err)
		st.Close()
		return
	}
	if err := st.Close(); err != nil {
		r.tally.add("error: close-first: close: %v", err)
		return
	}
	n, err := pattern.Count(st)
	if err != nil {
		r.tally.add("error: close-first: %v", err)
		return
	}
	r.tally.add("info: close-first: got %d bytes", n)
}

// expectReset reads until the stream fails; only a reset is a success.
func (r *responder) expectReset(st *yamux.Stream) {
	buf := make([]byte, 4096)
	for {
		_, err := st.Read(buf)
		if err == nil {
			continue
		}
		if !errors.Is(err, yamux.ErrConnectionReset) {
			r.tally.add("error: expect-reset: got %v", err)
			st.Close()
		}
		return
	}
}

// goAway sends GoAway(0): streams accepted so far keep working, later SYNs
// are reset by yamux.
func (r *responder) goAway(st *yamux.Stream) {
	r.wentAway.Store(true)
	if err := r.sess.GoAway(); err != nil {
		r.tally.add("error: goaway: %v", err)
	}
	if _, err := io.WriteString(st, "ok\n"); err != nil {
		r.tally.add("error: goaway: write: %v", err)
	}
	if err := st.Close(); err != nil {
		r.tally.add("error: goaway: close: %v", err)
	}
}

// report writes the tally, then "end", then half-closes.
//
// The driver's last action on a close-first or expect-reset stream (FIN,
// RST) and its report command travel on different streams, handled by
// different goroutines here, so report first gives handlers still working
// on those commands a moment to record their verdict.
func (r *responder) report(st *yamux.Stream) {
	for deadline := time.Now().Add(reportSettle); r.recording.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	var b strings.Builder
	for _, line := range r.tally.lines() {
		b.WriteString(line)
		b.WriteByte('\n')
	}
	b.WriteString("end\n")
	if _, err := io.WriteString(st, b.String()); err != nil {
		r.tally.add("error: report: write: %v", err)
	}
	if err := st.Close(); err != nil {
		r.tally.add("error: report: close: %v", err)
	}
}
