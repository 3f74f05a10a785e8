//! edgeloop: a hand-written, single-threaded, edge-triggered epoll reactor.
//!
//! (The tour of how one byte flows through is written below the module
//! list once the servers exist.)

pub mod access;
pub mod buffer;
pub mod conn;
pub mod framing;
pub mod handler;
pub mod reactor;
pub mod stats;
pub mod sys;
pub mod timer;

pub use access::{AccessList, Cidr};
pub use framing::Framing;
pub use handler::{CloseReason, ConnId, Handler};
pub use reactor::{Config, Ctx, OutbufPolicy, Reactor};
pub use stats::Counters;
pub mod load;
pub mod servers;
