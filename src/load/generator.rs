//! The generator as a [`Handler`]: connections, the closed loop, the
//! checks, the clock of the run. See the module docs of [`crate::load`].

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::pattern::Pattern;
use crate::{CloseReason, ConnId, Ctx, Handler};

/// Connects in progress at once: enough to open thousands of connections
/// per second, few enough not to overflow the server's accept queue.
const CONNECT_WINDOW: u32 = 512;
/// Up to this many new messages at once are sent by reference rather than
/// copied (beyond, one copy into one buffer is cheaper than many slices).
const SHARED_SENDS: u64 = 4;
/// Mismatches described on stderr (all are counted).
const MISMATCH_REPORTS: u64 = 5;
/// Largest latency the histogram keeps exactly (larger ones are clamped).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// What to run: the command line, checked.
#[derive(Clone, Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub conns: u32,
    pub depth: u32,
    pub warmup: Duration,
    pub duration: Duration,
    /// Connections not up after this long count as failed.
    pub connect_timeout: Duration,
    /// Bind client sockets to 127.0.0.1 .. 127.0.0.`n` in turn (0: don't
    /// bind): one source address has only ~28 000 ephemeral ports.
    pub source_addrs: u8,
    /// Print the progress line every second.
    pub progress: bool,
}

/// Errors seen during the whole run (warm-up included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// Connections that never connected (refused, timed out, no
    /// descriptor or port left, ...).
    pub connect_failed: u64,
    /// Open connections reset or failed (`ECONNRESET`, `EPIPE`, ...).
    pub reset: u64,
    /// Open connections the server closed (end of stream, ...).
    pub closed: u64,
    /// Echoes that differed from what was sent (each closes its connection).
    pub mismatch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Warmup,
    Measuring,
    /// The run is over; `Ctx::stop` closes what is left.
    Done,
}

/// One closed-loop flow of messages on one connection.
struct Flow {
    /// Messages sent and messages fully echoed; `sent - recvd <= depth`.
    sent: u64,
    recvd: u64,
    /// Bytes of message `recvd` already echoed and checked.
    off: usize,
    /// Template rotations of the next message to send and to receive.
    send_rot: u16,
    recv_rot: u16,
    /// Send times (nanoseconds since the start) of the messages in flight,
    /// a ring of `depth` slots: messages come back in order (FIFO).
    sent_at: Box<[u64]>,
    send_slot: usize,
    recv_slot: usize,
}

/// What the generator knows about a reactor connection id.
enum Slot {
    Free,
    Connecting {
        ordinal: u64,
    },
    Open(Flow),
    /// Not connected in time: counted as failed, closed if it ever opens.
    Abandoned,
}

/// The measurements of a run, read after [`crate::Reactor::run`] returns.
pub struct Outcome {
    pub errors: Errors,
    /// A reason connections failed to connect, when one is known.
    pub connect_error: Option<String>,
    /// Connections that opened.
    pub opened: u32,
    /// Connections still open when the run ended.
    pub survived: u32,
    /// Messages echoed inside the measured window.
    pub messages: u64,
    /// The measured window (zero if it never began).
    pub window: Duration,
    /// Nanoseconds, messages echoed inside the window.
    pub latency: Histogram<u64>,
    /// CPU time (user + system) the generator used inside the window.
    pub cpu: Duration,
    /// From start to the end of the run (connecting included).
    pub elapsed: Duration,
    /// The run was ended early by a signal.
    pub interrupted: bool,
}

/// The load generator's [`Handler`].
pub struct Generator {
    plan: Plan,
    pattern: Pattern,
    slots: Vec<Slot>,
    /// Outgoing messages are assembled here, then queued in one `send`.
    scratch: Vec<u8>,
    start: Instant,
    phase: Phase,
    measuring: bool,
    next_ordinal: u64,
    connecting: u32,
    connect_deadline: Instant,
    live: u32,
    opened: u32,
    survived: u32,
    warmup_end: Instant,
    window_due: Instant,
    window_start: Option<Instant>,
    window_end: Option<Instant>,
    cpu_start: u64,
    cpu_end: u64,
    total_msgs: u64,
    window_msgs: u64,
    latency: Histogram<u64>,
    errors: Errors,
    connect_error: Option<String>,
    interrupted: bool,
    next_progress: Instant,
    progress_at: Instant,
    progress_msgs: u64,
}

impl Generator {
    pub fn new(plan: Plan, pattern: Pattern) -> Generator {
        let now = Instant::now();
        // ok: constant, valid bounds; no input reaches this.
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds");
        Generator {
            slots: Vec::with_capacity(plan.conns as usize),
            scratch: Vec::with_capacity(pattern.wire_len() * plan.depth as usize),
            plan,
            pattern,
            start: now,
            phase: Phase::Connecting,
            measuring: false,
            next_ordinal: 0,
            connecting: 0,
            connect_deadline: now,
            live: 0,
            opened: 0,
            survived: 0,
            warmup_end: now,
            window_due: now,
            window_start: None,
            window_end: None,
            cpu_start: 0,
            cpu_end: 0,
            total_msgs: 0,
            window_msgs: 0,
            latency,
            errors: Errors::default(),
            connect_error: None,
            interrupted: false,
            next_progress: now + Duration::from_secs(1),
            progress_at: now,
            progress_msgs: 0,
        }
    }

    /// The results; meaningful once the reactor's `run` has returned.
    pub fn outcome(&self) -> Outcome {
        let window = match (self.window_start, self.window_end) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        };
        Outcome {
            errors: self.errors,
            connect_error: self.connect_error.clone(),
            opened: self.opened,
            survived: self.survived,
            messages: if window.is_zero() { 0 } else { self.window_msgs },
            window,
            latency: self.latency.clone(),
            cpu: Duration::from_micros(self.cpu_end.saturating_sub(self.cpu_start)),
            elapsed: self.start.elapsed(),
            interrupted: self.interrupted,
        }
    }

    fn slot_mut(&mut self, id: ConnId) -> &mut Slot {
        let i = id.index();
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || Slot::Free);
        }
        &mut self.slots[i]
    }

    fn source_for(&self, ordinal: u64) -> Option<SocketAddr> {
        let n = self.plan.source_addrs as u64;
        (n > 0).then(|| {
            let k = 1 + (ordinal % n) as u8;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)), 0)
        })
    }

    /// Start connects until the window is full or all are started.
    fn start_connects(&mut self, ctx: &mut Ctx<'_>) {
        while self.phase == Phase::Connecting
            && self.connecting < CONNECT_WINDOW
            && self.next_ordinal < self.plan.conns as u64
        {
            let ordinal = self.next_ordinal;
            self.next_ordinal += 1;
            let source = self.source_for(ordinal);
            let options = crate::ConnectOptions { local: source, ..Default::default() };
            match ctx.connect(&self.plan.addr, &options) {
                Ok(id) => {
                    *self.slot_mut(id) = Slot::Connecting { ordinal };
                    self.connecting += 1;
                }
                Err(e) => {
                    self.errors.connect_failed += 1;
                    self.connect_error.get_or_insert_with(|| crate::sys::describe(&e));
                }
            }
        }
    }

    /// Move through the phases as time passes and connections come and go.
    fn advance(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        loop {
            match self.phase {
                Phase::Done => return,
                Phase::Connecting => {
                    let resolved = self.connecting == 0 && self.next_ordinal == self.plan.conns as u64;
                    if !resolved {
                        if now < self.connect_deadline {
                            return;
                        }
                        self.abandon_connects();
                    }
                    self.phase = Phase::Warmup;
                    self.warmup_end = now + self.plan.warmup;
                }
                Phase::Warmup => {
                    if self.live == 0 {
                        return self.finish(ctx, now);
                    }
                    if now < self.warmup_end {
                        return;
                    }
                    self.phase = Phase::Measuring;
                    self.measuring = true;
                    self.window_start = Some(now);
                    self.window_due = now + self.plan.duration;
                    self.window_msgs = 0;
                    self.latency.reset();
                    self.cpu_start = crate::sys::process_cpu_micros();
                }
                Phase::Measuring => {
                    if self.live == 0 || now >= self.window_due {
                        return self.finish(ctx, now);
                    }
                    return;
                }
            }
        }
    }

    /// The connect time is up: what is not connected has failed.
    fn abandon_connects(&mut self) {
        for slot in &mut self.slots {
            if matches!(slot, Slot::Connecting { .. }) {
                *slot = Slot::Abandoned;
                self.errors.connect_failed += 1;
            }
        }
        let unstarted = self.plan.conns as u64 - self.next_ordinal;
        self.errors.connect_failed += unstarted;
        self.next_ordinal = self.plan.conns as u64;
        self.connecting = 0;
        let secs = self.plan.connect_timeout.as_secs_f64();
        self.connect_error.get_or_insert_with(|| format!("not connected within {secs} s"));
    }

    /// End the run: close the window, close every connection.
    fn finish(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        if self.measuring {
            self.measuring = false;
            self.window_end = Some(now);
            self.cpu_end = crate::sys::process_cpu_micros();
        }
        self.phase = Phase::Done;
        self.survived = self.live;
        ctx.stop();
    }

    fn progress(&mut self, now: Instant) {
        let dt = (now - self.progress_at).as_secs_f64();
        let msgs = self.total_msgs - self.progress_msgs;
        self.progress_at = now;
        self.progress_msgs = self.total_msgs;
        self.next_progress += Duration::from_secs(1);
        if self.next_progress <= now {
            self.next_progress = now + Duration::from_secs(1);
        }
        if !self.plan.progress || dt <= 0.0 {
            return;
        }
        let rate = msgs as f64 / dt;
        let mb = rate * self.pattern.wire_len() as f64 / 1e6;
        let tag = match self.phase {
            Phase::Connecting => "  (connecting)",
            Phase::Warmup => "  (warm-up)",
            Phase::Measuring | Phase::Done => "",
        };
        let _ = writeln!(
            io::stderr().lock(),
            "[{:>3}s] {:.0} msg/s  {:.1} MB/s  {} conns{}",
            (now - self.start).as_secs(),
            rate,
            mb,
            self.live,
            tag
        );
    }

    /// Report a mismatch on a connection (which is then closed).
    fn mismatch(&mut self, id: ConnId, msg: u64, off: usize, detail: String) {
        self.errors.mismatch += 1;
        if self.errors.mismatch <= MISMATCH_REPORTS {
            eprintln!("edgeloop load: connection {id}: message {msg}, byte {off}: {detail}");
        }
    }
}

/// Queue `count` new messages on a flow, stamped `now`: a few short ones
/// by reference to their prebuilt copies, otherwise copied into one `send`.
fn send_messages(
    ctx: &mut Ctx<'_>,
    id: ConnId,
    flow: &mut Flow,
    pattern: &Pattern,
    scratch: &mut Vec<u8>,
    count: u64,
    now: u64,
) {
    let depth = flow.sent_at.len();
    let by_reference = count <= SHARED_SENDS && pattern.prebuilt(0).is_some();
    scratch.clear();
    for _ in 0..count {
        match pattern.prebuilt(flow.send_rot) {
            Some(msg) if by_reference => {
                let _ = ctx.send_shared(id, msg);
            }
            _ => pattern.write(flow.send_rot, scratch),
        }
        flow.send_rot = Pattern::next_rotation(flow.send_rot);
        flow.sent_at[flow.send_slot] = now;
        flow.send_slot += 1;
        if flow.send_slot == depth {
            flow.send_slot = 0;
        }
    }
    flow.sent += count;
    if !scratch.is_empty() {
        let _ = ctx.send(id, scratch);
    }
}

impl Handler for Generator {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, id: ConnId) {
        match std::mem::replace(self.slot_mut(id), Slot::Free) {
            Slot::Connecting { ordinal } => {
                self.connecting -= 1;
                self.live += 1;
                self.opened += 1;
                let depth = self.plan.depth as usize;
                let rot = Pattern::first_rotation(ordinal);
                let mut flow = Flow {
                    sent: 0,
                    recvd: 0,
                    off: 0,
                    send_rot: rot,
                    recv_rot: rot,
                    sent_at: vec![0; depth].into_boxed_slice(),
                    send_slot: 0,
                    recv_slot: 0,
                };
                let now = self.start.elapsed().as_nanos() as u64;
                send_messages(ctx, id, &mut flow, &self.pattern, &mut self.scratch, depth as u64, now);
                *self.slot_mut(id) = Slot::Open(flow);
                self.start_connects(ctx);
                if self.connecting == 0 {
                    self.advance(ctx, Instant::now());
                }
            }
            Slot::Abandoned => {
                *self.slot_mut(id) = Slot::Abandoned;
                ctx.close(id);
            }
            other => *self.slot_mut(id) = other,
        }
    }

    /// The hot path: check the echoed bytes against the pattern, count the
    /// messages they complete, record their latency, send as many new ones.
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) {
        let now = self.start.elapsed().as_nanos() as u64;
        let Some(Slot::Open(flow)) = self.slots.get_mut(id.index()) else {
            return;
        };
        let pattern = &self.pattern;
        let wire = pattern.wire_len();
        let depth = flow.sent_at.len();
        let mut data = frame;
        let mut done = 0u64;
        let mut bad = None;
        while !data.is_empty() {
            if flow.recvd == flow.sent {
                bad = Some((flow.recvd, 0, format!("{} bytes echoed that were never sent", data.len())));
                break;
            }
            let n = (wire - flow.off).min(data.len());
            let seg = &data[..n];
            if !pattern.matches(flow.recv_rot, flow.off, seg) {
                let (i, want) = pattern.first_difference(flow.recv_rot, flow.off, seg).unwrap_or((0, 0));
                let off = flow.off + i;
                bad = Some((flow.recvd, off, format!("expected 0x{want:02x}, got 0x{:02x}", seg[i])));
                break;
            }
            data = &data[n..];
            flow.off += n;
            if flow.off == wire {
                flow.off = 0;
                flow.recvd += 1;
                flow.recv_rot = Pattern::next_rotation(flow.recv_rot);
                if self.measuring {
                    let latency = now.saturating_sub(flow.sent_at[flow.recv_slot]);
                    self.latency.saturating_record(latency.clamp(1, MAX_LATENCY_NS));
                }
                flow.recv_slot += 1;
                if flow.recv_slot == depth {
                    flow.recv_slot = 0;
                }
                done += 1;
            }
        }
        if done > 0 {
            self.total_msgs += done;
            if self.measuring {
                self.window_msgs += done;
            }
            if bad.is_none() {
                send_messages(ctx, id, flow, pattern, &mut self.scratch, done, now);
            }
        }
        if let Some((msg, off, detail)) = bad {
            self.mismatch(id, msg, off, detail);
            ctx.close(id);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: CloseReason) {
        let slot = std::mem::replace(self.slot_mut(id), Slot::Free);
        let running = self.phase != Phase::Done;
        if running && reason == CloseReason::Shutdown {
            // A signal began the shutdown: end the run where it stands.
            self.interrupted = true;
            self.finish(ctx, Instant::now());
        }
        match slot {
            Slot::Free | Slot::Abandoned => {}
            Slot::Connecting { .. } => {
                self.connecting -= 1;
                if reason != CloseReason::Shutdown {
                    self.errors.connect_failed += 1;
                }
                self.start_connects(ctx);
            }
            Slot::Open(_) => {
                self.live -= 1;
                if running {
                    match reason {
                        CloseReason::Error(_) => self.errors.reset += 1,
                        // Local: closed after a mismatch, already counted.
                        CloseReason::Local | CloseReason::Shutdown => {}
                        _ => self.errors.closed += 1,
                    }
                }
            }
        }
        self.advance(ctx, Instant::now());
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.connect_deadline = Instant::now() + self.plan.connect_timeout;
        self.start_connects(ctx);
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        let now = Instant::now();
        self.advance(ctx, now);
        if now >= self.next_progress {
            self.progress(now);
        }
    }
}
