//! tokio-echo: the echo server a Rust user would write with tokio's
//! current-thread runtime: one task per connection, read into a buffer,
//! `write_all` it back, TCP_NODELAY.
//!
//! usage: tokio-echo IP:PORT   (port 0 = pick a free port)

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// Per-connection buffer. 8 KiB (the size std::io::copy and BufReader use)
/// rather than 64 KiB: a typical choice, and fair on per-connection memory
/// (every connection, idle or not, owns one). Since `write_all` finishes before
/// the next read, this is also all the pending output a connection can hold.
const BUF_SIZE: usize = 8 * 1024;

async fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match stream.read(&mut buf).await {
            // EOF (half-close): everything read has already been written back.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: tokio-echo IP:PORT");
        std::process::exit(2);
    });
    let addr: SocketAddr = arg.parse().unwrap_or_else(|e| {
        eprintln!("bad address {arg}: {e}");
        std::process::exit(2);
    });

    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    println!("listening on {}", listener.local_addr()?);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(echo(stream));
                }
                // e.g. EMFILE: keep serving the connections we have.
                Err(e) => eprintln!("accept: {e}"),
            },
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}
