//! tokio-chat: a one-room chat server as a Rust user would write it with
//! tokio's current-thread runtime when fan-out speed matters — the peer that
//! `scripts/chat-fanout.sh` (PEERS=1) measures edgeloop's chat against.
//!
//! usage: tokio-chat IP:PORT   (port 0 = pick a free port)
//!
//! The design (the fast one, not tokio's broadcast-channel example):
//! - One room, `Rc<RefCell<Room>>`, on a `LocalSet` (single thread, no locks).
//! - One task per connection; the stream is split into borrowed halves and a
//!   reader and a writer future run side by side in that task.
//! - Every member has a pending output buffer (`Vec<u8>`). The reader takes
//!   all the complete lines of one read, formats them once (`NICK: TEXT\n`
//!   each) into a batch, and copies that batch into every member's buffer
//!   (the sender's included), waking a member's writer (`Notify`) when its
//!   buffer goes from empty to non-empty.
//! - A writer swaps its pending buffer with an empty one (double buffering:
//!   no allocation in the steady state) and sends all of it with one
//!   `write_all`.
//!
//! The subset of edgeloop's chat protocol that `scripts/chat/fanout.c` uses:
//! - on connect, `* guestN joined` to every member, the newcomer included
//!   (it is the newcomer's first line);
//! - every line (`\n` or `\r\n`) is `guestN: TEXT` to every member, the
//!   sender included, in the same order for everyone; no `/` commands;
//! - a member that leaves (EOF, error) is announced as `* guestN left`;
//! - slow consumer: a member whose pending output (queued plus the write in
//!   flight) passes 4 MiB is disconnected at once and announced as left.
//!
//! Edge cases: a line longer than the 64 KiB read buffer disconnects its
//! sender (bounded memory); a half-close (EOF) leaves the room and the
//! writer still sends what it owes, then the connection closes; a write
//! error or a cut ends both halves at once. SIGPIPE is ignored by Rust's
//! runtime; SIGTERM/SIGINT exit 0.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

/// Pending output above which a member is cut (edgeloop's --max-outbuf default).
const MAX_OUTBUF: usize = 4 * 1024 * 1024;
/// Read buffer per connection, and so the longest line accepted.
const READ_BUF: usize = 64 * 1024;
/// The most one read takes (the size BufReader uses). A read that is ready
/// does not yield to the other tasks, and tokio's cooperative budget allows
/// 128 of them per poll: with 64 KiB reads one flooding sender could fill
/// every member's 4 MiB before any writer runs, and cut them all.
const READ_CHUNK: usize = 8 * 1024;

struct Member {
    nick: String,
    /// Output not yet handed to the socket.
    pending: RefCell<Vec<u8>>,
    /// Bytes of the `write_all` in flight (they count towards the limit).
    inflight: Cell<usize>,
    /// Wakes the writer: new output, or the member left.
    wake: Notify,
    /// Ends the connection at once (the writer may be stuck in a write).
    kill: Notify,
    /// Out of the room because its pending output passed MAX_OUTBUF.
    cut: Cell<bool>,
    /// Index in `Room::members`, while it is in the room.
    slot: Cell<Option<usize>>,
}

#[derive(Default)]
struct Room {
    members: Vec<Rc<Member>>,
    next_guest: u64,
}

impl Room {
    /// Copy `bytes` into every member's pending buffer; cut the members that
    /// pass the limit and announce them (which may cut more).
    fn broadcast(&mut self, bytes: &[u8]) {
        let mut cut = Vec::new();
        for m in &self.members {
            let mut p = m.pending.borrow_mut();
            let was_empty = p.is_empty();
            p.extend_from_slice(bytes);
            if p.len() + m.inflight.get() > MAX_OUTBUF {
                cut.push(Rc::clone(m));
            } else if was_empty {
                m.wake.notify_one();
            }
        }
        for m in cut {
            if self.remove(&m) {
                m.cut.set(true);
                m.pending.borrow_mut().clear();
                m.kill.notify_one();
                self.broadcast(format!("* {} left\n", m.nick).as_bytes());
            }
        }
    }

    /// Take `m` out of the room; false if it was already out.
    fn remove(&mut self, m: &Member) -> bool {
        let Some(i) = m.slot.take() else { return false };
        self.members.swap_remove(i);
        if let Some(moved) = self.members.get(i) {
            moved.slot.set(Some(i));
        }
        true
    }
}

async fn serve(room: Rc<RefCell<Room>>, mut stream: TcpStream) {
    let me = {
        let mut r = room.borrow_mut();
        r.next_guest += 1;
        let me = Rc::new(Member {
            nick: format!("guest{}", r.next_guest),
            pending: RefCell::new(Vec::new()),
            inflight: Cell::new(0),
            wake: Notify::new(),
            kill: Notify::new(),
            cut: Cell::new(false),
            slot: Cell::new(Some(r.members.len())),
        });
        r.members.push(Rc::clone(&me));
        r.broadcast(format!("* {} joined\n", me.nick).as_bytes());
        me
    };
    let (mut rd, mut wr) = stream.split();

    let reader = async {
        let mut buf = vec![0u8; READ_BUF];
        let mut filled = 0;
        let mut batch = Vec::new();
        let prefix = format!("{}: ", me.nick);
        while filled < buf.len() {
            let upto = (filled + READ_CHUNK).min(buf.len());
            match rd.read(&mut buf[filled..upto]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
            // All the complete lines of this read, formatted once.
            let Some(end) = buf[..filled].iter().rposition(|&b| b == b'\n') else { continue };
            batch.clear();
            for line in buf[..end].split(|&b| b == b'\n') {
                let text = line.strip_suffix(b"\r").unwrap_or(line);
                batch.extend_from_slice(prefix.as_bytes());
                batch.extend_from_slice(text);
                batch.push(b'\n');
            }
            if me.cut.get() {
                return;
            }
            room.borrow_mut().broadcast(&batch);
            buf.copy_within(end + 1..filled, 0);
            filled -= end + 1;
        }
    };

    let writer = async {
        let mut out = Vec::new();
        loop {
            if me.cut.get() {
                return;
            }
            std::mem::swap(&mut out, &mut *me.pending.borrow_mut());
            if out.is_empty() {
                // Out of the room (the reader is done) and nothing is owed.
                if me.slot.get().is_none() {
                    return;
                }
                me.wake.notified().await;
                continue;
            }
            me.inflight.set(out.len());
            let res = wr.write_all(&out).await;
            me.inflight.set(0);
            out.clear();
            if res.is_err() {
                return;
            }
        }
    };
    tokio::pin!(writer);

    tokio::select! {
        _ = reader => {
            // EOF or a read error: leave, then send what is still owed
            // (half-close) unless the writer fails or the member was cut.
            if room.borrow_mut().remove(&me) {
                room.borrow_mut().broadcast(format!("* {} left\n", me.nick).as_bytes());
            }
            me.wake.notify_one();
            writer.await;
        }
        _ = &mut writer => {
            if room.borrow_mut().remove(&me) {
                room.borrow_mut().broadcast(format!("* {} left\n", me.nick).as_bytes());
            }
        }
        // Cut as a slow consumer: already out of the room and announced.
        _ = me.kill.notified() => {}
    }
    // Dropping the stream closes the connection.
}

async fn run(addr: SocketAddr) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    println!("listening on {}", listener.local_addr()?);

    let room = Rc::new(RefCell::new(Room::default()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::task::spawn_local(serve(Rc::clone(&room), stream));
                }
                // e.g. EMFILE: keep serving the connections we have.
                Err(e) => eprintln!("accept: {e}"),
            },
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: tokio-chat IP:PORT");
        std::process::exit(2);
    });
    let addr: SocketAddr = arg.parse().unwrap_or_else(|e| {
        eprintln!("bad address {arg}: {e}");
        std::process::exit(2);
    });
    tokio::task::LocalSet::new().run_until(run(addr)).await
}
