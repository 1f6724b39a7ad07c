package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/andydunstall/yamux"

	"piko-interop/internal/pattern"
)

const (
	kib = 1024
	mib = 1024 * kib
)

// scenario is one driver step.
type scenario struct {
	name string
	// streams is how many streams run takes from driver.open, so that they
	// can be opened in advance when an earlier step makes the peer refuse
	// new streams.
	streams int
	// peerGoAway means the peer accepts no new streams after this step.
	peerGoAway bool
	run        func(ctx context.Context, d *driver) error
}

// scenarios lists the driver steps in their default order. goaway-from-self
// stays last (the Rust side's checks of its refused open come last), and
// report always runs after the selected scenarios.
var scenarios = []scenario{
	{name: "echo-256", streams: 256, run: scenarioEcho256},
	{name: "bulk-64m", streams: 1, run: scenarioBulk64M},
	{name: "source-64m", streams: 1, run: scenarioSource64M},
	{name: "half-close", streams: 2, run: scenarioHalfClose},
	{name: "stall", streams: 1, run: scenarioStall},
	{name: "reset", streams: 1, run: scenarioReset},
	{name: "keepalive", streams: 1, run: scenarioKeepAlive},
	{name: "goaway-from-peer", streams: 0, peerGoAway: true, run: scenarioGoAwayFromPeer},
	{name: "goaway-from-self", streams: 4, run: scenarioGoAwayFromSelf},
}

func scenarioNames() []string {
	names := make([]string, len(scenarios))
	for i, sc := range scenarios {
		names[i] = sc.name
	}
	return names
}

func checkScenarioNames(names []string) error {
	for _, name := range names {
		if scenarioByName(name).run == nil {
			return fmt.Errorf("unknown scenario %q (known: %s)", name, strings.Join(scenarioNames(), ", "))
		}
	}
	return nil
}

func scenarioByName(name string) scenario {
	for _, sc := range scenarios {
		if sc.name == name {
			return sc
		}
	}
	return scenario{}
}

// echoRun is one stream carrying an echo-style command: the driver writes a
// pattern payload (offsets restarting at 0 after the command line) while a
// goroutine reads the echo back and verifies it, up to EOF.
type echoRun struct {
	st      *yamux.Stream
	size    int64
	written int64
	echoed  chan error
}

// startEcho sends cmd on st and starts verifying size echoed bytes.
func startEcho(st *yamux.Stream, cmd string, size int64) (*echoRun, error) {
	if _, err := io.WriteString(st, cmd+"\n"); err != nil {
		st.Close()
		return nil, fmt.Errorf("stream %d: write command: %w", st.StreamID(), err)
	}
	e := &echoRun{st: st, size: size, echoed: make(chan error, 1)}
	go func() {
		_, err := pattern.Verify(st, size)
		e.echoed <- err
	}()
	return e, nil
}

// writeTo writes the payload up to offset to.
func (e *echoRun) writeTo(to int64) error {
	if err := pattern.Write(e.st, e.written, to); err != nil {
		e.st.Close()
		return fmt.Errorf("stream %d: %w", e.st.StreamID(), err)
	}
	e.written = to
	return nil
}

// finish writes the rest of the payload, half-closes, and waits for the
// echo to be verified through EOF.
func (e *echoRun) finish() error {
	if err := e.writeTo(e.size); err != nil {
		return err
	}
	if err := e.st.Close(); err != nil {
		return fmt.Errorf("stream %d: half-close: %w", e.st.StreamID(), err)
	}
	if err := <-e.echoed; err != nil {
		return fmt.Errorf("stream %d: echo: %w", e.st.StreamID(), err)
	}
	return nil
}

// echo runs one complete echo exchange of size bytes on a new stream.
func (d *driver) echo(ctx context.Context, cmd string, size int64) error {
	st, err := d.open(ctx)
	if err != nil {
		return err
	}
	e, err := startEcho(st, cmd, size)
	if err != nil {
		return err
	}
	return e.finish()
}

// parallel runs fn(0..n-1) concurrently and returns the first error.
func parallel(n int, fn func(i int) error) error {
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for i := range n {
		wg.Go(func() {
			if err := fn(i); err != nil {
				once.Do(func() { first = err })
			}
		})
	}
	wg.Wait()
	return first
}

// scenarioEcho256 checks many concurrent streams, each a full echo.
func scenarioEcho256(ctx context.Context, d *driver) error {
	return parallel(256, func(int) error { return d.echo(ctx, "echo", 64*kib) })
}

// scenarioBulk64M pushes 64 MiB each way through one stream, which keeps
// the 256 KiB window cycling for a long time.
func scenarioBulk64M(ctx context.Context, d *driver) error {
	return d.echo(ctx, "echo", 64*mib)
}

// scenarioSource64M is bulk in the responder→driver direction only.
func scenarioSource64M(ctx context.Context, d *driver) error {
	const size = 64 * mib
	st, err := d.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := fmt.Fprintf(st, "source %d\n", size); err != nil {
		return fmt.Errorf("write command: %w", err)
	}
	if _, err := pattern.Verify(st, size); err != nil {
		return err
	}
	// Our FIN lets the responder's discard loop end.
	return st.Close()
}

// scenarioHalfClose checks both directions of half-close: our FIN must not
// stop the peer's reply, and the peer's FIN must not stop our writes.
func scenarioHalfClose(ctx context.Context, d *driver) error {
	if err := d.echo(ctx, "echo", 1000); err != nil {
		return fmt.Errorf("echo after our FIN: %w", err)
	}

	st, err := d.open(ctx)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(st, "close-first\n"); err != nil {
		st.Close()
		return fmt.Errorf("close-first: write command: %w", err)
	}
	// io.ReadAll stops at the peer's FIN (EOF); a reset or timeout is an error.
	got, err := io.ReadAll(io.LimitReader(st, 1024))
	if err != nil {
		st.Close()
		return fmt.Errorf("close-first: read: %w", err)
	}
	if string(got) != "bye\n" {
		st.Close()
		return fmt.Errorf("close-first: got %q before EOF, want %q", got, "bye\n")
	}
	// The peer has half-closed; writing is still allowed. It reports the
	// count it saw through the report step.
	if err := pattern.Write(st, 0, 5000); err != nil {
		st.Close()
		return fmt.Errorf("close-first: write after peer FIN: %w", err)
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("close-first: half-close: %w", err)
	}
	return nil
}

// scenarioStall checks flow control: the responder does not read for a
// second, so our writes block once the 256 KiB window is used up, and
// nothing may be lost when it resumes.
func scenarioStall(ctx context.Context, d *driver) error {
	const stall = time.Second
	st, err := d.open(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	e, err := startEcho(st, fmt.Sprintf("stall %d", stall.Milliseconds()), 4*mib)
	if err != nil {
		return err
	}
	if err := e.finish(); err != nil {
		return err
	}
	// Nothing can come back before the responder wakes, so a fast finish
	// means the stall command was not honoured.
	if elapsed := time.Since(start); elapsed < stall*9/10 {
		return fmt.Errorf("echo finished after %s, before the %s stall ended", elapsed, stall)
	}
	return nil
}

// scenarioReset resets a stream the responder is reading. The fork has no
// public Stream reset, so the RST frame goes in through rstinject (see that
// package for why). Whether the peer saw a reset rather than EOF comes back
// through report.
func scenarioReset(ctx context.Context, d *driver) error {
	st, err := d.open(ctx)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(st, "expect-reset\n"); err != nil {
		return fmt.Errorf("write command: %w", err)
	}
	// yamux drops a stream's unread data when the RST arrives, command line
	// included, so the RST must not overtake the responder's reading of the
	// command. Writing 1 MiB after it makes our Write wait until the
	// responder has consumed all but one receive window of it, i.e. read
	// past the command, for any peer window under 1 MiB (Piko's is 256 KiB).
	if err := pattern.Write(st, 0, mib); err != nil {
		return fmt.Errorf("write payload: %w", err)
	}
	// Write returns once yamux has written the frames to the connection,
	// so the RST follows them on the wire. st must not be used afterwards:
	// locally yamux still thinks it is open.
	if err := d.rst.Reset(st.StreamID()); err != nil {
		return fmt.Errorf("send RST: %w", err)
	}
	return nil
}

// scenarioKeepAlive idles long enough for several keep-alive rounds (run
// with -keepalive 500ms or so) and checks the session survived them.
func scenarioKeepAlive(ctx context.Context, d *driver) error {
	select {
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	if d.sess.IsClosed() {
		return errors.New("session closed while idle")
	}
	return d.echo(ctx, "echo", 10)
}

// scenarioGoAwayFromPeer has the responder send GoAway(0) while four echo
// streams are mid-transfer: new opens must fail with ErrRemoteGoAway and the
// four must still complete. Its streams come from OpenStream directly, not
// from the spare streams kept for later steps.
func scenarioGoAwayFromPeer(ctx context.Context, d *driver) error {
	const size = 64 * kib
	open := func() (*yamux.Stream, error) {
		st, err := d.sess.OpenStream()
		if err != nil {
			return nil, fmt.Errorf("open stream: %w", err)
		}
		withDeadline(ctx, st)
		return st, nil
	}

	runs := make([]*echoRun, 4)
	for i := range runs {
		st, err := open()
		if err != nil {
			return err
		}
		if runs[i], err = startEcho(st, "echo", size); err != nil {
			return err
		}
		if err := runs[i].writeTo(size / 2); err != nil {
			return err
		}
	}

	st, err := open()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(st, "goaway\n"); err != nil {
		return fmt.Errorf("goaway: write command: %w", err)
	}
	got, err := io.ReadAll(io.LimitReader(st, 1024))
	if err != nil {
		return fmt.Errorf("goaway: read: %w", err)
	}
	if string(got) != "ok\n" {
		return fmt.Errorf("goaway: got %q before EOF, want %q", got, "ok\n")
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("goaway: half-close: %w", err)
	}

	// The responder sends GoAway before "ok", and frames are handled in
	// order, so the flag is already set here.
	if extra, err := d.sess.OpenStream(); err == nil {
		extra.Close()
		return errors.New("OpenStream succeeded after the peer's GoAway")
	} else if !errors.Is(err, yamux.ErrRemoteGoAway) {
		return fmt.Errorf("OpenStream after the peer's GoAway: got %v, want %v", err, yamux.ErrRemoteGoAway)
	}

	return parallel(len(runs), func(i int) error { return runs[i].finish() })
}

// scenarioGoAwayFromSelf sends our GoAway(0) while four echo streams are
// mid-transfer. The streams must complete; the peer's side (its opens fail
// at once) is checked by the Rust test.
func scenarioGoAwayFromSelf(ctx context.Context, d *driver) error {
	const size = 64 * kib
	runs := make([]*echoRun, 4)
	for i := range runs {
		st, err := d.open(ctx)
		if err != nil {
			return err
		}
		if runs[i], err = startEcho(st, "echo", size); err != nil {
			return err
		}
		if err := runs[i].writeTo(size / 2); err != nil {
			return err
		}
	}

	if err := d.sess.GoAway(); err != nil {
		return fmt.Errorf("GoAway: %w", err)
	}
	// The fork's Accept returns net.ErrClosed at once after a local GoAway
	// (spec §5.9); check it here since Piko's listener relies on it.
	acceptErr := make(chan error, 1)
	go func() {
		_, err := d.sess.AcceptStream()
		acceptErr <- err
	}()
	select {
	case err := <-acceptErr:
		if !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("AcceptStream after our GoAway: got %v, want net.ErrClosed", err)
		}
	case <-time.After(time.Second):
		return errors.New("AcceptStream still blocked 1s after our GoAway")
	}

	return parallel(len(runs), func(i int) error { return runs[i].finish() })
}

// reportResult is what the report step found: tally info lines to print,
// and one message per failure.
type reportResult struct {
	infos    []string
	failures []string
}

// report asks the responder for its tally; err is for failures of the
// exchange itself.
func (d *driver) report(ctx context.Context) (reportResult, error) {
	var res reportResult
	st, err := d.open(ctx)
	if err != nil {
		return res, err
	}
	defer st.Close()
	if _, err := io.WriteString(st, "report\n"); err != nil {
		return res, fmt.Errorf("write command: %w", err)
	}
	if err := st.Close(); err != nil {
		return res, fmt.Errorf("half-close: %w", err)
	}

	sawCloseFirst := false
	r := bufio.NewReader(st)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return res, fmt.Errorf("reading tally (no end line): %w", err)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "end" {
			break
		}
		switch {
		case strings.HasPrefix(line, "error: "):
			res.failures = append(res.failures, line)
		case strings.HasPrefix(line, "info: "):
			res.infos = append(res.infos, line)
			if strings.HasPrefix(line, "info: close-first: ") {
				sawCloseFirst = true
				if line != "info: close-first: got 5000 bytes" {
					res.failures = append(res.failures, fmt.Sprintf("close-first: responder says %q, want 5000 bytes", line))
				}
			}
		default:
			res.failures = append(res.failures, fmt.Sprintf("unexpected tally line %q", line))
		}
	}
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		res.failures = append(res.failures, fmt.Sprintf("expected EOF after the end line, got %v", err))
	}
	if d.ran["half-close"] && !sawCloseFirst {
		res.failures = append(res.failures, "close-first: no info line in the tally")
	}
	return res, nil
}
