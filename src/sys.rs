//! The system-call layer: the only `unsafe` in the crate.
//!
//! Every function here is a thin, safe wrapper over one Linux system call,
//! returning `io::Result` with `errno` turned into an `io::Error`. Nothing
//! here decides policy: retrying on `EINTR`, treating `EAGAIN` as
//! "drained", closing on `ECONNRESET` are all decided by the callers, where
//! the reason can be written next to the decision.
//!
//! The calls go through [`nix`], whose wrappers are typed (socket options,
//! signal sets, flags) and already audited, so most of this module needs no
//! `unsafe` at all. `libc` is called directly only where nix has no wrapper
//! or where its wrapper would cost a copy or an extra system call; each such
//! place says why. Today that is:
//!
//! - `epoll_pwait2`: nix has no wrapper, and `epoll_wait` only takes
//!   milliseconds (the load generator paces requests in microseconds);
//! - `accept4`: nix's returns no peer address, which would cost a
//!   `getpeername` per accepted connection;
//! - `read` into a `Vec`'s spare capacity: nix's `read` wants an
//!   initialised `&mut [u8]`, which would cost a memset of 64 KiB per read.
//!
//! Descriptors are taken as [`BorrowedFd`] and returned as [`OwnedFd`]:
//! dropping one closes it, so a connection's socket cannot leak, cannot be
//! closed twice, and cannot be used after it was closed.

use std::io::{self, IoSlice};
use std::mem::{size_of, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::epoll::{self, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::resource::{self, Resource, UsageWho};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, MsgFlags, Shutdown, SockFlag, SockType, SockaddrLike, SockaddrStorage,
};
use nix::time::{clock_gettime, ClockId};

/// An `io::Error` for a result the kernel should never give.
fn invalid_data(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

// ---------------------------------------------------------------- epoll

/// Readable (data, or the peer's FIN).
pub const EPOLLIN: u32 = EpollFlags::EPOLLIN.bits() as u32;
/// Writable (room in the send buffer, or a connect completed).
pub const EPOLLOUT: u32 = EpollFlags::EPOLLOUT.bits() as u32;
/// The peer shut down its write side (it may still read).
pub const EPOLLRDHUP: u32 = EpollFlags::EPOLLRDHUP.bits() as u32;
/// An error is pending on the socket (`SO_ERROR`).
pub const EPOLLERR: u32 = EpollFlags::EPOLLERR.bits() as u32;
/// Both directions are finished (or a connect failed).
pub const EPOLLHUP: u32 = EpollFlags::EPOLLHUP.bits() as u32;
/// Edge-triggered: report changes, once.
pub const EPOLLET: u32 = EpollFlags::EPOLLET.bits() as u32;
/// Urgent (`MSG_OOB`) data is pending: a read stops at its mark.
pub const EPOLLPRI: u32 = EpollFlags::EPOLLPRI.bits() as u32;

/// One event slot as `epoll_wait` fills it: the readiness bits and the
/// token that was registered with the descriptor. Read it with
/// [`event_bits`] and [`event_token`].
pub type Event = EpollEvent;

/// The readiness bits of an event.
pub fn event_bits(ev: &Event) -> u32 {
    ev.events().bits() as u32
}

/// The token of an event.
pub fn event_token(ev: &Event) -> u64 {
    ev.data()
}

/// An empty event array entry for [`Epoll::wait`] to fill.
pub fn empty_event() -> Event {
    EpollEvent::empty()
}

/// Set when `epoll_pwait2` turned out to be unavailable (a kernel before
/// 5.11, or a seccomp filter that does not know it): from then on timed
/// waits use `epoll_wait`, rounded up to whole milliseconds.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// An epoll instance (close-on-exec).
pub struct Epoll {
    inner: epoll::Epoll,
}

impl Epoll {
    /// A new epoll instance (`EPOLL_CLOEXEC`).
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll { inner: epoll::Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)? })
    }

    /// Register `fd` once, for good: the reactor never calls
    /// `EPOLL_CTL_MOD` (closing the descriptor removes it from the set).
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, events: u32) -> io::Result<()> {
        let ev = EpollEvent::new(EpollFlags::from_bits_retain(events as i32), token);
        Ok(self.inner.add(fd, ev)?)
    }

    /// Wait for events. `None` waits forever; `Some(d)` waits at most `d`,
    /// to the nanosecond (`epoll_pwait2`). `EINTR` is returned as an error
    /// for the caller to retry.
    pub fn wait(&self, events: &mut [Event], timeout: Option<Duration>) -> io::Result<usize> {
        let Some(timeout) = timeout else {
            return Ok(self.inner.wait(events, EpollTimeout::NONE)?);
        };
        if !NO_PWAIT2.load(Ordering::Relaxed) {
            match self.pwait2(events, timeout) {
                // EPERM is not an epoll_pwait2 error: it is a seccomp filter
                // refusing a system call it does not know.
                Err(Errno::ENOSYS | Errno::EPERM) => NO_PWAIT2.store(true, Ordering::Relaxed),
                result => return Ok(result?),
            }
        }
        Ok(self.wait_millis(events, timeout)?)
    }

    /// `epoll_wait` with `timeout` rounded up to whole milliseconds: never
    /// earlier than asked, at most a millisecond late.
    fn wait_millis(&self, events: &mut [Event], timeout: Duration) -> nix::Result<usize> {
        let ms = timeout.as_nanos().div_ceil(1_000_000);
        self.inner.wait(events, EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX))
    }

    fn pwait2(&self, events: &mut [Event], timeout: Duration) -> nix::Result<usize> {
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        let max = events.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // libc: nix has no epoll_pwait2 wrapper.
        // SAFETY: `Event` is nix's `EpollEvent`, `#[repr(transparent)]` over
        // `libc::epoll_event`, so `events` is a valid writable array of `max`
        // epoll_events, of which the kernel writes at most `max`; `ts` lives
        // for the call; a null sigmask leaves the signal mask alone.
        let n = unsafe {
            libc::epoll_pwait2(
                self.inner.0.as_raw_fd(),
                events.as_mut_ptr().cast::<libc::epoll_event>(),
                max,
                &ts,
                std::ptr::null(),
            )
        };
        Errno::result(n).map(|n| n as usize)
    }
}

// ---------------------------------------------------------------- sockets

fn to_socket_addr(addr: &SockaddrStorage) -> io::Result<SocketAddr> {
    if let Some(sin) = addr.as_sockaddr_in() {
        Ok(SocketAddr::from(*sin))
    } else if let Some(sin6) = addr.as_sockaddr_in6() {
        Ok(SocketAddr::from(*sin6))
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket address"))
    }
}

fn stream_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(family, SockType::Stream, flags, None)?;
    // Before any byte can arrive; accepted sockets inherit it from their
    // listener.
    set_oob_inline(fd.as_fd())?;
    Ok(fd)
}

/// `SO_OOBINLINE`: urgent (`MSG_OOB`) bytes stay in the stream, in order,
/// instead of being taken out of it (see [`crate::reactor::input`]).
/// Accepted sockets inherit it from their listener.
pub fn set_oob_inline(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(socket::setsockopt(&fd, sockopt::OobInline, &true)?)
}

/// Prepare a socket bound elsewhere for the reactor's accept loop: it must
/// be listening (`SO_ACCEPTCONN`, else `InvalidInput`), and it is made
/// non-blocking — `std::net::TcpListener` is blocking, and an accept loop
/// that runs until `EAGAIN` would otherwise block the reactor in its last
/// `accept` until the next client came. `SO_OOBINLINE` is set too (see
/// [`set_oob_inline`]): its connections inherit it.
pub fn adopt_listener(fd: BorrowedFd<'_>) -> io::Result<()> {
    if !socket::getsockopt(&fd, sockopt::AcceptConn)? {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a listening socket"));
    }
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    set_oob_inline(fd)
}

/// A non-blocking, close-on-exec listening socket bound to `addr`, with
/// `SO_REUSEADDR` (a restarted server can bind at once). `reuse_port` sets
/// `SO_REUSEPORT` (several listeners share the port, the kernel spreads
/// connections). `v6_only` sets `IPV6_V6ONLY` on an IPv6 address (`[::]`
/// then takes IPv4 too, or not); it is ignored for an IPv4 address. The
/// backlog is capped at `SOMAXCONN`, as the kernel would cap it.
pub fn listen(addr: &SocketAddr, backlog: i32, reuse_port: bool, v6_only: Option<bool>) -> io::Result<OwnedFd> {
    let fd = stream_socket(addr)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    if let (Some(only), SocketAddr::V6(_)) = (v6_only, addr) {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &only)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(*addr))?;
    let backlog = Backlog::new(backlog.min(i32::from(Backlog::MAXCONN)))?;
    socket::listen(&fd, backlog)?;
    Ok(fd)
}

/// Start a non-blocking connect, from `local` if given (the load
/// generator spreads connections over 127.0.0.x source addresses). `Ok`
/// means established or in progress (`EINPROGRESS`); completion is
/// announced by `EPOLLOUT`, and [`take_socket_error`] tells whether it
/// succeeded.
pub fn connect(addr: &SocketAddr, local: Option<&SocketAddr>) -> io::Result<OwnedFd> {
    let fd = stream_socket(addr)?;
    if let Some(local) = local {
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(*local))?;
    }
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(*addr)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e.into()),
    }
}

/// `accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`, returning the peer's
/// address: the new socket is ready for the reactor in one system call.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, SocketAddr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // libc: nix's accept4 passes a null address, which would cost a getpeername per connection.
    // SAFETY: `storage` and `len` are valid for writes and `len` is the size
    // of `storage`; the kernel writes at most `len` bytes of address.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            storage.as_mut_ptr().cast::<libc::sockaddr>(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    let fd = Errno::result(fd)?;
    // SAFETY: `fd` was just returned by a successful accept4; nothing else
    // owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `storage` is a zero-initialised sockaddr_storage into which the
    // kernel wrote an address of `len` bytes (from_raw checks `len`).
    let peer = unsafe { SockaddrStorage::from_raw(storage.as_ptr().cast::<libc::sockaddr>(), Some(len)) }
        .ok_or_else(|| invalid_data("accept4 returned no address"))?;
    Ok((fd, to_socket_addr(&peer)?))
}

/// The address a socket is bound to (the real port after binding port 0).
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    to_socket_addr(&socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())?)
}

/// The address of a connected socket's peer.
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    to_socket_addr(&socket::getpeername::<SockaddrStorage>(fd.as_raw_fd())?)
}

/// `TCP_NODELAY`: send small segments at once instead of waiting (Nagle).
pub fn set_nodelay(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    Ok(socket::setsockopt(&fd, sockopt::TcpNoDelay, &on)?)
}

/// Whether `TCP_NODELAY` is set.
pub fn nodelay(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(socket::getsockopt(&fd, sockopt::TcpNoDelay)?)
}

/// `SO_KEEPALIVE`: probe an idle connection so a vanished peer is noticed.
pub fn set_keepalive(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    Ok(socket::setsockopt(&fd, sockopt::KeepAlive, &on)?)
}

/// Whether `SO_KEEPALIVE` is set.
pub fn keepalive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(socket::getsockopt(&fd, sockopt::KeepAlive)?)
}

/// Keepalive timing: `TCP_KEEPIDLE` (seconds idle before the first probe),
/// `TCP_KEEPINTVL` (seconds between probes), `TCP_KEEPCNT` (unanswered
/// probes before the connection is reset).
pub fn set_keepalive_params(fd: BorrowedFd<'_>, idle_secs: u32, interval_secs: u32, count: u32) -> io::Result<()> {
    socket::setsockopt(&fd, sockopt::TcpKeepIdle, &idle_secs)?;
    socket::setsockopt(&fd, sockopt::TcpKeepInterval, &interval_secs)?;
    socket::setsockopt(&fd, sockopt::TcpKeepCount, &count)?;
    Ok(())
}

/// `(idle_secs, interval_secs, count)`, as [`set_keepalive_params`] takes them.
pub fn keepalive_params(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, u32)> {
    Ok((
        socket::getsockopt(&fd, sockopt::TcpKeepIdle)?,
        socket::getsockopt(&fd, sockopt::TcpKeepInterval)?,
        socket::getsockopt(&fd, sockopt::TcpKeepCount)?,
    ))
}

/// `SO_SNDBUF`. Linux doubles the value (for its bookkeeping) and caps it
/// at `net.core.wmem_max`; [`send_buffer`] reports what it kept.
pub fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    Ok(socket::setsockopt(&fd, sockopt::SndBuf, &bytes)?)
}

/// `SO_SNDBUF`, as the kernel reports it (doubled).
pub fn send_buffer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(socket::getsockopt(&fd, sockopt::SndBuf)?)
}

/// `SO_RCVBUF`, doubled and capped (`net.core.rmem_max`) like `SO_SNDBUF`.
pub fn set_recv_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    Ok(socket::setsockopt(&fd, sockopt::RcvBuf, &bytes)?)
}

/// `SO_RCVBUF`, as the kernel reports it (doubled).
pub fn recv_buffer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(socket::getsockopt(&fd, sockopt::RcvBuf)?)
}

/// Whether `SO_REUSEPORT` is set.
pub fn reuse_port(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(socket::getsockopt(&fd, sockopt::ReusePort)?)
}

/// `SO_LINGER` on with a zero timeout: closing the socket then discards
/// whatever is queued and sends an RST instead of a FIN (an abortive close,
/// which also leaves no `TIME_WAIT` behind).
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    Ok(socket::setsockopt(&fd, sockopt::Linger, &linger)?)
}

/// Read and clear the socket's pending error (`SO_ERROR`): how a
/// non-blocking connect or an `EPOLLERR` reports what went wrong.
pub fn take_socket_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let value = socket::getsockopt(&fd, sockopt::SocketError)?;
    Ok((value != 0).then(|| io::Error::from_raw_os_error(value)))
}

/// Read into the spare capacity of `buf`, growing its length by what was
/// read; `Ok(0)` is end of file (or a `buf` with no spare capacity). The
/// bytes past the old length need not be initialised.
pub fn read_into_spare(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
    // libc: nix's read takes an initialised &mut [u8]; zeroing the spare capacity first would cost a memset per read.
    // SAFETY: `spare` is valid for writes of `spare.len()` bytes; read(2)
    // only writes, never reads, them.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast::<libc::c_void>(), spare.len()) };
    let n = Errno::result(n)? as usize;
    // SAFETY: the kernel initialised the first `n` bytes of the spare
    // capacity, and `n <= spare.len()`.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// A plain send with `MSG_NOSIGNAL` (one buffer: cheaper than `sendmsg`).
/// A peer that has gone away yields `EPIPE`, never a `SIGPIPE`.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    Ok(socket::send(fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL)?)
}

/// A vectored send (`sendmsg`) with `MSG_NOSIGNAL`. The slices go to the
/// kernel as they are (`IoSlice` is an `iovec`): no copy, no allocation.
/// At most `UIO_MAXIOV` slices are passed; the count sent says how far it got.
pub fn send_vectored(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let bufs = &bufs[..bufs.len().min(libc::UIO_MAXIOV as usize)];
    Ok(socket::sendmsg::<()>(fd.as_raw_fd(), bufs, &[], MsgFlags::MSG_NOSIGNAL, None)?)
}

/// Half-close: send a FIN after the queued data; reading goes on.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(socket::shutdown(fd.as_raw_fd(), Shutdown::Write)?)
}

/// An OS error as a lower-case phrase ("address already in use"), for
/// messages such as "cannot listen on ADDR: REASON".
pub fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

// ---------------------------------------------------------------- wake-up

/// A non-blocking, close-on-exec eventfd with a counter of 0: another
/// thread [`eventfd_signal`]s it, the loop sees it readable and
/// [`eventfd_drain`]s it.
pub fn eventfd() -> io::Result<OwnedFd> {
    let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
    Ok(fd.into())
}

/// Add 1 to the counter, making the eventfd readable. A full counter
/// (`EAGAIN`) is already readable, so that counts as success.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
        Ok(8) | Err(Errno::EAGAIN) => Ok(()),
        Ok(_) => Err(invalid_data("short write to an eventfd")),
        Err(e) => Err(e.into()),
    }
}

/// Read and reset the counter; an already-zero counter (`EAGAIN`) is fine.
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut value = [0u8; 8];
    match nix::unistd::read(fd, &mut value) {
        Ok(_) | Err(Errno::EAGAIN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- process

/// Ignore `SIGPIPE`, so that writing to a closed socket is an `EPIPE` error
/// and never a signal that kills the process.
pub fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: SIG_IGN installs no handler, so no code of ours can run in
    // signal context.
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }?;
    Ok(())
}

fn sigset(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for &sig in signals {
        set.add(sig);
    }
    set
}

/// Block `signals` in the calling thread (`pthread_sigmask(SIG_BLOCK)`);
/// threads it spawns afterwards inherit the mask. Call it before spawning
/// workers, so a signal meant for a signalfd is not delivered to (and
/// acted on by) a thread that does not block it.
pub fn block_signals(signals: &[Signal]) -> io::Result<()> {
    Ok(sigset(signals).thread_block()?)
}

/// Block `signals` in this thread and return a non-blocking, close-on-exec
/// `signalfd` that reports them: signals become ordinary readable events
/// in the loop, with no handler running at an arbitrary point of the code.
pub fn signalfd(signals: &[Signal]) -> io::Result<OwnedFd> {
    let set = sigset(signals);
    set.thread_block()?;
    let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    Ok(fd.into())
}

/// Read one pending signal from a signalfd, `None` when none is pending.
pub fn read_signal(fd: BorrowedFd<'_>) -> io::Result<Option<Signal>> {
    // A signalfd_siginfo is 128 bytes; the signal number is its first field.
    let mut info = [0u8; size_of::<libc::signalfd_siginfo>()];
    match nix::unistd::read(fd, &mut info) {
        Ok(n) if n == info.len() => {
            let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
            let signo = i32::try_from(signo).map_err(|_| invalid_data("signal number out of range"))?;
            Ok(Some(Signal::try_from(signo)?))
        }
        Ok(_) => Err(invalid_data("short read from a signalfd")),
        Err(Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Raise the soft open-file limit to the hard limit; returns the new limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (_, hard) = resource::getrlimit(Resource::RLIMIT_NOFILE)?;
    resource::setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// CPU time (user + system) this process has used, in microseconds; 0 if
/// the kernel will not say (getrusage of oneself cannot fail in practice).
pub fn process_cpu_micros() -> u64 {
    let Ok(usage) = resource::getrusage(UsageWho::RUSAGE_SELF) else {
        return 0;
    };
    let micros = |tv: nix::sys::time::TimeVal| tv.tv_sec() as u64 * 1_000_000 + tv.tv_usec() as u64;
    micros(usage.user_time()) + micros(usage.system_time())
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`), in
/// microseconds; 0 if the clock cannot be read.
pub fn thread_cpu_micros() -> u64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0, |ts| u64::try_from(Duration::from(ts).as_micros()).unwrap_or(u64::MAX))
}

/// Set the calling thread's timer slack (`prctl(PR_SET_TIMERSLACK)`): how
/// late the kernel may fire its timers to batch wake-ups (50 µs by
/// default). The load generator sets 1 ns for precise pacing; 0 restores
/// the default.
pub fn set_timer_slack_ns(ns: u64) -> io::Result<()> {
    let ns = libc::c_ulong::try_from(ns).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(nix::sys::prctl::set_timerslack(ns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    const LOCALHOST: &str = "127.0.0.1:0";

    fn any_port() -> SocketAddr {
        LOCALHOST.parse().unwrap()
    }

    /// A connected TCP pair over loopback: (client, accepted server side).
    fn tcp_pair() -> (TcpStream, OwnedFd, SocketAddr) {
        let listener = listen(&any_port(), 16, false, None).unwrap();
        let addr = local_addr(listener.as_fd()).unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (server, peer) = accept(listener.as_fd()).unwrap();
        (client, server, peer)
    }

    /// `wait` until at least one event arrives or 5 s pass, retrying EINTR.
    fn wait_some(ep: &Epoll, events: &mut [Event], timeout: Duration) -> usize {
        loop {
            match ep.wait(events, Some(timeout)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.unwrap(),
            }
        }
    }

    #[test]
    fn accept_reports_the_clients_local_address() {
        let (client, server, peer) = tcp_pair();
        assert_eq!(peer, local_addr(client.as_fd()).unwrap());
        assert_eq!(peer_addr(server.as_fd()).unwrap(), peer);
        assert_eq!(peer_addr(client.as_fd()).unwrap(), local_addr(server.as_fd()).unwrap());
    }

    #[test]
    fn boolean_options_round_trip() {
        let (client, _server, _) = tcp_pair();
        let fd = client.as_fd();
        for on in [true, false, true] {
            set_nodelay(fd, on).unwrap();
            assert_eq!(nodelay(fd).unwrap(), on);
            set_keepalive(fd, on).unwrap();
            assert_eq!(keepalive(fd).unwrap(), on);
        }
    }

    #[test]
    fn keepalive_params_round_trip() {
        let (client, _server, _) = tcp_pair();
        set_keepalive_params(client.as_fd(), 30, 5, 4).unwrap();
        assert_eq!(keepalive_params(client.as_fd()).unwrap(), (30, 5, 4));
        set_keepalive_params(client.as_fd(), 7200, 75, 9).unwrap();
        assert_eq!(keepalive_params(client.as_fd()).unwrap(), (7200, 75, 9));
    }

    #[test]
    fn buffer_sizes_round_trip_at_least_as_requested() {
        let (client, _server, _) = tcp_pair();
        let fd = client.as_fd();
        set_send_buffer(fd, 64 * 1024).unwrap();
        assert!(send_buffer(fd).unwrap() >= 64 * 1024);
        set_recv_buffer(fd, 48 * 1024).unwrap();
        assert!(recv_buffer(fd).unwrap() >= 48 * 1024);
    }

    #[test]
    fn listen_sets_flags_and_reuse_addr() {
        let fd = listen(&any_port(), 16, false, None).unwrap();
        assert!(socket::getsockopt(&fd, sockopt::ReuseAddr).unwrap());
        assert!(!reuse_port(fd.as_fd()).unwrap());
        // /proc/self/fdinfo shows the open flags in octal, O_CLOEXEC included.
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
        let flags = i32::from_str_radix(flags, 8).unwrap();
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        assert_ne!(flags & libc::O_CLOEXEC, 0);
        let err = accept(fd.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // A backlog above SOMAXCONN is capped, not refused.
        listen(&any_port(), i32::MAX, false, None).unwrap();
    }

    #[test]
    fn reuse_port_lets_a_second_listener_share_the_port() {
        let first = listen(&any_port(), 16, true, None).unwrap();
        assert!(reuse_port(first.as_fd()).unwrap());
        let addr = local_addr(first.as_fd()).unwrap();
        let second = listen(&addr, 16, true, None).unwrap();
        assert_eq!(local_addr(second.as_fd()).unwrap(), addr);

        let plain = listen(&any_port(), 16, false, None).unwrap();
        let addr = local_addr(plain.as_fd()).unwrap();
        let err = listen(&addr, 16, false, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(describe(&err), "address already in use");
    }

    #[test]
    fn v6_only_is_set_as_asked() {
        let loopback: SocketAddr = "[::1]:0".parse().unwrap();
        let fd = listen(&loopback, 16, false, Some(true)).unwrap();
        assert!(socket::getsockopt(&fd, sockopt::Ipv6V6Only).unwrap());
        assert!(local_addr(fd.as_fd()).unwrap().is_ipv6());
        // Binding a specific IPv6 address makes Linux set IPV6_V6ONLY
        // itself, so `false` is only visible (and only means anything) on [::].
        let any: SocketAddr = "[::]:0".parse().unwrap();
        for only in [false, true] {
            let fd = listen(&any, 16, false, Some(only)).unwrap();
            assert_eq!(socket::getsockopt(&fd, sockopt::Ipv6V6Only).unwrap(), only);
            let port = local_addr(fd.as_fd()).unwrap().port();
            let v4 = TcpStream::connect(("127.0.0.1", port));
            assert_eq!(v4.is_ok(), !only, "IPv4 reaches a [::] listener unless v6-only");
        }
        // Ignored for IPv4.
        listen(&any_port(), 16, false, Some(true)).unwrap();
    }

    #[test]
    fn linger_zero_then_close_resets_the_peer() {
        let (mut client, server, _) = tcp_pair();
        set_linger_zero(server.as_fd()).unwrap();
        let linger = socket::getsockopt(&server, sockopt::Linger).unwrap();
        assert_eq!((linger.l_onoff, linger.l_linger), (1, 0));
        drop(server);
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let err = client.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn connect_completes_and_refusal_shows_in_so_error() {
        let listener = listen(&any_port(), 16, false, None).unwrap();
        let addr = local_addr(listener.as_fd()).unwrap();
        let ep = Epoll::new().unwrap();
        let mut events = [empty_event(); 4];

        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let fd = connect(&addr, Some(&local)).unwrap();
        ep.add(fd.as_fd(), 1, EPOLLOUT | EPOLLET).unwrap();
        assert_eq!(wait_some(&ep, &mut events, Duration::from_secs(5)), 1);
        assert_eq!(event_token(&events[0]), 1);
        assert_ne!(event_bits(&events[0]) & EPOLLOUT, 0);
        assert!(take_socket_error(fd.as_fd()).unwrap().is_none());
        let (_server, peer) = accept(listener.as_fd()).unwrap();
        assert_eq!(peer, local_addr(fd.as_fd()).unwrap());

        drop(listener); // nothing listens on `addr` now
        match connect(&addr, None) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            Ok(fd) => {
                ep.add(fd.as_fd(), 2, EPOLLOUT | EPOLLET).unwrap();
                assert_eq!(wait_some(&ep, &mut events, Duration::from_secs(5)), 1);
                assert_ne!(event_bits(&events[0]) & (EPOLLERR | EPOLLHUP), 0);
                let err = take_socket_error(fd.as_fd()).unwrap().unwrap();
                assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
                assert!(take_socket_error(fd.as_fd()).unwrap().is_none(), "SO_ERROR is cleared by reading it");
            }
        }
    }

    #[test]
    fn wait_with_a_microsecond_timeout_returns_empty() {
        let ep = Epoll::new().unwrap();
        let mut events = [empty_event(); 4];
        // Returning at all is the test: no timing assertion on a busy machine.
        assert_eq!(wait_some(&ep, &mut events, Duration::from_micros(300)), 0);
        assert_eq!(wait_some(&ep, &mut events, Duration::ZERO), 0);
        // The fallback for kernels without epoll_pwait2.
        assert_eq!(ep.wait_millis(&mut events, Duration::from_micros(300)), Ok(0));
    }

    #[test]
    fn eventfd_wakes_epoll_and_drains() {
        let ep = Epoll::new().unwrap();
        let efd = eventfd().unwrap();
        // Level-triggered, so "not readable" after the drain is observable.
        ep.add(efd.as_fd(), 42, EPOLLIN).unwrap();
        let mut events = [empty_event(); 4];
        assert_eq!(wait_some(&ep, &mut events, Duration::ZERO), 0);
        eventfd_drain(efd.as_fd()).unwrap(); // empty: EAGAIN is Ok

        eventfd_signal(efd.as_fd()).unwrap();
        eventfd_signal(efd.as_fd()).unwrap();
        assert_eq!(wait_some(&ep, &mut events, Duration::from_secs(5)), 1);
        assert_eq!(event_token(&events[0]), 42);
        assert_ne!(event_bits(&events[0]) & EPOLLIN, 0);
        eventfd_drain(efd.as_fd()).unwrap();
        assert_eq!(wait_some(&ep, &mut events, Duration::ZERO), 0);

        // A full counter (EAGAIN on write) still counts as signalled.
        nix::unistd::write(&efd, &(u64::MAX - 1).to_ne_bytes()).unwrap();
        eventfd_signal(efd.as_fd()).unwrap();
        assert_eq!(wait_some(&ep, &mut events, Duration::ZERO), 1);
    }

    #[test]
    fn read_into_spare_appends() {
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = Vec::with_capacity(16);
        buf.extend_from_slice(b"ab");
        let err = read_into_spare(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        a.write_all(b"cd").unwrap();
        assert_eq!(read_into_spare(b.as_fd(), &mut buf).unwrap(), 2);
        assert_eq!(buf, b"abcd");
        drop(a);
        assert_eq!(read_into_spare(b.as_fd(), &mut buf).unwrap(), 0);
        assert_eq!(buf, b"abcd");
    }

    #[test]
    fn send_vectored_and_shutdown_write() {
        let (a, mut b) = UnixStream::pair().unwrap();
        assert_eq!(send(a.as_fd(), b"one ").unwrap(), 4);
        let bufs = [IoSlice::new(b"two "), IoSlice::new(b""), IoSlice::new(b"three")];
        assert_eq!(send_vectored(a.as_fd(), &bufs).unwrap(), 9);
        shutdown_write(a.as_fd()).unwrap();
        let mut got = String::new();
        b.read_to_string(&mut got).unwrap();
        assert_eq!(got, "one two three");
        drop(b);
        let err = send(a.as_fd(), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn signalfd_reports_a_raised_signal() {
        // raise() targets the calling thread, which blocks the signal: the
        // signal stays pending for the signalfd and no other test sees it.
        let fd = signalfd(&[Signal::SIGUSR2]).unwrap();
        assert_eq!(read_signal(fd.as_fd()).unwrap(), None);
        signal::raise(Signal::SIGUSR2).unwrap();
        assert_eq!(read_signal(fd.as_fd()).unwrap(), Some(Signal::SIGUSR2));
        assert_eq!(read_signal(fd.as_fd()).unwrap(), None);

        block_signals(&[Signal::SIGUSR1]).unwrap();
        let mask = SigSet::thread_get_mask().unwrap();
        assert!(mask.contains(Signal::SIGUSR1) && mask.contains(Signal::SIGUSR2));
    }

    #[test]
    fn ignore_sigpipe_sets_sig_ign() {
        ignore_sigpipe().unwrap();
        // SAFETY: reinstalling SIG_IGN, which runs no code.
        let old = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.unwrap();
        assert!(matches!(old, SigHandler::SigIgn));
    }

    #[test]
    fn process_limits_and_clocks() {
        let limit = raise_nofile_limit().unwrap();
        assert_eq!(resource::getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, limit);

        let before = thread_cpu_micros();
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_micros() > before);
        assert!(process_cpu_micros() > 0);

        set_timer_slack_ns(1).unwrap();
        assert_eq!(nix::sys::prctl::get_timerslack().unwrap(), 1);
        set_timer_slack_ns(0).unwrap(); // back to the default
    }
}
