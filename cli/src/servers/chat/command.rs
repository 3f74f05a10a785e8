//! A client's line: what it asks for, or why it is refused.
//!
//! [`parse`] applies every rule of the protocol that depends on the line
//! alone (the tables in the [chat docs](super)); what depends on who asks
//! — a nickname in use, a room one is already in, Redis being away — is
//! the server's. Being a function of the bytes only, it is tested and
//! fuzzed on its own (`fuzz/fuzz_targets/chat_command.rs`).

use std::fmt;

use super::MAX_NAME;

/// What a line asks for; text and names are slices of the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// An empty line: ignored.
    Empty,
    /// Text for the room: a line not starting with `/`, exactly as sent,
    /// minus its line end; UTF-8 without NUL (bytes, because the check
    /// that proves it for plain ASCII text yields no `&str`).
    Say(&'a [u8]),
    /// `/nick NAME`, the name well formed.
    Nick(&'a str),
    /// `/join ROOM`, the name well formed.
    Join(&'a str),
    /// `/who`.
    Who,
    /// `/quit`.
    Quit,
}

/// Why a line is refused. Its `Display` is the error line the sender
/// receives, after `! `.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError<'a> {
    /// A NUL byte.
    Nul,
    /// Not UTF-8 (others only ever receive UTF-8).
    InvalidUtf8,
    /// A command with the wrong number of arguments; its syntax.
    Usage(&'static str),
    /// A name of more than [`MAX_NAME`] characters.
    NameTooLong,
    /// A name with characters other than `A-Z a-z 0-9 _ -`.
    InvalidName,
    /// Any other first word starting with `/`.
    Unknown(&'a str),
}

impl fmt::Display for ParseError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Nul => f.write_str("NUL bytes are not allowed"),
            ParseError::InvalidUtf8 => f.write_str("invalid UTF-8"),
            ParseError::Usage(syntax) => write!(f, "usage: {syntax}"),
            ParseError::NameTooLong => write!(f, "name too long: at most {MAX_NAME} characters"),
            ParseError::InvalidName => f.write_str("invalid name: use only A-Z a-z 0-9 _ -"),
            ParseError::Unknown(word) => write!(f, "unknown command: {word} (commands: /nick /join /who /quit)"),
        }
    }
}

/// One frame of the `line` framing: a line ending in `\n` or `\r\n`, or
/// in neither (the last line at end of stream).
pub fn parse(frame: &[u8]) -> Result<Command<'_>, ParseError<'_>> {
    let line = strip_line_end(frame);
    if line.is_empty() {
        return Ok(Command::Empty);
    }
    if !plain_ascii(line) {
        if memchr::memchr(0, line).is_some() {
            return Err(ParseError::Nul);
        }
        std::str::from_utf8(line).map_err(|_| ParseError::InvalidUtf8)?;
    }
    if !line.starts_with(b"/") {
        return Ok(Command::Say(line));
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::InvalidUtf8)?;
    // Blanks: spaces and tabs (and the other ASCII whitespace, `\r` and
    // form feed), any number of them.
    let mut words = line.split_ascii_whitespace();
    // Never `line`: a line starting with `/` has a first word.
    let word = words.next().unwrap_or(line);
    match (word, words.next(), words.next()) {
        ("/nick", Some(name), None) => check_name(name).map(|()| Command::Nick(name)),
        ("/nick", ..) => Err(ParseError::Usage("/nick NAME")),
        ("/join", Some(room), None) => check_name(room).map(|()| Command::Join(room)),
        ("/join", ..) => Err(ParseError::Usage("/join ROOM")),
        ("/who", None, _) => Ok(Command::Who),
        ("/who", ..) => Err(ParseError::Usage("/who")),
        ("/quit", None, _) => Ok(Command::Quit),
        ("/quit", ..) => Err(ParseError::Usage("/quit")),
        _ => Err(ParseError::Unknown(word)),
    }
}

/// Whether `line` is ASCII without NUL: most chat text, valid as it is.
/// Written without an early exit (two reductions), so that the compiler
/// checks many bytes per instruction: decoding UTF-8 byte by byte was a
/// sixth of the chat's CPU per line at 10 members (BENCHMARKS.md, "Chat
/// fan-out").
fn plain_ascii(line: &[u8]) -> bool {
    let (any, least) = line.iter().fold((0u8, u8::MAX), |(any, least), &b| (any | b, least.min(b)));
    any.is_ascii() && least > 0
}

/// A line without its `\n` or `\r\n` (a final line at end of stream may
/// have neither).
fn strip_line_end(frame: &[u8]) -> &[u8] {
    let line = frame.strip_suffix(b"\n").unwrap_or(frame);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whether `name` may be a nickname or a room; if not, why.
fn check_name(name: &str) -> Result<(), ParseError<'static>> {
    if name.chars().count() > MAX_NAME {
        return Err(ParseError::NameTooLong);
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(ParseError::InvalidName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Command::*;
    use ParseError::*;

    #[test]
    fn line_ends_are_stripped_once() {
        assert_eq!(strip_line_end(b"hi\n"), b"hi");
        assert_eq!(strip_line_end(b"hi\r\n"), b"hi");
        assert_eq!(strip_line_end(b"hi"), b"hi");
        assert_eq!(strip_line_end(b"hi\r\r\n"), b"hi\r");
        assert_eq!(strip_line_end(b"\r\n"), b"");
    }

    #[test]
    fn names() {
        assert!(check_name("a").is_ok());
        assert!(check_name("Az09_-").is_ok());
        assert!(check_name(&"x".repeat(32)).is_ok());
        assert_eq!(check_name(&"x".repeat(33)), Err(NameTooLong));
        assert_eq!(check_name(""), Err(InvalidName));
        assert_eq!(check_name("a.b"), Err(InvalidName));
        assert_eq!(check_name("é"), Err(InvalidName));
        assert_eq!(check_name("a b"), Err(InvalidName));
    }

    #[test]
    fn each_command() {
        assert_eq!(parse(b"/nick bob\n"), Ok(Nick("bob")));
        assert_eq!(parse(b"/join room-2\n"), Ok(Join("room-2")));
        assert_eq!(parse(b"/who\n"), Ok(Who));
        assert_eq!(parse(b"/quit\n"), Ok(Quit));
    }

    #[test]
    fn text_is_relayed_exactly_as_sent() {
        assert_eq!(parse(b"hello\n"), Ok(Say(b"hello")));
        assert_eq!(parse(b"  two  spaces\t \r\n"), Ok(Say(b"  two  spaces\t ")));
        assert_eq!(parse(" /nick x, blanks first\n".as_bytes()), Ok(Say(b" /nick x, blanks first")));
        assert_eq!(parse("héllo ☃\n".as_bytes()), Ok(Say("héllo ☃".as_bytes())));
        // Only one line end is taken off.
        assert_eq!(parse(b"a\r\r\n"), Ok(Say(b"a\r")));
    }

    #[test]
    fn line_ends() {
        for frame in [&b"/who\n"[..], b"/who\r\n", b"/who", b"/who\r"] {
            assert_eq!(parse(frame), Ok(Who), "{frame:?}");
        }
        for frame in [&b"\n"[..], b"\r\n", b"", b"\r"] {
            assert_eq!(parse(frame), Ok(Empty), "{frame:?}");
        }
        // Blanks alone are text, not an empty line.
        assert_eq!(parse(b" \n"), Ok(Say(b" ")));
    }

    #[test]
    fn blanks_around_arguments_are_ignored() {
        assert_eq!(parse(b"/nick   bob   \r\n"), Ok(Nick("bob")));
        assert_eq!(parse(b"/join\tlobby\t\n"), Ok(Join("lobby")));
        assert_eq!(parse(b"/who \t \n"), Ok(Who));
        assert_eq!(parse(b"/quit  \r\n"), Ok(Quit));
        // A `\r` inside the line is a blank too.
        assert_eq!(parse(b"/nick a\rb\n"), Err(Usage("/nick NAME")));
    }

    #[test]
    fn wrong_number_of_arguments() {
        assert_eq!(parse(b"/nick\n"), Err(Usage("/nick NAME")));
        assert_eq!(parse(b"/nick a b\n"), Err(Usage("/nick NAME")));
        assert_eq!(parse(b"/join\n"), Err(Usage("/join ROOM")));
        assert_eq!(parse(b"/join a b c\n"), Err(Usage("/join ROOM")));
        assert_eq!(parse(b"/who x\n"), Err(Usage("/who")));
        assert_eq!(parse(b"/who x y\n"), Err(Usage("/who")));
        assert_eq!(parse(b"/quit x\n"), Err(Usage("/quit")));
        // The count comes before the names.
        assert_eq!(parse(b"/nick a.b c\n"), Err(Usage("/nick NAME")));
    }

    #[test]
    fn bad_names() {
        let long = format!("/nick {}\n", "x".repeat(33));
        assert_eq!(parse(long.as_bytes()), Err(NameTooLong));
        let longest = format!("/join {}\n", "x".repeat(32));
        assert_eq!(parse(longest.as_bytes()), Ok(Join(&longest[6..38])));
        // Characters, not bytes: 33 two-byte characters are too long; 17
        // (34 bytes) are merely invalid.
        assert_eq!(parse(format!("/nick {}\n", "é".repeat(33)).as_bytes()), Err(NameTooLong));
        assert_eq!(parse(format!("/nick {}\n", "é".repeat(17)).as_bytes()), Err(InvalidName));
        assert_eq!(parse(b"/join a.b\n"), Err(InvalidName));
        assert_eq!(parse(b"/nick a/b\n"), Err(InvalidName));
    }

    #[test]
    fn unknown_commands() {
        assert_eq!(parse(b"/NICK bob\n"), Err(Unknown("/NICK")));
        assert_eq!(parse(b"/\n"), Err(Unknown("/")));
        assert_eq!(parse(b"/nickname\n"), Err(Unknown("/nickname")));
        assert_eq!(parse(b"/me waves\n"), Err(Unknown("/me")));
    }

    #[test]
    fn bytes_that_are_refused() {
        assert_eq!(parse(b"a\0b\n"), Err(Nul));
        // NUL is checked before UTF-8, and before any command.
        assert_eq!(parse(b"\xff\0\n"), Err(Nul));
        assert_eq!(parse(b"/nick \0\n"), Err(Nul));
        assert_eq!(parse(b"\xff\n"), Err(InvalidUtf8));
        assert_eq!(parse(b"/nick \xc3\n"), Err(InvalidUtf8));
        // A character cut short by the line end.
        assert_eq!(parse(b"\xe2\x98\n"), Err(InvalidUtf8));
    }

    /// The one-pass check for plain ASCII at its edges: NUL and the bytes
    /// on either side of ASCII's end, at every place of lines longer than
    /// a vector register.
    #[test]
    fn plain_ascii_at_its_edges() {
        for len in [1, 15, 16, 17, 31, 32, 33, 64, 100] {
            assert!(plain_ascii(&vec![b'x'; len]));
            for at in 0..len {
                for (byte, plain) in [(0u8, false), (1, true), (0x7f, true), (0x80, false), (0xff, false)] {
                    let mut line = vec![b'x'; len];
                    line[at] = byte;
                    assert_eq!(plain_ascii(&line), plain, "byte {byte:#x} at {at} of {len}");
                }
            }
        }
        // Every refusal still holds when the rest of the line is long.
        let long = "y".repeat(40);
        assert_eq!(parse(format!("{long}\0\n").as_bytes()), Err(Nul));
        assert_eq!(parse(&[long.as_bytes(), b"\x80\n"].concat()), Err(InvalidUtf8));
        assert_eq!(parse(format!("{long}é\n").as_bytes()), Ok(Say(format!("{long}é").as_bytes())));
    }

    #[test]
    fn error_lines_are_the_documented_ones() {
        let cases = [
            (Nul, "NUL bytes are not allowed"),
            (InvalidUtf8, "invalid UTF-8"),
            (Usage("/nick NAME"), "usage: /nick NAME"),
            (NameTooLong, "name too long: at most 32 characters"),
            (InvalidName, "invalid name: use only A-Z a-z 0-9 _ -"),
            (Unknown("/x"), "unknown command: /x (commands: /nick /join /who /quit)"),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
