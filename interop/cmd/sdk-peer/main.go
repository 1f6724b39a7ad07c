// Command sdk-peer is the Go side of the SDK interop tests: it plays the
// Go SDK roles of spec §4 and §12 with Piko's own wire code (gorilla
// WebSocket through Piko's adapter, Piko's yamux fork with Piko's settings).
//
//	sdk-peer -mode dial -url ws://HOST/_piko/v1/tcp/ID -bytes N
//	sdk-peer -mode forward -url ws://HOST/piko/v1/upstream/ID -addr HOST:PORT
//	sdk-peer -mode http -url ws://HOST/piko/v1/upstream/ID
//
// Every mode takes -token (sent as "Authorization: Bearer", as Piko's SDK
// sends its token) and -ca (a PEM file replacing the system roots for wss://
// URLs, as the SDK's TLS config does).
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
	"crypto/tls"
	"crypto/x509"
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
	token := flag.String("token", "", "bearer token sent when connecting")
	ca := flag.String("ca", "", "PEM file of CAs verifying a wss:// server instead of the system's")
	flag.Parse()
	tlsConfig, err := rootCAs(*ca)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sdk-peer: %v\n", err)
		os.Exit(2)
	}
	server := server{url: *url, token: *token, tls: tlsConfig}
	switch *mode {
	case "dial":
		os.Exit(dial(server, *bytes))
	case "forward":
		os.Exit(forward(server, *addr))
	case "http":
		os.Exit(serveHTTP(server))
	default:
		fmt.Fprintln(os.Stderr, "sdk-peer: -mode must be dial, forward or http")
		os.Exit(2)
	}
}

// server is where and how to connect.
type server struct {
	url   string
	token string
	tls   *tls.Config
}

// rootCAs is the TLS config trusting the CAs in the PEM file at path; nil
// (Go's defaults) when path is empty.
func rootCAs(path string) (*tls.Config, error) {
	if path == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", path)
	}
	return &tls.Config{RootCAs: pool}, nil
}

func (s server) dial() (*wsconn.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wsconn.HandshakeTimeout)
	defer cancel()
	return wsconn.Dial(ctx, s.url, s.token, s.tls)
}

func dial(server server, n int64) int {
	conn, err := server.dial()
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
func listen(server server) (*yamux.Session, error) {
	conn, err := server.dial()
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", server.url, err)
	}
	sess, err := yamux.Client(conn, pikomux.Config("client", pikomux.DefaultKeepAlive, pikomux.DefaultKeepAliveTimeout))
	if err != nil {
		return nil, fmt.Errorf("yamux client: %w", err)
	}
	fmt.Println("connected")
	return sess, nil
}

func serveHTTP(server server) int {
	sess, err := listen(server)
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

func forward(server server, addr string) int {
	sess, err := listen(server)
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
