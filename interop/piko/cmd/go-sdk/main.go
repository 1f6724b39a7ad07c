// Command go-sdk plays the Go SDK's roles with Piko v0.9.0's own client
// package (github.com/andydunstall/piko/client), so our server and agent are
// tested against the code Piko's Go users run, not a re-implementation.
//
//	go-sdk -mode dial -url http://PROXY -endpoint ID -bytes N [-write W]
//	go-sdk -mode listen -url http://UPSTREAM -endpoint ID
//	go-sdk -mode forward -url http://UPSTREAM -endpoint ID -addr HOST:PORT
//
// Every mode takes -token (client.Upstream.Token / client.Dialer.Token) and
// -ca (a PEM file whose CAs verify an https:// server, as the SDK's TLSConfig).
//
// dial is client.Dialer: it opens one connection to an echo service behind
// ID, writes N pattern bytes in Write calls of W bytes (0: all of them in one
// call, which Piko's WebSocket adapter sends as one message) while reading
// them back, checks them, and prints PASS or FAIL (exit 0 or 1).
//
// listen is client.Upstream.Listen served by net/http: it prints
// "connected" once registered, then answers every request with
// "<method> <path> <body>" until killed.
//
// forward is client.Upstream.ListenAndForward to ADDR: it prints "connected"
// once registered, then forwards until killed.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/andydunstall/piko/client"

	"piko-interop/internal/pattern"
)

// patience bounds every step, so a broken peer fails the test instead of
// hanging it.
const patience = 60 * time.Second

func main() {
	mode := flag.String("mode", "", "dial, listen or forward")
	rawURL := flag.String("url", "", "the server's proxy port (dial) or upstream port (listen, forward)")
	endpoint := flag.String("endpoint", "", "endpoint ID")
	bytes := flag.Int64("bytes", 1<<20, "dial: bytes to send and expect back")
	write := flag.Int64("write", pattern.ChunkSize, "dial: bytes per Write call; 0 writes them all in one call")
	addr := flag.String("addr", "", "forward: local address each connection is forwarded to")
	token := flag.String("token", "", "token sent when connecting")
	ca := flag.String("ca", "", "PEM file of CAs verifying an https:// server instead of the system's")
	flag.Parse()

	serverURL, err := url.Parse(*rawURL)
	if err != nil || *endpoint == "" {
		fmt.Fprintln(os.Stderr, "go-sdk: -url must be a URL and -endpoint is required")
		os.Exit(2)
	}
	tlsConfig, err := rootCAs(*ca)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-sdk: %v\n", err)
		os.Exit(2)
	}
	switch *mode {
	case "dial":
		dialer := &client.Dialer{URL: serverURL, Token: *token, TLSConfig: tlsConfig}
		os.Exit(dial(dialer, *endpoint, *bytes, *write))
	case "listen", "forward":
		upstream := &client.Upstream{URL: serverURL, Token: *token, TLSConfig: tlsConfig}
		os.Exit(listen(upstream, *mode, *endpoint, *addr))
	default:
		fmt.Fprintln(os.Stderr, "go-sdk: -mode must be dial, listen or forward")
		os.Exit(2)
	}
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

func dial(dialer *client.Dialer, endpoint string, n, write int64) int {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	conn, err := dialer.Dial(ctx, endpoint)
	if err != nil {
		fmt.Printf("FAIL dial: %v\n", err)
		return 1
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(patience))
	written := make(chan error, 1)
	go func() { written <- writePattern(conn, n, write) }()
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

// writePattern writes n pattern bytes in Write calls of size bytes (all of
// them at once when size is 0).
func writePattern(w io.Writer, n, size int64) error {
	if size > 0 && size <= pattern.ChunkSize {
		return pattern.Write(w, 0, n)
	}
	if size == 0 || size > n {
		size = n
	}
	buf := make([]byte, size)
	for off := int64(0); off < n; {
		chunk := buf[:min(size, n-off)]
		for i := range chunk {
			chunk[i] = byte((off + int64(i)) % pattern.Period)
		}
		if _, err := w.Write(chunk); err != nil {
			return fmt.Errorf("write at offset %d: %w", off, err)
		}
		off += int64(len(chunk))
	}
	return nil
}

// readPattern reads exactly n bytes and checks they are the pattern. (A Piko
// connection cannot half-close, so the echo never ends: read what was sent.)
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
				return off, fmt.Errorf("byte %d is %d, want %d", off+int64(i), chunk[i], want[i])
			}
		}
		off += int64(len(chunk))
	}
	return off, nil
}

func listen(upstream *client.Upstream, mode, endpoint, addr string) int {
	// Not bounded by patience: the forwarder lives as long as this context. A server
	// that never answers is the test's timeout to catch.
	ctx := context.Background()
	if mode == "forward" {
		forwarder, err := upstream.ListenAndForward(ctx, endpoint, addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "go-sdk: listen: %v\n", err)
			return 1
		}
		fmt.Println("connected")
		err = forwarder.Wait()
		fmt.Fprintf(os.Stderr, "go-sdk: forwarder ended: %v\n", err)
		return 0
	}
	ln, err := upstream.Listen(ctx, endpoint)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-sdk: listen: %v\n", err)
		return 1
	}
	fmt.Println("connected")
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), body)
	})
	err = http.Serve(ln, handler)
	fmt.Fprintf(os.Stderr, "go-sdk: listener ended: %v\n", err)
	return 0
}
