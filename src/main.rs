//! The `edgeloop` command line. Only argument parsing and wiring live
//! here; everything else is the library.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use std::sync::Arc;

use edgeloop::servers::chat::{self, redis::RedisUrl, Chat};
use edgeloop::servers::echo::Echo;
use edgeloop::{AccessList, Cidr, Config, Framing, Handler, ListenOptions, OutputPolicy, OverLimit, Reactor};

#[derive(Parser)]
#[command(
    name = "edgeloop",
    version,
    about = "An edge-triggered epoll reactor: echo and chat servers, and a load generator"
)]
struct Cli {
    /// More logging on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo every frame back to its sender.
    Echo {
        #[command(flatten)]
        server: ServerArgs,
        /// Framing: raw, line, 1, 2 or 4 (length-prefixed, big-endian).
        #[arg(long, default_value = "raw")]
        framing: Framing,
    },
    /// A line-based chat room server with nicknames and rooms.
    Chat {
        #[command(flatten)]
        server: ServerArgs,
        /// Chat is always line-framed; the option exists so that scripts can
        /// pass the same options to both servers.
        #[arg(long, default_value = "line", value_parser = ["line"])]
        framing: String,
        /// Lines per second handled from each client, bursts up to twice that; 0: no limit.
        #[arg(long, default_value_t = edgeloop::servers::chat::DEFAULT_RATE, value_name = "R")]
        chat_rate: u32,
        /// Share rooms, nicknames and /who with every chat server on this Redis.
        #[arg(long, value_name = "redis://HOST:PORT[/DB]")]
        redis: Option<RedisUrl>,
    },
    /// Drive an echo server with N connections and report throughput and latency.
    Load(edgeloop::load::LoadArgs),
}

/// Options shared by the servers.
#[derive(Args)]
struct ServerArgs {
    /// Address to listen on; port 0 picks a free port; IPv6 as [::1]:0.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Largest frame payload in bytes (for line: the line with its \n); at most 2 GiB.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=edgeloop::reactor::MAX_FRAME_LIMIT as u64))]
    max_frame: u64,
    /// Connections beyond N are accepted and closed at once.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_conns: usize,
    /// Per-connection output queue limit in bytes.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    max_outbuf: usize,
    /// Close a connection whose pending output makes no progress this long.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    send_timeout: u64,
    /// Close a connection that neither sends nor receives this long (0: off).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    idle_timeout: u64,
    /// Serve only peers inside this network (repeatable).
    #[arg(long, value_name = "CIDR")]
    allow: Vec<Cidr>,
    /// Refuse peers inside this network (repeatable).
    #[arg(long, value_name = "CIDR")]
    deny: Vec<Cidr>,
    /// Print a line of counters to stderr every SECS seconds (0: off).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    stats: u64,
}

impl ServerArgs {
    fn config(&self, over_limit: OverLimit) -> Config {
        Config {
            max_frame: self.max_frame as usize,
            max_conns: self.max_conns,
            output: OutputPolicy::new(self.max_outbuf, over_limit),
            send_timeout: Duration::from_millis(self.send_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            stats_interval: Duration::from_secs(self.stats),
            handle_signals: true,
            ..Config::default()
        }
    }

    /// The listener: its framing, and `--allow`/`--deny` as its accept filter.
    fn listen_options(&self, framing: Framing) -> ListenOptions {
        let access = AccessList { allow: self.allow.clone(), deny: self.deny.clone() };
        let filter: Option<edgeloop::AcceptFilter> = if access.allow.is_empty() && access.deny.is_empty() {
            None
        } else {
            Some(Arc::new(move |peer: &SocketAddr| access.permits(peer.ip())))
        };
        ListenOptions { framing, filter, ..ListenOptions::default() }
    }
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match cli.command {
        Command::Echo { server, framing } => {
            serve(&server, server.config(OverLimit::Pause), server.listen_options(framing), Echo::new(framing))
        }
        Command::Chat { server, chat_rate, redis, .. } => {
            let config = chat::tune(server.config(OverLimit::Disconnect), redis.is_some());
            let chat = match redis {
                // Redis must answer before anything is served.
                Some(url) => match chat::redis::probe(&url, Duration::from_secs(5)) {
                    Ok(addr) => Chat::with_redis(chat_rate, url, addr, config.max_frame),
                    Err(why) => return fail(format_args!("cannot reach Redis at {}: {why}", url.text)),
                },
                None => Chat::new(chat_rate),
            };
            serve(&server, config, server.listen_options(Framing::Line), chat)
        }
        Command::Load(args) => edgeloop::load::run(args),
    }
}

/// Print a command-line error with the usage of the subcommand it concerns
/// (clap omits the usage for a bad option value), then exit 2.
fn usage_error(e: clap::Error) -> ! {
    if !e.use_stderr() {
        e.exit(); // --help and --version: stdout, status 0
    }
    let _ = e.print();
    let text = e.to_string();
    if !text.contains("Usage:") {
        let mut cli = Cli::command();
        cli.build();
        let sub = std::env::args().nth(1).and_then(|name| cli.find_subcommand_mut(&name).map(|s| s.render_usage()));
        eprintln!("\n{}", sub.unwrap_or_else(|| cli.render_usage()));
    }
    std::process::exit(2);
}

/// Listen, announce the address, run until a signal has drained everything.
fn serve<H: Handler>(server: &ServerArgs, config: Config, listen: ListenOptions, handler: H) -> ExitCode {
    if let Err(e) = edgeloop::sys::raise_nofile_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    let mut reactor = match Reactor::new(config) {
        Ok(r) => r,
        Err(e) => return fail(format_args!("cannot start the reactor: {e}")),
    };
    let addr = &server.listen;
    let handler = reactor.add_handler(handler);
    let local = match reactor.listen(addr, handler, listen) {
        Ok(local) => local,
        Err(e) => return fail(format_args!("cannot listen on {addr}: {}", edgeloop::sys::describe(&e))),
    };
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {local}").and_then(|_| stdout.flush());
    match reactor.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format_args!("event loop failed: {e}")),
    }
}

fn fail(msg: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("edgeloop: {msg}");
    ExitCode::from(1)
}
