module piko-interop

go 1.25.5

require (
	github.com/andydunstall/yamux v0.1.6
	github.com/gorilla/websocket v1.5.3
)
