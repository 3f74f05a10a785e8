//! `--metrics ADDR`: the server's figures in Prometheus's text format,
//! served over HTTP/1.1 by the server's own reactor.
//!
//! The endpoint is one more listener on worker 0, with a handler of its
//! own: its connections are ordinary connections of that reactor, so a
//! slow or hostile metrics client costs what any client costs — a slab
//! entry and a bounded buffer — and nothing else waits for it. They are
//! left out of `--max-conns` and of the service's figures
//! ([`ListenOptions::counted`]), and bounded on their own:
//!
//! - **Memory.** The listener reads in `raw` framing and the handler
//!   gathers the head itself, up to [`MAX_HEAD`] (not `--max-frame`, a
//!   megabyte): a head that would pass it — however it is cut into
//!   lines, one line of 9 KiB included — is answered `431 Request Header
//!   Fields Too Large`. A connection holds at most 8 KiB.
//! - **Descriptors.** At most [`MAX_CONNECTIONS`] metrics connections are
//!   open at once; more are refused at once (reset as soon as they are
//!   accepted), so unfinished requests cannot take the descriptors the
//!   service needs. Both are counted: `metrics_live`/`metrics_refused` in
//!   `--stats`, `edgeloop_metrics_connections` and
//!   `edgeloop_metrics_refused_total` here.
//!
//! A request's head is gathered until the empty line that ends it, and
//! parsed with `httparse`. `GET /metrics` gets 200
//! with the exposition; another path 404; another method 405; anything
//! that is not HTTP 400 (as soon as the parser says so); a head too large
//! 431; a client that has not sent a whole head within
//! [`REQUEST_TIMEOUT`] is cut. Every answer closes the connection
//! gracefully (`Connection: close`).
//!
//! The figures are the sum of every worker's last published snapshot
//! (see [`crate::workers`]): at most [`crate::workers::PUBLISH_EVERY`]
//! old, and free for the hot path, which only ever touches its own
//! reactor's plain integers.

use std::any::Any;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::servers::chat::ChatCounters;
use crate::workers::sum;
use edgeloop::handler::CloseReason;
use edgeloop::stats::Counters;
use edgeloop::{AppCounters, ConnId, Ctx, Framing, Handler, ListenOptions};

/// The most a request head may hold.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most metrics connections open at once; more are refused.
pub const MAX_CONNECTIONS: usize = 64;

/// The endpoint's own figures, on worker 0's counters.
#[derive(Clone, Debug, Default)]
pub struct MetricsCounters {
    /// Metrics connections open now (a gauge; they are not among the
    /// service's connections).
    pub live: usize,
    /// Metrics connections refused because [`MAX_CONNECTIONS`] were open.
    pub refused: u64,
}

impl AppCounters for MetricsCounters {
    fn add(&mut self, other: &dyn AppCounters) {
        if let Some(theirs) = (other as &dyn Any).downcast_ref::<MetricsCounters>() {
            self.live += theirs.live;
            self.refused += theirs.refused;
        }
    }

    fn write_stats(&self, line: &mut String) {
        let _ = write!(line, " metrics_live={} metrics_refused={}", self.live, self.refused);
    }
}

/// The `/metrics` handler.
pub struct Metrics {
    workers: Vec<Arc<Mutex<Counters>>>,
    /// The request head gathered so far, per connection.
    heads: Vec<Option<Vec<u8>>>,
    /// Which connections were admitted (not refused), per connection.
    admitted: Vec<bool>,
    /// Connections admitted and not yet closed.
    open: usize,
}

impl Metrics {
    /// Serve the sum of these workers' published counters.
    pub fn new(workers: Vec<Arc<Mutex<Counters>>>) -> Metrics {
        Metrics { workers, heads: Vec::new(), admitted: Vec::new(), open: 0 }
    }

    /// How the metrics listener listens: raw bytes (the handler bounds the
    /// head), uncounted.
    pub fn listen_options() -> ListenOptions {
        ListenOptions { framing: Framing::Raw, backlog: 128, counted: false, ..ListenOptions::default() }
    }

    fn answer(&mut self, ctx: &mut Ctx<'_>, id: ConnId, status: &str, body: &str) {
        let content_type = if status.starts_with("200") { "text/plain; version=0.0.4" } else { "text/plain" };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        // Refused only if the client is already gone.
        let _ = ctx.send(id, response.as_bytes());
        ctx.close(id);
        self.heads[id.index()] = None;
    }
}

impl Handler for Metrics {
    /// The figures are on the `--stats` line from the start.
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        ctx.counters_mut().app_mut::<MetricsCounters>();
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        if self.heads.len() <= id.index() {
            self.heads.resize_with(id.index() + 1, || None);
            self.admitted.resize(id.index() + 1, false);
        }
        if self.open >= MAX_CONNECTIONS {
            // Refused at once: a reset, and the descriptor is free at the
            // end of this iteration (a graceful close would hold it while
            // lingering).
            ctx.counters_mut().app_mut::<MetricsCounters>().refused += 1;
            ctx.abort(id);
            return;
        }
        self.open += 1;
        ctx.counters_mut().app_mut::<MetricsCounters>().live = self.open;
        self.admitted[id.index()] = true;
        self.heads[id.index()] = Some(Vec::new());
        ctx.set_timer(id, REQUEST_TIMEOUT);
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, bytes: &[u8]) {
        // After the answer (a pipelined request, a body) bytes are ignored.
        let Some(head) = self.heads.get_mut(id.index()).and_then(Option::as_mut) else { return };
        let (status, body) = match take_bytes(head, bytes) {
            Request::Incomplete => return,
            Request::Metrics => ("200 OK", render(&sum(&self.workers), &self.workers)),
            Request::NotFound => ("404 Not Found", "not found; try /metrics\n".into()),
            Request::NotAllowed => ("405 Method Not Allowed", "only GET\n".into()),
            Request::TooLarge => ("431 Request Header Fields Too Large", format!("at most {MAX_HEAD} bytes\n")),
            Request::Bad(why) => ("400 Bad Request", format!("{why}\n")),
        };
        ctx.cancel_timer(id);
        self.answer(ctx, id, status, &body);
    }

    /// Too slow: cut it, at no one else's cost.
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        ctx.abort(id);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, id: ConnId, _reason: CloseReason) {
        if let Some(head) = self.heads.get_mut(id.index()) {
            *head = None;
        }
        if self.admitted.get(id.index()).copied().unwrap_or(false) {
            self.admitted[id.index()] = false;
            self.open -= 1;
            ctx.counters_mut().app_mut::<MetricsCounters>().live = self.open;
        }
    }
}

/// What a request calls for, once its head is whole.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The head is not whole yet.
    Incomplete,
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    /// `GET` of another path.
    NotFound,
    /// Another method.
    NotAllowed,
    /// A head over [`MAX_HEAD`] bytes.
    TooLarge,
    /// Not HTTP; why.
    Bad(String),
}

/// Add the bytes of one read to the request head gathered so far (never
/// past [`MAX_HEAD`]), and judge the head with `httparse`.
pub fn take_bytes(head: &mut Vec<u8>, bytes: &[u8]) -> Request {
    let room = MAX_HEAD - head.len();
    let overflow = bytes.len() > room;
    head.extend_from_slice(&bytes[..bytes.len().min(room)]);
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("").split('?').next().unwrap_or("");
            match (request.method, path) {
                (Some("GET"), "/metrics") => Request::Metrics,
                (Some("GET"), _) => Request::NotFound,
                _ => Request::NotAllowed,
            }
        }
        // Full, and still no end: it could only grow past the limit.
        Ok(httparse::Status::Partial) if overflow || head.len() == MAX_HEAD => Request::TooLarge,
        // An empty line, which ends any head, and the head still
        // incomplete: not HTTP either.
        Ok(httparse::Status::Partial) if has_empty_line(head) => Request::Bad("not an HTTP request".into()),
        Ok(httparse::Status::Partial) => Request::Incomplete,
        Err(e) => Request::Bad(format!("not an HTTP request: {e}")),
    }
}

/// Whether `head` holds an empty line (a line end right after another).
fn has_empty_line(head: &[u8]) -> bool {
    memchr::memmem::find(head, b"\n\n").is_some() || memchr::memmem::find(head, b"\n\r\n").is_some()
}

/// The exposition: every metric with `# HELP` and `# TYPE`.
pub fn render(total: &Counters, workers: &[Arc<Mutex<Counters>>]) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: u64| [(String::new(), value)];
    let labelled = |label: &str, values: &mut dyn Iterator<Item = (String, u64)>| {
        values.map(|(v, n)| (format!("{{{label}=\"{v}\"}}"), n)).collect::<Vec<_>>()
    };
    metric(
        "edgeloop_build_info",
        "gauge",
        "Always 1; the version is a label.",
        &[(format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
    );
    metric("edgeloop_connections", "gauge", "Connections open now.", &one(total.connections as u64));
    let per_worker: Vec<u64> =
        workers.iter().map(|w| w.lock().unwrap_or_else(|e| e.into_inner()).connections as u64).collect();
    metric(
        "edgeloop_worker_connections",
        "gauge",
        "Connections open now, per worker.",
        &labelled("worker", &mut per_worker.iter().enumerate().map(|(i, &n)| (i.to_string(), n))),
    );
    metric("edgeloop_connections_accepted_total", "counter", "Connections accepted since start.", &one(total.accepted));
    metric(
        "edgeloop_connections_refused_total",
        "counter",
        "Connections accepted and closed at once, by reason.",
        &labelled(
            "reason",
            &mut [("max_conns".to_string(), total.refused_full), ("denied".to_string(), total.refused_denied)]
                .into_iter(),
        ),
    );
    metric(
        "edgeloop_connections_closed_total",
        "counter",
        "Connections closed, by reason.",
        &labelled("reason", &mut CloseReason::NAMES.iter().zip(total.closed).map(|(n, c)| (n.to_string(), c))),
    );
    metric("edgeloop_received_bytes_total", "counter", "Payload bytes received.", &one(total.bytes_in));
    metric("edgeloop_sent_bytes_total", "counter", "Payload bytes sent.", &one(total.bytes_out));
    metric("edgeloop_frames_received_total", "counter", "Frames delivered to the application.", &one(total.frames_in));
    metric(
        "edgeloop_output_queued_bytes",
        "gauge",
        "Bytes waiting in output queues.",
        &one(total.output_queued as u64),
    );
    metric(
        "edgeloop_accept_paused_total",
        "counter",
        "Times accepting paused for lack of descriptors.",
        &one(total.accept_exhausted),
    );
    metric("edgeloop_panics_total", "counter", "Handler callbacks that panicked.", &one(total.panics));
    let metrics = total.app::<MetricsCounters>().cloned().unwrap_or_default();
    metric(
        "edgeloop_metrics_connections",
        "gauge",
        "Connections to this metrics endpoint open now (scrapes included).",
        &one(metrics.live as u64),
    );
    metric(
        "edgeloop_metrics_refused_total",
        "counter",
        "Metrics connections refused at once because 64 were open.",
        &one(metrics.refused),
    );
    if let Some(chat) = total.app::<ChatCounters>() {
        metric("edgeloop_chat_rooms", "gauge", "Chat rooms with members on this server.", &one(chat.rooms));
        metric("edgeloop_chat_members", "gauge", "Chat members on this server.", &one(chat.members));
        metric("edgeloop_chat_messages_total", "counter", "Chat messages handled.", &one(chat.messages));
        metric(
            "edgeloop_chat_throttled_total",
            "counter",
            "Times a chat client was paused by --chat-rate.",
            &one(chat.throttled),
        );
        metric(
            "edgeloop_chat_backend_up",
            "gauge",
            "1 while the chat backend is reachable.",
            &one(chat.backend_up as u64),
        );
    }
    out
}
