//! The system-call layer: the only `unsafe` in the crate.
//!
//! Every function here is a thin, safe wrapper over one Linux system call
//! (through `libc`), returning `io::Result` with `errno` turned into an
//! `io::Error`. Nothing here decides policy: retrying on `EINTR`, treating
//! `EAGAIN` as "drained", closing on `ECONNRESET` are all decided by the
//! callers, where the reason can be written next to the decision.
//!
//! Descriptors are [`OwnedFd`]s: dropping one closes it, so a connection's
//! socket cannot leak and cannot be closed twice.

use std::io::{self, IoSlice};
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Turn a `-1`-on-error return value into an `io::Result`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Take ownership of a descriptor a system call just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful system call that
    // creates a descriptor; nothing else owns it yet.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

// ---------------------------------------------------------------- epoll

/// Readiness bits, re-exported with the names `epoll(7)` uses.
pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
pub const EPOLLET: u32 = libc::EPOLLET as u32;

/// One event as `epoll_wait` reports it: the readiness bits and the token
/// that was registered with the descriptor.
pub type Event = libc::epoll_event;

/// The readiness bits of an event (a copy: the struct is packed on x86-64).
pub fn event_bits(ev: &Event) -> u32 {
    ev.events
}

/// The token of an event.
pub fn event_token(ev: &Event) -> u64 {
    ev.u64
}

/// An empty event array entry for `epoll_wait` to fill.
pub fn empty_event() -> Event {
    Event { events: 0, u64: 0 }
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers are passed; the result is checked.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd: owned(fd) })
    }

    /// Register `fd` once, for good: the reactor never calls
    /// `EPOLL_CTL_MOD` (closing the descriptor removes it from the set).
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = Event { events, u64: token };
        // SAFETY: `ev` is a valid, initialised epoll_event that lives for
        // the duration of the call; the kernel copies it.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Wait for events; `timeout_ms` of -1 waits forever. `EINTR` is
    /// returned as an error for the caller to retry.
    pub fn wait(&self, events: &mut [Event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: `events` is a valid writable buffer of `max` entries; the
        // kernel writes at most `max` of them.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        Ok(check(n)? as usize)
    }
}

// ---------------------------------------------------------------- sockets

fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned
            // for sockaddr_in.
            unsafe { (&mut storage as *mut _ as *mut libc::sockaddr_in).write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { (&mut storage as *mut _ as *mut libc::sockaddr_in6).write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the kernel wrote a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the kernel wrote a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id)))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket address")),
    }
}

fn stream_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let ty = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: no pointers are passed; the result is checked.
    let fd = check(unsafe { libc::socket(domain, ty, 0) })?;
    Ok(owned(fd))
}

fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the duration of the call and its
    // size is passed alongside.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A non-blocking listening socket with `SO_REUSEADDR`, bound to `addr`.
pub fn listen(addr: &SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = stream_socket(addr)?;
    set_int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: `storage` holds a valid socket address of `len` bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), &storage as *const _ as *const libc::sockaddr, len) })?;
    // SAFETY: no pointers are passed.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
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
        let (storage, len) = to_sockaddr(local);
        // SAFETY: `storage` holds a valid socket address of `len` bytes.
        check(unsafe { libc::bind(fd.as_raw_fd(), &storage as *const _ as *const libc::sockaddr, len) })?;
    }
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: `storage` holds a valid socket address of `len` bytes.
    let ret = unsafe { libc::connect(fd.as_raw_fd(), &storage as *const _ as *const libc::sockaddr, len) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(fd)
}

/// `accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`: the new socket is ready
/// for the reactor without further system calls.
pub fn accept(listener: RawFd) -> io::Result<(OwnedFd, SocketAddr)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid for writes; the kernel writes
    // at most `len` bytes of address.
    let fd = check(unsafe {
        libc::accept4(
            listener,
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    let fd = owned(fd);
    Ok((fd, from_sockaddr(&storage)?))
}

/// The address a socket is bound to (the real port after binding port 0).
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are valid for writes.
    check(unsafe { libc::getsockname(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len) })?;
    from_sockaddr(&storage)
}

pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Read and clear the socket's pending error (`SO_ERROR`): how a
/// non-blocking connect or an `EPOLLERR` reports what went wrong.
pub fn take_socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of a c_int.
    check(unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut value as *mut _ as *mut libc::c_void, &mut len)
    })?;
    Ok((value != 0).then(|| io::Error::from_raw_os_error(value)))
}

/// Read into the spare capacity of `buf`, growing its length by what was
/// read. The bytes past the old length need not be initialised.
pub fn read_into_spare(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
    // SAFETY: `spare` is valid for writes of `spare.len()` bytes; read(2)
    // only writes, never reads, them.
    let n = check_size(unsafe { libc::read(fd, spare.as_mut_ptr() as *mut libc::c_void, spare.len()) })?;
    // SAFETY: the kernel initialised the first `n` bytes of the spare
    // capacity, and `n <= spare.len()`.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// A vectored send with `MSG_NOSIGNAL`: a peer that has gone away yields
/// `EPIPE` instead of a `SIGPIPE` that would kill the process.
pub fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: `msg` points at `msg_iovlen` valid iovecs that outlive the
    // call; the kernel only reads them.
    check_size(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) })
}

/// A plain send with `MSG_NOSIGNAL` (one buffer: cheaper than `sendmsg`).
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    check_size(unsafe { libc::send(fd, buf.as_ptr() as *const libc::c_void, buf.len(), libc::MSG_NOSIGNAL) })
}

pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: no pointers are passed.
    check(unsafe { libc::shutdown(fd, libc::SHUT_WR) })?;
    Ok(())
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

// ---------------------------------------------------------------- process

/// Ignore `SIGPIPE`, so that writing to a closed socket is an `EPIPE` error
/// and never a signal that kills the process.
pub fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition; no handler code runs.
    if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Block `signals` for this thread and return a non-blocking `signalfd`
/// that reports them: signals become ordinary readable events in the
/// loop, with no handler running at an arbitrary point of the code.
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: all-zero is a valid sigset_t, and sigemptyset/sigaddset only
    // write into it.
    let mut set: libc::sigset_t = unsafe { zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in signals {
        // SAFETY: `set` is a valid sigset_t; `sig` is a signal number.
        check(unsafe { libc::sigaddset(&mut set, sig) })?;
    }
    // SAFETY: `set` is valid; the old mask is not wanted.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    // SAFETY: `set` is valid for the duration of the call.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    Ok(owned(fd))
}

/// Read one pending signal number from a signalfd, `None` when none is
/// pending.
pub fn read_signal(fd: RawFd) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain old data.
    let mut info: libc::signalfd_siginfo = unsafe { zeroed() };
    let size = size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is valid for writes of `size` bytes.
    match check_size(unsafe { libc::read(fd, &mut info as *mut _ as *mut libc::c_void, size) }) {
        Ok(n) if n == size => Ok(Some(info.ssi_signo as i32)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Raise the soft open-file limit to the hard limit; returns the new limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is valid for writes.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

/// CPU time (user + system) this process has used, in microseconds.
pub fn process_cpu_micros() -> u64 {
    // SAFETY: all-zero is a valid rusage.
    let mut usage: libc::rusage = unsafe { zeroed() };
    // SAFETY: `usage` is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): the
/// load generator judges each of its threads by it, since a process total
/// hides one saturated thread among idle ones.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is valid for writes; the clock id is a constant the
    // kernel has supported since 2.6.12, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
