//! # edgeloop-cli
//!
//! The programs built on the [`edgeloop`] reactor: what `edgeloop echo`,
//! `edgeloop chat` and `edgeloop load` run. They use the library the way
//! its examples do, through [`edgeloop::Handler`] and [`edgeloop::Ctx`];
//! they live in a crate of their own so that a user of the reactor does
//! not compile a CLI parser, histograms, plots or an HTTP parser.
//!
//! - [`servers`] — the echo server and the chat server (across servers on
//!   Redis: [`servers::chat`]);
//! - [`load`] — the open-loop load generator;
//! - [`workers`] — N reactors on N threads sharing one address, signals
//!   and shutdown; [`metrics`] — Prometheus text over HTTP, served by a
//!   worker's own reactor;
//! - [`access`] — the `--allow`/`--deny` lists, an [`edgeloop::AcceptFilter`].

#![warn(missing_docs)]

pub mod access;
pub mod load;
pub mod metrics;
pub mod servers;
pub mod workers;
