//! Several reactors, one address: `--workers N`.
//!
//! A worker is a whole reactor on its own thread — its own epoll instance,
//! slab, buffer pools, timers, and listening socket — and workers share
//! nothing on the hot path: no lock, no atomic per message. The kernel
//! spreads new connections over the listening sockets, which are bound to
//! one address with `SO_REUSEPORT` (by a hash of the connection's
//! addresses: even over many connections, uneven over few). This is how
//! nginx, Envoy and Seastar use many cores.
//!
//! What does cross threads is rare and explicit:
//!
//! - **Listeners** are all bound here, on the main thread, before any
//!   worker starts, so that an address that cannot be bound fails startup
//!   (exit 1) instead of leaving a half-started server. With port 0 the
//!   first socket picks the port and the others bind the same one.
//! - **Signals** SIGINT and SIGTERM are blocked in the main thread before
//!   the workers are spawned (threads inherit the mask), so no worker is
//!   ever interrupted or killed by one; the main thread alone reads them
//!   from a `signalfd`, and asks every worker to stop through its
//!   [`edgeloop::Handle`]. Workers drain together (each for up to its drain
//!   timeout) and the process exits 0.
//! - **`--max-conns`** is one [`ConnCount`] for the whole server: one
//!   atomic operation per accept and per close.
//! - **Figures**: each worker copies its counters to a slot of its own
//!   every [`PUBLISH_EVERY`] ([`edgeloop::options::Publish`]); `--stats` and
//!   `/metrics` read the slots and add them up.
//!
//! A connection never moves between workers, so everything the single
//! reactor promises holds per connection.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::metrics::Metrics;
use edgeloop::options::{ConnCount, Publish};
use edgeloop::stats::Counters;
use edgeloop::sys::{self, Epoll};
use edgeloop::{Config, Handle, Handler, ListenOptions, Reactor};

/// How often each worker publishes its counters.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What to run: a server of `workers` reactors.
pub struct Server {
    /// Reactors (threads); at least 1.
    pub workers: usize,
    /// The address every worker listens on.
    pub listen: SocketAddr,
    /// Options of the listening sockets (`reuse_port` is set when
    /// `workers > 1`).
    pub listen_options: ListenOptions,
    /// Each worker's reactor settings (`conn_count` and `publish` are
    /// filled in here).
    pub config: Config,
    /// Serve Prometheus metrics here (on worker 0).
    pub metrics: Option<SocketAddr>,
    /// Print the summed counters to stderr this often (zero: never).
    pub stats: Duration,
    /// A second address every worker serves with the same handler, with
    /// its own options (the chat's `--ws`).
    pub also: Option<(SocketAddr, ListenOptions)>,
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// An address could not be bound.
    Bind(SocketAddr, io::Error),
    /// Anything else (a reactor, a thread, a signalfd).
    Other(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {}", sys::describe(e)),
            StartError::Other(why) => f.write_str(why),
        }
    }
}

/// The worker count `--workers 0` means: one per CPU the process may use.
pub fn default_workers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

impl Server {
    /// Bind, start the workers, print `listening on IP:PORT` once all
    /// listen, serve until SIGINT/SIGTERM, drain, return. `make_handler(i)`
    /// builds worker `i`'s handler on that worker's thread (a handler need
    /// not be `Send`).
    pub fn run<H, F>(self, make_handler: F) -> Result<(), StartError>
    where
        H: Handler,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        let workers = self.workers.max(1);
        let mut options = self.listen_options.clone();
        options.reuse_port |= workers > 1;
        let (listeners, local) = bind_all(&self.listen, &options, workers)?;
        let mut also = match &self.also {
            Some((addr, also_options)) => {
                let mut also_options = also_options.clone();
                also_options.reuse_port |= workers > 1;
                bind_all(addr, &also_options, workers)?
                    .0
                    .into_iter()
                    .map(|fd| Some((fd, also_options.clone())))
                    .collect()
            }
            None => Vec::new(),
        };
        let metrics = match self.metrics {
            Some(addr) => Some(sys::listen(&addr, 128, false, None).map_err(|e| StartError::Bind(addr, e))?),
            None => None,
        };
        // Before any thread exists: every thread inherits the blocked mask.
        // The main thread's descriptors are all taken now, before workers
        // can use up the open-file limit.
        let signals = sys::signalfd(&[Signal::SIGINT, Signal::SIGTERM]).map_err(other("signalfd"))?;
        let waiter = Epoll::new().map_err(other("epoll"))?;
        waiter.add(signals.as_fd(), 0, sys::EPOLLIN).map_err(other("epoll"))?;
        sys::ignore_sigpipe().map_err(other("SIGPIPE"))?;

        let conn_count = Arc::new(ConnCount::default());
        let slots: Vec<Arc<Mutex<Counters>>> = (0..workers).map(|_| Arc::default()).collect();
        let make_handler = Arc::new(make_handler);
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::new();
        let mut metrics = metrics;
        for (i, fd) in listeners.into_iter().enumerate() {
            let config = Config {
                conn_count: Some(Arc::clone(&conn_count)),
                publish: Some(Publish { every: PUBLISH_EVERY, to: Arc::clone(&slots[i]) }),
                handle_signals: false,
                ..self.config.clone()
            };
            let worker = Worker {
                index: i,
                config,
                listener: fd,
                options: options.clone(),
                metrics: metrics.take().map(|fd| (fd, slots.clone())),
                also: also.get_mut(i).and_then(Option::take),
            };
            let (make_handler, ready) = (Arc::clone(&make_handler), ready_tx.clone());
            let thread = thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker.run(&*make_handler, ready))
                .map_err(other("spawn a worker"))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut handles = Vec::new();
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(handle)) => handles.push(handle),
                Ok(Err(why)) => {
                    stop_all(&handles);
                    return Err(StartError::Other(why));
                }
                Err(_) => {
                    stop_all(&handles);
                    return Err(StartError::Other("a worker died while starting".into()));
                }
            }
        }
        let mut stdout = io::stdout();
        let _ = writeln!(stdout, "listening on {local}").and_then(|_| stdout.flush());

        wait_for_signal(&waiter, &signals, self.stats, &slots);
        stop_all(&handles);
        for thread in threads {
            if thread.join().is_err() {
                log::error!("a worker thread panicked outside its handlers");
            }
        }
        Ok(())
    }
}

/// One worker's part, moved to its thread.
struct Worker {
    index: usize,
    config: Config,
    listener: OwnedFd,
    options: ListenOptions,
    metrics: Option<(OwnedFd, Vec<Arc<Mutex<Counters>>>)>,
    also: Option<(OwnedFd, ListenOptions)>,
}

impl Worker {
    fn run<H: Handler>(self, make_handler: &dyn Fn(usize) -> H, ready: mpsc::Sender<Result<Handle, String>>) {
        let index = self.index;
        let mut reactor = match self.start(make_handler) {
            Ok(reactor) => reactor,
            Err(e) => {
                let _ = ready.send(Err(format!("worker {index}: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(reactor.handle()));
        if let Err(e) = reactor.run() {
            log::error!("worker {index}: event loop failed: {e}");
        }
    }

    /// The reactor, owning the listening sockets: when it closes them at
    /// shutdown they are closed for good (no other descriptor keeps them
    /// listening).
    fn start<H: Handler>(self, make_handler: &dyn Fn(usize) -> H) -> io::Result<Reactor> {
        let mut reactor = Reactor::new(self.config)?;
        let handler = reactor.add_handler(make_handler(self.index));
        reactor.add_listener(self.listener, handler, self.options)?;
        if let Some((fd, options)) = self.also {
            reactor.add_listener(fd, handler, options)?;
        }
        if let Some((fd, slots)) = self.metrics {
            let metrics = reactor.add_handler(Metrics::new(slots));
            reactor.add_listener(fd, metrics, Metrics::listen_options())?;
        }
        Ok(reactor)
    }
}

/// Bind `workers` listening sockets to `addr` (the port of the first when
/// `addr` asks for port 0).
fn bind_all(
    addr: &SocketAddr,
    options: &ListenOptions,
    workers: usize,
) -> Result<(Vec<OwnedFd>, SocketAddr), StartError> {
    let bind = |at: &SocketAddr| {
        sys::listen(at, options.backlog, options.reuse_port, options.v6_only).map_err(|e| StartError::Bind(*at, e))
    };
    let first = bind(addr)?;
    let local = sys::local_addr(first.as_fd()).map_err(|e| StartError::Bind(*addr, e))?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind(&local)?);
    }
    Ok((all, local))
}

/// Block until SIGINT or SIGTERM, printing the summed `--stats` line
/// every `stats` meanwhile.
fn wait_for_signal(epoll: &Epoll, signals: &OwnedFd, stats: Duration, slots: &[Arc<Mutex<Counters>>]) {
    let mut events = [sys::empty_event()];
    let timeout = (!stats.is_zero()).then_some(stats);
    loop {
        match epoll.wait(&mut events, timeout) {
            Ok(0) => eprintln!("{}", sum(slots).line()),
            Ok(_) => {
                if let Ok(Some(sig)) = sys::read_signal(signals.as_fd()) {
                    log::info!("{sig}: shutting down");
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::error!("waiting for signals: {e}");
                return;
            }
        }
    }
}

/// The whole server's counters: every worker's last snapshot, added up.
pub fn sum(slots: &[Arc<Mutex<Counters>>]) -> Counters {
    let mut total = Counters::default();
    for slot in slots {
        total.add(&slot.lock().unwrap_or_else(|e| e.into_inner()));
    }
    total
}

fn stop_all(handles: &[Handle]) {
    for handle in handles {
        if let Err(e) = handle.stop() {
            log::error!("cannot stop a worker: {e}");
        }
    }
}

fn other(what: &'static str) -> impl Fn(io::Error) -> StartError {
    move |e| StartError::Other(format!("{what}: {e}"))
}
