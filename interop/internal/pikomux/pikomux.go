// Package pikomux builds yamux sessions configured the way Piko v0.9.0
// builds them: both server/upstream (yamux.Server) and client/upstream.go
// (yamux.Client) start from the fork's yamux.DefaultConfig() and change
// only where log lines go. The defaults that matter on the wire are:
//
//	AcceptBacklog          256
//	KeepAliveInterval      30 s (EnableKeepAlive true)
//	ConnectionWriteTimeout 10 s (also the keep-alive ping timeout)
//	MaxStreamWindowSize    256 KiB (fixed; no auto-tuning in Go yamux)
//	StreamOpenTimeout      75 s (missing ACK closes the whole session)
//	StreamCloseTimeout     5 min
//
// The interop peer may shorten the keep-alive settings so that a run
// exercises pings in seconds rather than minutes.
package pikomux

import (
	"log"
	"os"
	"time"

	"github.com/andydunstall/yamux"
)

// Piko's keep-alive defaults, repeated here so flags can show them.
const (
	DefaultKeepAlive        = 30 * time.Second
	DefaultKeepAliveTimeout = 10 * time.Second
)

// Config returns Piko's yamux configuration with the given keep-alive
// interval and keep-alive timeout. Go yamux has no separate ping timeout: it
// waits ConnectionWriteTimeout for the pong, which is also the limit for
// queueing a frame for sending.
//
// role prefixes yamux's own log lines; logs go to stderr (Piko sends them to
// its logger at warn level) so that stdout stays machine-readable.
func Config(role string, keepAlive, keepAliveTimeout time.Duration) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.KeepAliveInterval = keepAlive
	cfg.ConnectionWriteTimeout = keepAliveTimeout
	cfg.LogOutput = nil
	cfg.Logger = log.New(os.Stderr, "yamux "+role+": ", log.LstdFlags|log.Lmicroseconds)
	return cfg
}
