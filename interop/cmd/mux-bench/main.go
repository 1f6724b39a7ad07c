// Command mux-bench is the Go twin of the Rust mux benchmark: Piko's yamux
// fork with Piko's settings (fixed 256 KiB stream window), over Piko's
// WebSocket byte-stream adapter on loopback TCP, or directly over TCP. Both
// session ends live in this process, connected through a real listener on
// 127.0.0.1.
//
// Each measurement prints "RESULT <name> <value> <unit>". CPU figures are the
// process's user+system time over the measured window, so they cover both
// ends (server and client session) together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/andydunstall/yamux"
	"github.com/gorilla/websocket"

	"piko-interop/internal/pikomux"
	"piko-interop/internal/wsconn"
)

const (
	mib = 1 << 20
	gib = 1 << 30
	// rttSize is the request and response size of one round trip.
	rttSize = 100
)

type options struct {
	transport   string
	bytes       int64
	duration    time.Duration
	concurrency int
	bufSize     int
	direction   string
}

func main() {
	var opts options
	flag.StringVar(&opts.transport, "transport", "ws", "ws (yamux over Piko's WebSocket adapter) or tcp (yamux directly over TCP)")
	benches := flag.String("bench", "bulk-1,bulk-64,rtt", "comma-separated benchmarks: bulk-1, bulk-64, rtt")
	flag.Int64Var(&opts.bytes, "bytes", gib, "bulk: total bytes to transfer")
	flag.DurationVar(&opts.duration, "duration", 5*time.Second, "rtt: how long to run")
	flag.IntVar(&opts.concurrency, "concurrency", 32, "rtt: concurrent round-trip loops")
	// Piko moves stream data with io.Copy, whose buffer is 32 KiB.
	flag.IntVar(&opts.bufSize, "buf", 32*1024, "bulk: read and write size")
	flag.StringVar(&opts.direction, "direction", "down", "bulk: down (the server writes to the client, as Piko sends requests) or up (the client writes, as an agent sends responses; masked on the WebSocket)")
	flag.Parse()

	if opts.transport != "ws" && opts.transport != "tcp" {
		fatalf("-transport must be ws or tcp")
	}
	if opts.bytes <= 0 || opts.duration <= 0 || opts.concurrency <= 0 || opts.bufSize <= 0 {
		fatalf("-bytes, -duration, -concurrency and -buf must be positive")
	}

	for name := range strings.SplitSeq(*benches, ",") {
		var err error
		switch name = strings.TrimSpace(name); name {
		case "bulk-1":
			err = benchBulk(opts, name, 1)
		case "bulk-64":
			err = benchBulk(opts, name, 64)
		case "rtt":
			err = benchRTT(opts)
		case "":
			continue
		default:
			fatalf("unknown benchmark %q", name)
		}
		if err != nil {
			fatalf("%s: %v", name, err)
		}
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "mux-bench: "+format+"\n", args...)
	os.Exit(1)
}

// pair is a connected yamux server and client session.
type pair struct {
	server, client *yamux.Session
	closeFn        func()
}

func (p *pair) close() {
	p.client.Close()
	p.server.Close()
	p.closeFn()
}

// connect builds a fresh session pair over the chosen transport, with the
// server in the role of Piko's server (yamux server, opens the streams) and
// the client in the role of the agent.
func connect(transport string) (*pair, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	var serverConn, clientConn net.Conn
	var closeFn func()
	switch transport {
	case "tcp":
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}()
		if clientConn, err = net.Dial("tcp", ln.Addr().String()); err != nil {
			ln.Close()
			return nil, err
		}
		serverConn = <-accepted
		ln.Close()
		if serverConn == nil {
			clientConn.Close()
			return nil, errors.New("accept failed")
		}
		closeFn = func() {}
	case "ws":
		upgraded := make(chan *websocket.Conn, 1)
		upgrader := wsconn.NewUpgrader()
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ws, err := upgrader.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			upgraded <- ws
		})}
		// Serve's error only reports the listener closing at the end.
		go srv.Serve(ln)
		c, err := wsconn.Dial(context.Background(), "ws://"+ln.Addr().String()+"/piko/v1/upstream/bench", "", nil)
		if err != nil {
			srv.Close()
			return nil, err
		}
		clientConn = c
		serverConn = wsconn.New(<-upgraded)
		closeFn = func() { srv.Close() }
	}

	server, err := yamux.Server(serverConn, pikomux.Config("bench-server", pikomux.DefaultKeepAlive, pikomux.DefaultKeepAliveTimeout))
	if err != nil {
		return nil, err
	}
	client, err := yamux.Client(clientConn, pikomux.Config("bench-client", pikomux.DefaultKeepAlive, pikomux.DefaultKeepAliveTimeout))
	if err != nil {
		server.Close()
		return nil, err
	}
	return &pair{server: server, client: client, closeFn: closeFn}, nil
}

// serveClient accepts streams on the client session and runs handle on
// each, until the session closes.
func serveClient(sess *yamux.Session, handle func(*yamux.Stream)) {
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go handle(st)
	}
}

// cpuTime returns the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchBulk has the server open n streams and write opts.bytes in total
// across them while the client reads and discards. The clock stops when the
// last reader sees EOF.
func benchBulk(opts options, name string, n int) error {
	p, err := connect(opts.transport)
	if err != nil {
		return err
	}
	defer p.close()

	per := opts.bytes / int64(n)
	total := per * int64(n)
	buf := make([]byte, opts.bufSize)
	for i := range buf {
		buf[i] = byte(i)
	}
	// The server always opens the streams, as Piko's server does; the
	// direction says which side then writes.
	type result struct {
		n   int64
		err error
	}
	results := make(chan result, n)
	var writers sync.WaitGroup
	var writeErr atomic.Pointer[error]
	startCPU, start := cpuTime(), time.Now()
	switch opts.direction {
	case "down":
		go serveClient(p.client, func(st *yamux.Stream) {
			defer st.Close()
			got, err := drain(st, opts.bufSize)
			results <- result{n: got, err: err}
		})
		for range n {
			writers.Go(func() {
				if err := writeStream(p.server, per, buf); err != nil {
					writeErr.CompareAndSwap(nil, &err)
				}
			})
		}
	case "up":
		go serveClient(p.client, func(st *yamux.Stream) {
			defer st.Close()
			if err := writeAll(st, per, buf); err != nil {
				writeErr.CompareAndSwap(nil, &err)
			}
		})
		for range n {
			st, err := p.server.OpenStream()
			if err != nil {
				return err
			}
			go func() {
				defer st.Close()
				got, err := drain(st, opts.bufSize)
				results <- result{n: got, err: err}
			}()
		}
	default:
		return fmt.Errorf("unknown direction %q", opts.direction)
	}
	var received int64
	for range n {
		r := <-results
		if r.err != nil {
			return r.err
		}
		received += r.n
	}
	writers.Wait()
	if e := writeErr.Load(); e != nil {
		return *e
	}
	elapsed, cpu := time.Since(start), cpuTime()-startCPU
	if received != total {
		return fmt.Errorf("received %d bytes, want %d", received, total)
	}
	fmt.Printf("RESULT %s %.1f MiB/s\n", name, float64(total)/mib/elapsed.Seconds())
	fmt.Printf("RESULT %s-cpu %.3f s/GiB\n", name, cpu.Seconds()/(float64(total)/gib))
	return nil
}

// drain reads a stream to EOF and counts the bytes.
func drain(st *yamux.Stream, bufSize int) (int64, error) {
	buf := make([]byte, bufSize)
	var got int64
	for {
		k, err := st.Read(buf)
		got += int64(k)
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
	}
}

// writeAll writes size bytes of buf, repeated, and half-closes the stream.
func writeAll(st *yamux.Stream, size int64, buf []byte) error {
	for size > 0 {
		chunk := buf[:min(int64(len(buf)), size)]
		if _, err := st.Write(chunk); err != nil {
			return err
		}
		size -= int64(len(chunk))
	}
	return st.Close()
}

// writeStream opens a stream, writes size bytes and half-closes it.
func writeStream(sess *yamux.Session, size int64, buf []byte) error {
	st, err := sess.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	return writeAll(st, size, buf)
}

// benchRTT counts stream round trips: the server opens a stream and sends
// 100 bytes; the client reads them, answers 100 bytes and closes; the server
// reads the answer and EOF, then closes. Opening the stream is part of each
// round trip, as it is for every request Piko proxies.
func benchRTT(opts options) error {
	p, err := connect(opts.transport)
	if err != nil {
		return err
	}
	defer p.close()

	go serveClient(p.client, func(st *yamux.Stream) {
		defer st.Close()
		var req [rttSize]byte
		if _, err := io.ReadFull(st, req[:]); err != nil {
			return
		}
		st.Write(req[:])
	})

	var count atomic.Int64
	var firstErr atomic.Pointer[error]
	deadline := time.Now().Add(opts.duration)
	startCPU, start := cpuTime(), time.Now()
	var loops sync.WaitGroup
	for range opts.concurrency {
		loops.Go(func() {
			var msg, resp [rttSize]byte
			for time.Now().Before(deadline) {
				if err := roundTrip(p.server, msg[:], resp[:]); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				count.Add(1)
			}
		})
	}
	loops.Wait()
	elapsed, cpu := time.Since(start), cpuTime()-startCPU

	if e := firstErr.Load(); e != nil {
		return *e
	}
	n := count.Load()
	fmt.Printf("RESULT rtt %.0f rt/s\n", float64(n)/elapsed.Seconds())
	fmt.Printf("RESULT rtt-cpu %.2f us/rt\n", float64(cpu.Microseconds())/float64(n))
	return nil
}

func roundTrip(sess *yamux.Session, msg, resp []byte) error {
	st, err := sess.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(st, resp); err != nil {
		return err
	}
	var b [1]byte
	if n, err := st.Read(b[:]); n != 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("expected EOF after the response, got %d bytes, %v", n, err)
	}
	return st.Close()
}
