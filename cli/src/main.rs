//! The `edgeloop` command line. Only argument parsing and wiring live
//! here; the servers and the load generator are in this crate's library
//! (`edgeloop_cli`), the reactor in `edgeloop`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use std::sync::Arc;

use edgeloop::{Config, Framing, Handler, ListenOptions, OutputPolicy, OverLimit};
use edgeloop_cli::access::{AccessList, Cidr};
use edgeloop_cli::servers::chat::{self, url::RedisUrl, Chat};
use edgeloop_cli::servers::echo::Echo;

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
        /// Framing: raw, line, 1, 2 or 4 (length-prefixed, big-endian), or exact:N (every frame N bytes).
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
        #[arg(long, default_value_t = edgeloop_cli::servers::chat::DEFAULT_RATE, value_name = "R")]
        chat_rate: u32,
        /// Share rooms, nicknames and /who with every chat server on this Redis.
        /// (Parsed here, not by clap: clap's error would echo the password.)
        #[arg(long, value_name = "redis://[[USER]:PASSWORD@]HOST:PORT[/DB]")]
        redis: Option<String>,
        /// Also serve the chat to browsers on ADDR: a page at / and WebSocket members at /chat.
        #[arg(long, value_name = "ADDR")]
        ws: Option<SocketAddr>,
    },
    /// Drive an echo server with N connections and report throughput and latency.
    Load(edgeloop_cli::load::LoadArgs),
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
    /// Close a connection that neither sends nor receives a whole frame this long (0: off).
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
    /// N reactors on N threads, one listening socket each (SO_REUSEPORT); 0: one per CPU.
    #[arg(long, default_value_t = 1, value_name = "N")]
    workers: usize,
    /// Serve Prometheus metrics over HTTP on ADDR (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

impl ServerArgs {
    fn config(&self, over_limit: OverLimit) -> Config {
        Config {
            max_frame: self.max_frame as usize,
            max_conns: self.max_conns,
            output: OutputPolicy::new(self.max_outbuf, over_limit),
            send_timeout: Duration::from_millis(self.send_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            ..Config::default()
        }
    }

    fn workers(&self) -> usize {
        if self.workers == 0 {
            edgeloop_cli::workers::default_workers()
        } else {
            self.workers
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
            // Fault injection for the crash-isolation tests: a frame equal
            // to this makes the echo handler panic.
            let panic_on = std::env::var_os("EDGELOOP_PANIC_ON").map(|v| v.into_encoded_bytes());
            let config = server.config(OverLimit::Pause);
            serve(&server, config, framing, None, move |_| Echo::new(framing).panicking_on(panic_on.clone()))
        }
        Command::Chat { server, chat_rate, redis, ws, .. } => {
            // The page and WebSocket members: another listener of the same
            // chat, with its own framing.
            let also = ws.map(|addr| (addr, server.listen_options(Framing::Ws)));
            if server.workers() > 1 && redis.is_none() {
                usage_exit("chat --workers N with N > 1 needs --redis: rooms span workers through Redis");
            }
            let redis: Option<RedisUrl> = match redis.map(|text| text.parse()) {
                Some(Ok(url)) => Some(url),
                Some(Err(why)) => usage_exit(&format!("invalid value for '--redis': {why}")),
                None => None,
            };
            let config = chat::tune(server.config(OverLimit::Disconnect), redis.is_some());
            let max_frame = config.max_frame;
            // Redis must answer before anything is served.
            let redis = match redis {
                Some(url) => match chat::url::probe(&url, Duration::from_secs(5)) {
                    Ok(addr) => Some((url, addr)),
                    Err(why) => return fail(format_args!("cannot reach Redis at {}: {why}", url.text)),
                },
                None => None,
            };
            // Every worker is a chat server of its own on the same Redis.
            serve(&server, config, Framing::Line, also, move |_| match &redis {
                Some((url, addr)) => Chat::with_redis(chat_rate, url.clone(), *addr, max_frame),
                None => Chat::new(chat_rate),
            })
        }
        Command::Load(args) => edgeloop_cli::load::run(args),
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

/// A usage error found after parsing: the message, the subcommand's usage,
/// exit 2.
fn usage_exit(msg: &str) -> ! {
    let mut cli = Cli::command();
    cli.build();
    let sub = std::env::args().nth(1).and_then(|name| cli.find_subcommand_mut(&name).map(|s| s.render_usage()));
    eprintln!("error: {msg}\n\n{}", sub.unwrap_or_else(|| cli.render_usage()));
    std::process::exit(2);
}

/// Listen (on every worker), announce the address, run until a signal
/// has drained everything.
fn serve<H, F>(
    server: &ServerArgs,
    config: Config,
    framing: Framing,
    also: Option<(SocketAddr, ListenOptions)>,
    make_handler: F,
) -> ExitCode
where
    H: Handler,
    F: Fn(usize) -> H + Send + Sync + 'static,
{
    if let Err(e) = edgeloop::sys::raise_nofile_limit() {
        log::warn!("cannot raise the open-file limit: {e}");
    }
    let run = edgeloop_cli::workers::Server {
        workers: server.workers(),
        listen: server.listen,
        listen_options: server.listen_options(framing),
        config,
        metrics: server.metrics,
        stats: Duration::from_secs(server.stats),
        also,
    };
    match run.run(make_handler) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format_args!("{e}")),
    }
}

fn fail(msg: std::fmt::Arguments<'_>) -> ExitCode {
    eprintln!("edgeloop: {msg}");
    ExitCode::from(1)
}
