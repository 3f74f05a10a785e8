//! The opening handshake: an HTTP/1.1 `GET` with `Upgrade: websocket`,
//! answered `101 Switching Protocols` (RFC 6455 section 4.2).
//!
//! The head is found by its blank line (resuming the search where the last
//! one stopped, so a head dribbled a byte at a time is scanned once),
//! bounded by [`super::MAX_HEAD`] (431), and parsed with `httparse` (400 if
//! it is not HTTP/1.x). Whether it is a valid upgrade is a separate
//! question, [`Request::accept`], because a server may answer other
//! requests on the same port (the chat's page at `/`).
//!
//! Header values are compared as the RFC says: `Upgrade` and `Connection`
//! are comma-separated token lists, compared without regard to case
//! (`Connection: keep-alive, Upgrade` is an upgrade); header names too.

use base64::Engine as _;

use super::{Violation, MAX_HEAD};

/// The GUID RFC 6455 appends to the key before hashing it.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// More headers than this is a head we do not serve (431).
const MAX_HEADERS: usize = 64;

/// Look for the end of the head (`\r\n\r\n`) in `buf`, resuming at
/// `scanned` (bytes known to hold no end): `Some(length of the head)`,
/// `None` while incomplete, 431 once more than [`MAX_HEAD`] bytes have no
/// end.
pub fn find_head(buf: &[u8], scanned: &mut usize) -> Result<Option<usize>, Violation> {
    // The end may straddle the previous search's last bytes.
    let from = scanned.saturating_sub(3).min(buf.len());
    let window = &buf[from..buf.len().min(MAX_HEAD)];
    match memchr::memmem::find(window, b"\r\n\r\n") {
        Some(i) => Ok(Some(from + i + 4)),
        None if buf.len() >= MAX_HEAD => Err(Violation::Http(431)),
        None => {
            *scanned = buf.len();
            Ok(None)
        }
    }
}

/// A request head, parsed: what a handler routes on, and what the upgrade
/// needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// `GET`, ...
    pub method: &'a str,
    /// The request target as sent (`/chat?x=1`).
    pub path: &'a str,
    /// HTTP/1.1 (not 1.0).
    pub http11: bool,
    /// `Upgrade` lists `websocket`.
    pub upgrade: bool,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Key`, if exactly one was sent.
    pub key: Option<&'a [u8]>,
    /// `Sec-WebSocket-Version`, if sent.
    pub version: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// Parse a complete head (as delivered: up to and including its blank
    /// line). Not HTTP: 400; too many headers: 431.
    pub fn parse(head: &'a [u8]) -> Result<Request<'a>, Violation> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(Violation::Http(431)),
            Ok(httparse::Status::Partial) | Err(_) => return Err(Violation::Http(400)),
        }
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err(Violation::Http(400));
        };
        let mut parsed = Request {
            method,
            path,
            http11: version == 1,
            upgrade: false,
            connection_upgrade: false,
            key: None,
            version: None,
        };
        let mut keys = 0;
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("upgrade") {
                parsed.upgrade |= has_token(h.value, b"websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                parsed.connection_upgrade |= has_token(h.value, b"upgrade");
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                keys += 1;
                parsed.key = Some(h.value);
            } else if name.eq_ignore_ascii_case("sec-websocket-version") {
                parsed.version = Some(h.value);
            }
        }
        if keys > 1 {
            parsed.key = None;
        }
        Ok(parsed)
    }

    /// Whether the request asks for a WebSocket at all (`Upgrade:
    /// websocket`), valid or not.
    pub fn wants_websocket(&self) -> bool {
        self.upgrade
    }

    /// The `Sec-WebSocket-Accept` value if this is a valid upgrade; else
    /// 400 (not a valid upgrade) or 426 (a version other than 13).
    pub fn accept(&self) -> Result<String, Violation> {
        if self.method != "GET" || !self.http11 || !self.upgrade || !self.connection_upgrade {
            return Err(Violation::Http(400));
        }
        let key = self.key.ok_or(Violation::Http(400))?;
        // The key is 16 random bytes in base64: 24 characters.
        let raw = base64::engine::general_purpose::STANDARD.decode(key).map_err(|_| Violation::Http(400))?;
        if raw.len() != 16 {
            return Err(Violation::Http(400));
        }
        match self.version {
            Some(v) if v.trim_ascii() == b"13" => Ok(accept_value(key)),
            Some(_) => Err(Violation::Http(426)),
            None => Err(Violation::Http(400)),
        }
    }
}

/// `base64(SHA-1(key + GUID))`.
pub fn accept_value(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Whether the comma-separated list `value` holds `token`, any case.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The `101 Switching Protocols` answer.
pub fn switching(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: \
         {accept}\r\n\r\n"
    )
}

/// The reason phrase of the statuses this module answers.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// A refusal (400, 426, 431, or a 404 of the application's): a short
/// plain-text body, `Connection: close`, and for 426 the version served.
pub fn refusal(status: u16) -> String {
    let reason = reason(status);
    let version = if status == 426 { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\n{version}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn the_rfc_example_is_accepted_with_its_value() {
        let req = Request::parse(RFC_REQUEST).unwrap();
        assert_eq!(req.path, "/chat");
        assert_eq!(req.accept().unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn token_lists_any_case() {
        let head = String::from_utf8_lossy(RFC_REQUEST)
            .replace("Connection: Upgrade", "connection: keep-alive, UPGRADE")
            .replace("Upgrade: websocket", "UPGRADE: WebSocket");
        assert!(Request::parse(head.as_bytes()).unwrap().accept().is_ok());
    }

    #[test]
    fn refusals() {
        let edit = |from: &str, to: &str| {
            let head = String::from_utf8_lossy(RFC_REQUEST).replace(from, to);
            Request::parse(head.as_bytes()).and_then(|r| r.accept().map(|_| ()))
        };
        assert_eq!(edit("Version: 13", "Version: 8"), Err(Violation::Http(426)));
        assert_eq!(edit("Upgrade: websocket\r\n", ""), Err(Violation::Http(400)));
        assert_eq!(edit("Connection: Upgrade", "Connection: close"), Err(Violation::Http(400)));
        assert_eq!(edit("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), Err(Violation::Http(400)));
        assert_eq!(edit("GET", "POST"), Err(Violation::Http(400)));
        assert_eq!(edit("HTTP/1.1", "HTTP/1.0"), Err(Violation::Http(400)));
        assert_eq!(Request::parse(b"\x16\x03\x01 hello\r\n\r\n"), Err(Violation::Http(400)));
    }

    #[test]
    fn the_head_is_found_across_pieces_and_bounded() {
        let mut scanned = 0;
        assert_eq!(find_head(b"GET / HTTP/1.1\r\n\r", &mut scanned), Ok(None));
        assert_eq!(find_head(b"GET / HTTP/1.1\r\n\r\nrest", &mut scanned), Ok(Some(18)));
        let mut scanned = 0;
        assert_eq!(find_head(&vec![b'a'; MAX_HEAD], &mut scanned), Err(Violation::Http(431)));
    }
}
