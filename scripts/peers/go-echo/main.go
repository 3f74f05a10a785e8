// go-echo: the idiomatic Go echo server, a peer for benchmarking edgeloop:
// one goroutine per connection, a read/write loop over a buffer (what
// io.Copy does), TCP_NODELAY (Go's default). Standard library only.
//
// usage: go-echo IP:PORT   (port 0 = pick a free port)
// build: GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod go build -o go-echo .
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
)

// bufSize per connection: 8 KiB, fair on memory next to the other peers
// (io.Copy would allocate 32 KiB). write blocks until everything is sent,
// so this is also the most output a connection can have pending.
const bufSize = 8 * 1024

func echo(c net.Conn) {
	defer c.Close()
	buf := make([]byte, bufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// io.EOF (half-close): everything read was already written back.
			return
		}
	}
}

// listen opens an IPv4 listener with SO_REUSEADDR and a backlog of exactly
// 1024, as every peer does (net.Listen would use net.core.somaxconn instead).
func listen(addr string) (net.Listener, error) {
	ta, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return nil, err
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(fd) // net.FileListener dups it
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		return nil, err
	}
	sa := &syscall.SockaddrInet4{Port: ta.Port}
	copy(sa.Addr[:], ta.IP.To4())
	if err := syscall.Bind(fd, sa); err != nil {
		return nil, err
	}
	if err := syscall.Listen(fd, 1024); err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "listener")
	ln, err := net.FileListener(f)
	f.Close()
	return ln, err
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-echo IP:PORT")
		os.Exit(2)
	}
	ln, err := listen(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	os.Stdout.Sync()

	// GOMAXPROCS defaults to the number of cores (idiomatic Go); set
	// GOMAXPROCS=1 in the environment for a single-threaded comparison.
	// SIGPIPE on a socket is ignored by the Go runtime; exit 0 on TERM/INT.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		os.Exit(0)
	}()

	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "accept:", err)
			continue
		}
		go echo(c) // TCP_NODELAY is on by default for Go TCP connections
	}
}
