// go-chat: a one-room chat server as a Go user would write it when fan-out
// speed matters — the peer that scripts/chat-fanout.sh (PEERS=1) measures
// edgeloop's chat against. Standard library only.
//
// usage: go-chat IP:PORT   (port 0 = pick a free port)
// build: GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod go build -o go-chat .
//
// The design (the fast one, not a channel per message):
//   - One room behind a sync.Mutex; every member has a pending output
//     buffer ([]byte) guarded by it.
//   - A reader goroutine per connection takes all the complete lines of one
//     read, formats them once ("NICK: TEXT\n" each) into a batch and, under
//     the lock, copies that batch into every member's buffer (the sender's
//     included), waking a member's writer (a channel of capacity 1) when its
//     buffer goes from empty to non-empty.
//   - A writer goroutine per member swaps its pending buffer with an empty
//     one (double buffering: no allocation in the steady state) and sends all
//     of it with one Write.
//
// The subset of edgeloop's chat protocol that scripts/chat/fanout.c uses:
//   - on connect, "* guestN joined" to every member, the newcomer included
//     (it is the newcomer's first line: the join is done in the accept loop,
//     so members join in accept order);
//   - every line ("\n" or "\r\n") is "guestN: TEXT" to every member, the
//     sender included, in the same order for everyone; no "/" commands;
//   - a member that leaves (EOF, error) is announced as "* guestN left";
//   - slow consumer: a member whose pending output (queued plus the write in
//     flight) passes 4 MiB is disconnected at once and announced as left.
//
// Edge cases: a line longer than the 64 KiB read buffer disconnects its
// sender (bounded memory); a half-close (EOF) leaves the room and the writer
// still sends what it owes, then closes; a write error or a cut closes the
// connection, which ends the reader too. GOMAXPROCS follows the CPU affinity
// (taskset -c 0 gives 1). SIGPIPE on a socket is ignored by the Go runtime;
// SIGTERM/SIGINT exit 0.
package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
)

// maxOutbuf is edgeloop's --max-outbuf default.
const maxOutbuf = 4 * 1024 * 1024

// readBuf per connection, and so the longest line accepted.
const readBuf = 64 * 1024

// readChunk is the most one Read takes (go-echo's buffer). A Read that finds
// data does not yield, so with GOMAXPROCS=1 a flooding sender's reader runs
// until it has read everything buffered or is preempted (10 ms): bigger
// reads would let it fill every member's 4 MiB before any writer runs.
const readChunk = 8 * 1024

type member struct {
	conn *net.TCPConn
	nick string
	wake chan struct{} // capacity 1: new output, or the member left

	// Guarded by room.mu.
	pending  []byte // output not yet handed to the socket
	inflight int    // bytes of the Write in flight (they count towards the limit)
	slot     int    // index in room.members; -1 once out of the room
	cut      bool   // cut as a slow consumer: the connection is closed
}

type room struct {
	mu        sync.Mutex
	members   []*member
	nextGuest int
}

func (m *member) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// broadcast copies b into every member's buffer, then cuts the members that
// passed the limit and announces them (which may cut more). r.mu is held.
func (r *room) broadcast(b []byte) {
	var cut []*member
	for _, m := range r.members {
		wasEmpty := len(m.pending) == 0
		m.pending = append(m.pending, b...)
		if len(m.pending)+m.inflight > maxOutbuf {
			cut = append(cut, m)
		} else if wasEmpty {
			m.signal()
		}
	}
	for _, m := range cut {
		if r.remove(m) {
			m.cut = true
			m.pending = nil
			m.conn.Close() // ends its reader and its writer's Write
			m.signal()
			r.broadcast([]byte("* " + m.nick + " left\n"))
		}
	}
}

// remove takes m out of the room; false if it was already out. r.mu is held.
func (r *room) remove(m *member) bool {
	i := m.slot
	if i < 0 {
		return false
	}
	last := len(r.members) - 1
	r.members[i] = r.members[last]
	r.members[i].slot = i
	r.members[last] = nil
	r.members = r.members[:last]
	m.slot = -1
	return true
}

// leave takes m out of the room and announces it, once; its writer then
// sends what is still owed and closes.
func (r *room) leave(m *member) {
	r.mu.Lock()
	if r.remove(m) {
		r.broadcast([]byte("* " + m.nick + " left\n"))
	}
	r.mu.Unlock()
	m.signal()
}

func (r *room) join(c *net.TCPConn) *member {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextGuest++
	m := &member{conn: c, nick: "guest" + strconv.Itoa(r.nextGuest), wake: make(chan struct{}, 1), slot: len(r.members)}
	r.members = append(r.members, m)
	r.broadcast([]byte("* " + m.nick + " joined\n"))
	return m
}

func (r *room) reader(m *member) {
	defer r.leave(m)
	buf := make([]byte, readBuf)
	filled := 0
	var batch []byte
	prefix := []byte(m.nick + ": ")
	for filled < len(buf) {
		n, err := m.conn.Read(buf[filled:min(filled+readChunk, len(buf))])
		filled += n
		// All the complete lines of this read, formatted once.
		if end := bytes.LastIndexByte(buf[:filled], '\n'); end >= 0 {
			batch = batch[:0]
			rest := buf[:end+1]
			for len(rest) > 0 {
				i := bytes.IndexByte(rest, '\n')
				line := rest[:i]
				rest = rest[i+1:]
				line = bytes.TrimSuffix(line, []byte{'\r'})
				batch = append(batch, prefix...)
				batch = append(batch, line...)
				batch = append(batch, '\n')
			}
			r.mu.Lock()
			if m.slot >= 0 {
				r.broadcast(batch)
			}
			r.mu.Unlock()
			filled = copy(buf, buf[end+1:filled])
		}
		if err != nil {
			return // io.EOF (half-close) or an error
		}
	}
}

func (r *room) writer(m *member) {
	var out []byte
	for {
		r.mu.Lock()
		m.inflight = 0
		out, m.pending = m.pending, out[:0]
		m.inflight = len(out)
		gone, cut := m.slot < 0, m.cut
		r.mu.Unlock()
		if cut {
			return
		}
		if len(out) > 0 {
			if _, err := m.conn.Write(out); err != nil {
				m.conn.Close()
				r.leave(m)
				return
			}
			continue // more may have come during the Write
		}
		if gone {
			// Out of the room (reader done) and nothing more is owed.
			m.conn.Close()
			return
		}
		<-m.wake
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
		fmt.Fprintln(os.Stderr, "usage: go-chat IP:PORT")
		os.Exit(2)
	}
	ln, err := listen(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	os.Stdout.Sync()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		os.Exit(0)
	}()

	r := &room{}
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "accept:", err)
			continue
		}
		// TCP_NODELAY is on by default for Go TCP connections.
		m := r.join(c.(*net.TCPConn))
		go r.reader(m)
		go r.writer(m)
	}
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}
