//! The chat in a browser (`chat --ws ADDR`): the page at `/`, WebSocket
//! members at `/chat`, anything else 404.
//!
//! The `--ws` listener is another listener of the same [`Chat`], with
//! [`Framing::Ws`](edgeloop::Framing::Ws), so a WebSocket member is a member
//! like any other: the same rooms, nicknames, flood control (its lines
//! wait while it is paused, and TCP pushes back on the browser),
//! slow-consumer limit, `/who`, Redis, figures. What differs is handled
//! here and in the library, not in the chat:
//!
//! - **Before the upgrade** the connection is not a member: `on_open`
//!   waits (`Chat::waits_for_upgrade`), and the request head, the first
//!   frame, is routed by `Chat::web_frame`: `GET /` gets the page (one
//!   self-contained file, [`PAGE`], compiled in), `GET /chat` with an
//!   upgrade becomes a member, anything else gets 404.
//! - **Lines are messages.** The connection is switched to
//!   [`Mode::Lines`]: every line the chat sends (with its `\n`, as to
//!   anyone) goes out as one text message without it — the broadcast stays
//!   one shared buffer, only the frame header is per member — and a
//!   binary message closes with 1003 (the library's check).
//! - **A text message is one line.** A trailing `\n` or `\r\n` is allowed
//!   (the line parser drops it); a line break inside would reach TCP
//!   members as two lines, so such a message is refused with `! ` like any
//!   other bad line.

use super::Chat;
use edgeloop::ws::{handshake, MessageKind, Mode};
use edgeloop::{ConnId, Ctx, Handler};

/// The page: HTML, CSS and JavaScript in one file, nothing loaded from
/// elsewhere.
pub const PAGE: &str = include_str!("page.html");

/// Where browsers connect their WebSocket.
pub const CHAT_PATH: &str = "/chat";

impl Chat {
    /// A `--ws` connection whose request has not been answered: not a
    /// member (yet).
    pub(super) fn waits_for_upgrade(ctx: &Ctx<'_>, id: ConnId) -> bool {
        ctx.message_kind(id) == Some(MessageKind::Handshake)
    }

    /// A frame from a `--ws` connection: the request head is routed here;
    /// `true` when the frame is a chat line for the usual path.
    pub(super) fn web_frame(&mut self, ctx: &mut Ctx<'_>, id: ConnId, frame: &[u8]) -> bool {
        match ctx.message_kind(id) {
            None => true, // a TCP member
            Some(MessageKind::Handshake) => {
                self.request(ctx, id, frame);
                false
            }
            // Closed with 1003 by the library in `Mode::Lines`.
            Some(MessageKind::Binary) => false,
            Some(MessageKind::Text) => {
                let line = frame.strip_suffix(b"\n").unwrap_or(frame);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.contains(&b'\n') || line.contains(&b'\r') {
                    self.answer(ctx, id, &["! one line per message: no line breaks inside"]);
                    return false;
                }
                true
            }
        }
    }

    fn request(&mut self, ctx: &mut Ctx<'_>, id: ConnId, head: &[u8]) {
        // The library parsed the head before delivering it.
        let Ok(request) = handshake::Request::parse(head) else { return ctx.close(id) };
        let path = request.path.split('?').next().unwrap_or_default();
        match (request.method, path) {
            ("GET", CHAT_PATH) => {
                // A refusal (not an upgrade: 400; another version: 426) is
                // answered by the library.
                if ctx.ws_accept(id, head).is_ok() {
                    ctx.set_ws_mode(id, Mode::Lines);
                    ctx.set_send_kind(id, MessageKind::Text);
                    self.on_open(ctx, id);
                }
            }
            ("GET" | "HEAD", "/") if !request.wants_websocket() => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
                     Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
                    PAGE.len()
                );
                let _ = ctx.send(id, head.as_bytes());
                if request.method == "GET" {
                    let _ = ctx.send(id, PAGE.as_bytes());
                }
                ctx.close(id);
            }
            _ => {
                let _ = ctx.send(id, handshake::refusal(404).as_bytes());
                ctx.close(id);
            }
        }
    }
}
