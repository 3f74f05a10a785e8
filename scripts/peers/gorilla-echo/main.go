// gorilla-echo: the WebSocket echo server a Go user would write with
// gorilla/websocket, after its own echo example: net/http serves the
// upgrade, one goroutine per connection reads a message and writes it back
// with the same type (gorilla answers pings and closes itself).
//
// usage: gorilla-echo IP:PORT   (port 0 = pick a free port)
//
// Built with Debian's golang-github-gorilla-websocket-dev in GOPATH mode
// (no module proxy needed): see ../build.sh.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}

func echo(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		mt, message, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(mt, message); err != nil {
			return
		}
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gorilla-echo IP:PORT")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	http.HandleFunc("/", echo)
	if err := http.Serve(ln, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
