//! The acceptor pool of the gen_tcp manual, as threads: N reactors, each
//! with its own listener on one port, echoing `{packet, 2}` frames with
//! `{active, once}` delivery.
//!
//! ```sh
//! cargo run --release --example worker_pool                    # 127.0.0.1:7072, 4 workers
//! cargo run --release --example worker_pool -- 127.0.0.1:0 8  # any free port, 8 workers
//! ```
//!
//! # The gen_tcp notions
//!
//! - **A pool of acceptors.** The manual's example starts several
//!   processes that each call `gen_tcp:accept` on one listening socket.
//!   A reactor is one thread, so the pool is N threads with one reactor
//!   each. Rather than share one socket (whose wake-ups every reactor
//!   would race for), each reactor binds its own with `SO_REUSEPORT`
//!   ([`ListenOptions::reuse_port`]) and the kernel spreads incoming
//!   connections over them. With port 0 the first worker picks a port and
//!   the others bind that one.
//! - **`{packet, 2}`**: every message is a 2-byte big-endian length and
//!   that many bytes (`Framing::Len2`); a frame arrives without its
//!   header and [`Ctx::send`] puts one back.
//! - **`{active, once}`**: one message is delivered, then the connection
//!   is not read until the handler asks for the next
//!   (`Ctx::set_active(id, Active::Once)`, Erlang's
//!   `inet:setopts(S, [{active, once}])`). A server that cannot keep up
//!   stops reading, and TCP slows the client down.
//!
//! # Signals and threads
//!
//! SIGINT and SIGTERM are blocked in the main thread before any worker is
//! spawned, so every thread inherits the mask and no thread is
//! interrupted by them. The main thread reads them from a `signalfd`, asks
//! every reactor to stop through its [`edgeloop::Handle`] (each finishes
//! its connections gracefully), joins the workers and exits 0.

use std::error::Error;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use edgeloop::{sys, Active, Config, ConnId, Ctx, Framing, Handle, Handler, ListenOptions, Reactor};
use nix::sys::signal::Signal;

struct Echo;

impl Handler for Echo {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        ctx.set_active(id, Active::Once);
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        let _ = ctx.send(id, frame);
        ctx.set_active(id, Active::Once); // ready for the next one
    }
}

struct Worker {
    handle: Handle,
    thread: JoinHandle<io::Result<()>>,
}

/// Start a worker thread listening on `addr`; returns once it listens,
/// with the address it bound.
fn start_worker(addr: SocketAddr) -> io::Result<(SocketAddr, Worker)> {
    // A reactor is built on the thread that runs it; the thread reports
    // back how listening went.
    let (ready, listening) = mpsc::channel();
    let thread = thread::spawn(move || {
        let setup = || -> io::Result<Reactor> {
            let mut reactor = Reactor::new(Config::default())?;
            let echo = reactor.add_handler(Echo);
            let options = ListenOptions { reuse_port: true, framing: Framing::Len2, ..Default::default() };
            let local = reactor.listen(&addr, echo, options)?;
            let _ = ready.send(Ok((local, reactor.handle())));
            Ok(reactor)
        };
        match setup() {
            Ok(mut reactor) => reactor.run(),
            Err(e) => {
                let _ = ready.send(Err(e));
                Ok(())
            }
        }
    });
    let (local, handle) = listening.recv().expect("a worker reports before it ends")?;
    Ok((local, Worker { handle, thread }))
}

/// Block until SIGINT or SIGTERM arrives, reading it from a `signalfd`
/// (non-blocking, so waited for with an epoll of its own).
fn wait_for_signal() -> io::Result<Signal> {
    let signals = sys::signalfd(&[Signal::SIGINT, Signal::SIGTERM])?;
    let epoll = sys::Epoll::new()?;
    epoll.add(signals.as_fd(), 0, sys::EPOLLIN)?;
    let mut events = [sys::empty_event()];
    loop {
        if let Some(signal) = sys::read_signal(signals.as_fd())? {
            return Ok(signal);
        }
        match epoll.wait(&mut events, None) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
            _ => {}
        }
    }
}

fn serve(mut addr: SocketAddr, workers: usize) -> Result<(), Box<dyn Error>> {
    // Before any thread exists: every worker inherits the blocked mask.
    sys::block_signals(&[Signal::SIGINT, Signal::SIGTERM])?;
    let mut pool = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (local, worker) = start_worker(addr)?;
        addr = local; // port 0: the others bind the port the first got
        pool.push(worker);
    }
    // Standard output is line-buffered: whoever waits for this line gets it now.
    println!("listening on {addr}");
    wait_for_signal()?;
    for worker in &pool {
        worker.handle.stop()?;
    }
    for worker in pool {
        worker.thread.join().map_err(|_| "a worker panicked")??;
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7072".into());
    let workers = args.next().unwrap_or_else(|| "4".into());
    let (Ok(addr), Ok(workers @ 1..)) = (addr.parse(), workers.parse::<usize>()) else {
        eprintln!("usage: worker_pool [ADDR] [N]   (an address such as 127.0.0.1:7072, N at least 1)");
        return ExitCode::from(2);
    };
    match serve(addr, workers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker_pool: {e}");
            ExitCode::FAILURE
        }
    }
}
