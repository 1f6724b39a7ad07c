// Command mux-peer is the Go side of the Piko upstream interop tests: yamux
// (Piko's fork, with Piko's settings) over a WebSocket byte stream, in
// either role.
//
//	mux-peer -mode server [-scenarios a,b,c]   # Go driver, yamux server
//	mux-peer -mode client -url ws://...        # Go responder, yamux client
//
// The per-stream command protocol both roles speak is the contract with the
// Rust implementation; it is written down in interop/README.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"piko-interop/internal/pikomux"
)

func main() {
	mode := flag.String("mode", "", "server (driver, yamux server) or client (responder, yamux client)")
	url := flag.String("url", "", "client mode: WebSocket URL to dial, e.g. ws://127.0.0.1:PORT/piko/v1/upstream/test")
	scenarios := flag.String("scenarios", strings.Join(scenarioNames(), ","), "server mode: comma-separated scenarios to run, in order")
	keepAlive := flag.Duration("keepalive", pikomux.DefaultKeepAlive, "yamux KeepAliveInterval")
	keepAliveTimeout := flag.Duration("keepalive-timeout", pikomux.DefaultKeepAliveTimeout, "yamux ConnectionWriteTimeout (Go yamux's ping timeout)")
	connectTimeout := flag.Duration("connect-timeout", 60*time.Second, "server mode: how long to wait for the peer to connect")
	flag.Parse()

	if *keepAlive <= 0 || *keepAliveTimeout <= 0 {
		fatalf("-keepalive and -keepalive-timeout must be positive")
	}

	switch *mode {
	case "server":
		var names []string
		for name := range strings.SplitSeq(*scenarios, ",") {
			if name = strings.TrimSpace(name); name != "" {
				names = append(names, name)
			}
		}
		if err := checkScenarioNames(names); err != nil {
			fatalf("%v", err)
		}
		os.Exit(runServer(names, *keepAlive, *keepAliveTimeout, *connectTimeout))
	case "client":
		if *url == "" {
			fatalf("-url is required in client mode")
		}
		os.Exit(runClient(*url, *keepAlive, *keepAliveTimeout))
	default:
		fatalf("-mode must be server or client")
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "mux-peer: "+format+"\n", args...)
	os.Exit(2)
}
