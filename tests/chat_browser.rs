//! A real browser on `chat --ws`: headless Chromium, driven by selenium
//! (`scripts/lib/chat_browser.py`), opens the page, types a line a TCP
//! member receives, shows a line a TCP member sent, says when the server
//! is gone and reconnects when it is back. The screenshot it takes goes
//! to a temporary file, or to `$CHAT_SCREENSHOT` when set (how
//! `docs/chat-page.png` is made). Without chromium, chromedriver or
//! selenium the test is skipped, except under CI (env CI set): it fails.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::chat::Client as TcpMember;
use common::metrics::free_addr;
use common::Server;

fn chat(tcp: SocketAddr, web: SocketAddr) -> Server {
    Server::start(&["chat", "--listen", &tcp.to_string(), "--ws", &web.to_string()])
}

#[test]
fn chromium_opens_the_page_and_talks_with_a_tcp_member() {
    let installed = ["chromium", "chromedriver"].iter().all(|p| common::find_program(p).is_some())
        && Command::new("python3").args(["-c", "import selenium"]).status().is_ok_and(|s| s.success());
    if !common::installed(installed, "chromium, chromium-driver (Debian) or selenium (pip)") {
        return;
    }
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let (tcp_addr, web) = (free_addr(), free_addr());
    let mut server = chat(tcp_addr, web);
    let mut tcp = TcpMember::join(&server);
    let shot = match std::env::var_os("CHAT_SCREENSHOT") {
        Some(path) => PathBuf::from(path),
        None => std::env::temp_dir().join(format!("edgeloop-chat-page-{}.png", std::process::id())),
    };
    let mut browser = Command::new("python3")
        .arg(root.join("scripts/lib/chat_browser.py"))
        .args([&format!("http://{web}/"), shot.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut steps = BufReader::new(browser.stdout.take().unwrap());
    let mut step = |want: &str| {
        let mut line = String::new();
        steps.read_line(&mut line).unwrap();
        assert!(line.starts_with(want), "expected the browser's step {want:?}, got {line:?}");
        line.trim_end().strip_prefix(want).unwrap_or_default().trim().to_string()
    };
    let joined = step("joined");
    let nick = joined.strip_prefix("* ").and_then(|l| l.strip_suffix(" joined")).expect("a join line").to_string();
    tcp.expect(&format!("* {nick} joined"));
    step("sent");
    tcp.expect(&format!("{nick}: hello from chromium"));
    tcp.send("hello from tcp");
    assert_eq!(step("saw"), format!("{}: hello from tcp", tcp.nick));
    step("shot");
    // The server goes away: the page says so...
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    step("lost");
    // ...and comes back on the same address: the page reconnects.
    let _again = chat(tcp_addr, web);
    step("reconnected");
    assert!(browser.wait().unwrap().success(), "chat_browser.py failed");
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "no screenshot at {}", shot.display());
    if std::env::var_os("CHAT_SCREENSHOT").is_none() {
        let _ = std::fs::remove_file(&shot);
    }
}
