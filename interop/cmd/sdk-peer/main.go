// Command sdk-peer is the Go side of the SDK interop tests: it plays the
// Go SDK roles of spec §4 and §12 with Piko's own wire code (gorilla
// WebSocket through Piko's adapter, Piko's yamux fork with Piko's settings).
//
//	sdk-peer -mode dial -url ws://HOST/_piko/v1/tcp/ID -bytes N
//	sdk-peer -mode forward -url ws://HOST/piko/v1/upstream/ID -addr HOST:PORT
//	sdk-peer -mode http -url ws://HOST/piko/v1/upstream/ID
//
// dial is the SDK's Dialer: it opens one connection through a proxy port,
// writes N pattern bytes while reading them back from an echo service, checks
// them, closes, and prints PASS or FAIL (exit 0 or 1).
//
// forward is the SDK's ListenAndForward: it registers as an upstream, prints
// "connected" once the session is up, then dials ADDR for every stream and
// copies bytes both ways, closing both when either direction ends (Piko's
// behaviour), until killed.
//
// http is the SDK's Listener passed to net/http's server, as Piko's Go users
// serve HTTP: it prints "connected", then answers every request with
// "<method> <path> <body>" until killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/andydunstall/yamux"

	"piko-interop/internal/pattern"
	"piko-interop/internal/pikomux"
	"piko-interop/internal/wsconn"
)

func main() {
	mode := flag.String("mode", "", "dial, forward or http")
	url := flag.String("url", "", "WebSocket URL: the proxy port's TCP route (dial) or the upstream port's route (forward)")
	bytes := flag.Int64("bytes", 1<<20, "dial: bytes to send and expect back")
	addr := flag.String("addr", "", "forward: local address each stream is forwarded to")
	flag.Parse()
	switch *mode {
	case "dial":
		os.Exit(dial(*url, *bytes))
	case "forward":
		os.Exit(forward(*url, *addr))
	case "http":
		os.Exit(serveHTTP(*url))
	default:
		fmt.Fprintln(os.Stderr, "sdk-peer: -mode must be dial, forward or http")
		os.Exit(2)
	}
}

func dial(url string, n int64) int {
	ctx, cancel := context.WithTimeout(context.Background(), wsconn.HandshakeTimeout)
	conn, err := wsconn.Dial(ctx, url, "")
	cancel()
	if err != nil {
		fmt.Printf("FAIL dial: %v\n", err)
		return 1
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	written := make(chan error, 1)
	go func() { written <- pattern.Write(conn, 0, n) }()
	if got, err := readPattern(conn, n); err != nil {
		fmt.Printf("FAIL echo: %v after %d bytes\n", err, got)
		return 1
	}
	if err := <-written; err != nil {
		fmt.Printf("FAIL write: %v\n", err)
		return 1
	}
	fmt.Println("PASS")
	return 0
}

// listen registers as an upstream the way Piko's Go SDK does: a WebSocket
// through Piko's adapter, then a yamux client session whose accepted streams
// are the endpoint's connections.
func listen(url string) (*yamux.Session, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wsconn.HandshakeTimeout)
	conn, err := wsconn.Dial(ctx, url, "")
	cancel()
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	sess, err := yamux.Client(conn, pikomux.Config("client", pikomux.DefaultKeepAlive, pikomux.DefaultKeepAliveTimeout))
	if err != nil {
		return nil, fmt.Errorf("yamux client: %w", err)
	}
	fmt.Println("connected")
	return sess, nil
}

func serveHTTP(url string) int {
	sess, err := listen(url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sdk-peer: %v\n", err)
		return 1
	}
	defer sess.Close()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), body)
	})
	err = http.Serve(sess, handler)
	fmt.Fprintf(os.Stderr, "sdk-peer: session ended: %v\n", err)
	return 0
}

func forward(url, addr string) int {
	sess, err := listen(url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sdk-peer: %v\n", err)
		return 1
	}
	defer sess.Close()
	for {
		stream, err := sess.Accept()
		if err != nil {
			fmt.Fprintf(os.Stderr, "sdk-peer: session ended: %v\n", err)
			return 0
		}
		go relay(stream, addr)
	}
}

// relay is Piko's forwarder: dial, copy both ways, and close both as soon as
// either direction ends.
func relay(stream net.Conn, addr string) {
	defer stream.Close()
	local, err := net.Dial("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sdk-peer: failed to dial upstream: %v\n", err)
		return
	}
	defer local.Close()
	var once sync.Once
	done := make(chan struct{})
	end := func() { once.Do(func() { close(done) }) }
	go func() { _, _ = io.Copy(local, stream); end() }()
	go func() { _, _ = io.Copy(stream, local); end() }()
	<-done
}

// readPattern reads exactly n bytes and checks they are the pattern. (A Piko
// client cannot half-close, so the echo never ends: read what was sent.)
func readPattern(r io.Reader, n int64) (int64, error) {
	buf := make([]byte, pattern.ChunkSize)
	var off int64
	for off < n {
		chunk := buf[:min(int64(len(buf)), n-off)]
		if _, err := io.ReadFull(r, chunk); err != nil {
			return off, err
		}
		want := pattern.Bytes(off, len(chunk))
		for i := range chunk {
			if chunk[i] != want[i] {
				return off + int64(i), fmt.Errorf("wrong byte at offset %d", off+int64(i))
			}
		}
		off += int64(len(chunk))
	}
	return off, nil
}
