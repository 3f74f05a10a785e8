//! The load generator (work in progress: see issue 4).

use std::net::SocketAddr;
use std::process::ExitCode;

/// `edgeloop load` options.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Address of the echo server.
    #[arg(long)]
    pub connect: SocketAddr,
}

pub fn run(_args: LoadArgs) -> ExitCode {
    eprintln!("edgeloop load: not implemented yet");
    ExitCode::from(1)
}
