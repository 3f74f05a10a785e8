//! tungstenite-echo: the WebSocket echo server a Rust user would write with
//! tokio-tungstenite on tokio's current-thread runtime, after the crate's
//! own `echo-server` example: one task per connection, the read half
//! forwarded to the write half (text and binary messages; tungstenite
//! answers pings and closes itself), TCP_NODELAY.
//!
//! usage: tungstenite-echo IP:PORT   (port 0 = pick a free port)

use std::net::SocketAddr;

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    let (write, read) = ws.split();
    // Errors end the connection, as in the example.
    let _ = read.try_filter(|msg| future::ready(msg.is_text() || msg.is_binary())).forward(write).await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: tungstenite-echo IP:PORT");
        std::process::exit(2);
    });
    let addr: SocketAddr = arg.parse().unwrap_or_else(|e| {
        eprintln!("bad address {arg}: {e}");
        std::process::exit(2);
    });
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve(stream));
                }
            }
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
