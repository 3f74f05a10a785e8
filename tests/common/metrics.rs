//! A server with `--metrics`, and its exposition read by a real Prometheus
//! text parser (`prometheus-parse`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};

use super::Server;

/// A loopback address with a port free a moment ago.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `edgeloop ARGS... --metrics ADDR`; returns the server and the address.
/// The port was free a moment before the server binds it; on a machine
/// busy with other tests' connections, an ephemeral port can be taken in
/// between, so that case is retried with another.
pub fn start_with_metrics(args: &[&str]) -> (Server, SocketAddr) {
    start_with_metrics_from(|| Command::new(super::edgeloop_bin()), args)
}

/// Like [`start_with_metrics`], from a command `make` prepares (with an
/// environment variable, say).
pub fn start_with_metrics_from(make: impl Fn() -> Command, args: &[&str]) -> (Server, SocketAddr) {
    for _ in 0..5 {
        let metrics = free_addr();
        let addr = metrics.to_string();
        let mut all = args.to_vec();
        all.extend_from_slice(&["--metrics", &addr]);
        match Server::try_start_with(make(), &all) {
            Ok(server) => return (server, metrics),
            Err(e) if e.contains(&addr) && e.contains("in use") => eprintln!("note: {addr} was taken; retrying"),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free port for the metrics after 5 tries");
}

/// One HTTP/1.1 request, the whole response back (status line and
/// headers, body), as the server closes after answering.
pub fn http(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {response:?}"));
    (head.to_string(), body.to_string())
}

/// `GET /metrics`: a 200 in Prometheus's text format, parsed.
pub fn scrape(addr: SocketAddr) -> Scrape {
    let (head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of `metric` with `label=value` (or without labels).
pub fn metric(scrape: &Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {metric} {label:?}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("{metric} is not a plain value"),
    }
}
