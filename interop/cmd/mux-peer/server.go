package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/andydunstall/yamux"
	"github.com/gorilla/websocket"

	"piko-interop/internal/pikomux"
	"piko-interop/internal/rstinject"
	"piko-interop/internal/wsconn"
)

// stepTimeout bounds every scenario and the report step, so a peer that
// stops responding fails the run instead of hanging it.
const stepTimeout = 60 * time.Second

// runServer is server mode: accept one upstream WebSocket, make a yamux
// server session over it and drive the scenarios. It returns the exit code.
func runServer(names []string, keepAlive, keepAliveTimeout, connectTimeout time.Duration) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(os.Stderr, "mux-peer: listen: %v\n", err)
		return 1
	}
	// The test harness parses this line to learn the port; stdout is
	// unbuffered in Go, so it is visible as soon as it is printed.
	fmt.Printf("listening %s\n", ln.Addr())

	conns := make(chan *websocket.Conn, 1)
	srv := &http.Server{
		Handler:           upstreamHandler(conns),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(os.Stderr, "http: ", log.LstdFlags),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "mux-peer: http serve: %v\n", err)
		}
	}()
	defer srv.Close()

	var ws *websocket.Conn
	select {
	case ws = <-conns:
	case <-time.After(connectTimeout):
		fmt.Printf("FAIL connect: no upstream connected within %s\n", connectTimeout)
		return 1
	}

	rc := rstinject.Wrap(wsconn.New(ws))
	sess, err := yamux.Server(rc, pikomux.Config("server", keepAlive, keepAliveTimeout))
	if err != nil {
		fmt.Fprintf(os.Stderr, "mux-peer: yamux server: %v\n", err)
		return 1
	}
	defer sess.Close()
	go drainAccepts(sess)

	d := &driver{sess: sess, rst: rc, ran: make(map[string]bool)}
	ok := d.run(names)
	d.closeSpares()
	if ok {
		return 0
	}
	return 1
}

// upstreamHandler serves GET /piko/v1/upstream/{id} like Piko's upstream
// server (gorilla Upgrader with default settings), but hands over only the
// first connection: the driver runs against exactly one session.
func upstreamHandler(conns chan<- *websocket.Conn) http.Handler {
	upgrader := wsconn.NewUpgrader()
	var mu sync.Mutex
	taken := false
	mux := http.NewServeMux()
	mux.HandleFunc("GET /piko/v1/upstream/{id}", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if taken {
			http.Error(w, "interop peer serves a single upstream connection", http.StatusServiceUnavailable)
			return
		}
		ws, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			// Upgrade has already answered the client.
			fmt.Fprintf(os.Stderr, "mux-peer: upgrade failed: %v\n", err)
			return
		}
		taken = true
		fmt.Fprintf(os.Stderr, "mux-peer: upstream connected: endpoint %q from %s\n", r.PathValue("id"), r.RemoteAddr)
		conns <- ws
	})
	return mux
}

// drainAccepts plays the part of Piko's server accept loop, which exists
// only to notice the session ending. The contract has the client never open
// streams, so one that does is closed and logged, not served.
func drainAccepts(sess *yamux.Session) {
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		fmt.Fprintf(os.Stderr, "mux-peer: peer opened stream %d, which the contract does not allow; closing it\n", st.StreamID())
		st.Close()
	}
}

// driver runs scenarios over one yamux server session.
type driver struct {
	sess *yamux.Session
	rst  *rstinject.Conn

	// spare holds streams opened before the peer's GoAway for the steps that
	// come after it: once the peer has sent GoAway, Go yamux's OpenStream
	// fails with ErrRemoteGoAway, so goaway-from-self and report could not
	// open their streams otherwise.
	spareMu sync.Mutex
	spare   []*yamux.Stream

	// ran records which scenarios passed, so report knows what to expect.
	ran map[string]bool
}

// run executes the scenarios in order, then the report step, printing one
// verdict line per step. It reports whether every step passed.
func (d *driver) run(names []string) bool {
	allPassed := true
	for i, name := range names {
		sc := scenarioByName(name)
		if sc.peerGoAway {
			// Count the streams the remaining steps (and report) will need.
			need := 1
			for _, later := range names[i+1:] {
				need += scenarioByName(later).streams
			}
			preOpen := func(context.Context) (struct{}, error) { return struct{}{}, d.preOpen(need) }
			if _, err := runStep(preOpen); err != nil {
				fmt.Printf("FAIL %s: pre-opening %d streams for later steps: %v\n", name, need, err)
				allPassed = false
				continue
			}
		}
		_, err := runStep(func(ctx context.Context) (struct{}, error) { return struct{}{}, sc.run(ctx, d) })
		if err != nil {
			if d.sess.IsClosed() {
				// A dead session surfaces as EOF or "session shutdown" on
				// streams; say so, since that is the real cause.
				err = fmt.Errorf("%w (the yamux session is closed)", err)
			}
			fmt.Printf("FAIL %s: %v\n", name, err)
			allPassed = false
			continue
		}
		fmt.Printf("PASS %s\n", name)
		d.ran[name] = true
	}
	res, err := runStep(d.report)
	if err != nil {
		res.failures = append(res.failures, err.Error())
	}
	for _, line := range res.infos {
		fmt.Printf("INFO %s\n", line)
	}
	for _, f := range res.failures {
		fmt.Printf("FAIL report: %s\n", f)
	}
	if len(res.failures) > 0 {
		return false
	}
	fmt.Println("PASS report")
	return allPassed
}

// runStep runs fn with a stepTimeout deadline. Stream deadlines make most
// blocking calls return by themselves; the outer timer also covers calls
// that take no deadline (OpenStream waiting for a SYN slot, for example),
// abandoning the step's goroutine.
func runStep[T any](fn func(ctx context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		// Stream deadlines equal the context's, so a stream may report
		// yamux.ErrTimeout a moment before ctx.Err() is set.
		if r.err != nil && (ctx.Err() != nil || errors.Is(r.err, yamux.ErrTimeout)) {
			r.err = fmt.Errorf("timed out after %s: %w", stepTimeout, r.err)
		}
		return r.v, r.err
	case <-time.After(stepTimeout + 5*time.Second):
		var zero T
		return zero, fmt.Errorf("timed out after %s (step hung)", stepTimeout)
	}
}

// preOpen opens n streams now and keeps them for later open calls.
func (d *driver) preOpen(n int) error {
	for range n {
		st, err := d.sess.OpenStream()
		if err != nil {
			return err
		}
		d.spareMu.Lock()
		d.spare = append(d.spare, st)
		d.spareMu.Unlock()
	}
	return nil
}

// open returns a new stream (a spare one if any was pre-opened) whose
// deadlines are the step's deadline.
func (d *driver) open(ctx context.Context) (*yamux.Stream, error) {
	d.spareMu.Lock()
	var st *yamux.Stream
	if n := len(d.spare); n > 0 {
		st, d.spare = d.spare[0], d.spare[1:]
	}
	d.spareMu.Unlock()
	if st == nil {
		var err error
		if st, err = d.sess.OpenStream(); err != nil {
			return nil, fmt.Errorf("open stream: %w", err)
		}
	}
	withDeadline(ctx, st)
	return st, nil
}

// closeSpares half-closes streams that were pre-opened but not used (a step
// failed early). The responder treats a stream that ends before any command
// byte as unused, not as an error.
func (d *driver) closeSpares() {
	d.spareMu.Lock()
	defer d.spareMu.Unlock()
	for _, st := range d.spare {
		st.Close()
	}
	d.spare = nil
}

func withDeadline(ctx context.Context, st *yamux.Stream) {
	if dl, ok := ctx.Deadline(); ok {
		st.SetDeadline(dl)
	}
}
