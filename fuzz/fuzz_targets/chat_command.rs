//! The chat's command parser, fed arbitrary bytes as one frame of the
//! `line` framing: never a panic, and the protocol's rules kept.
//!
//! - A line means the same ending in `\n`, in `\r\n`, or in neither (the
//!   last line at end of stream).
//! - Only UTF-8 without NUL is accepted (others only ever receive that);
//!   an error line is one line.
//! - Text is the whole line minus its end. A command is its words, blanks
//!   aside, and written out plainly parses back to itself; its name
//!   follows the name rules and is a slice of the line.
//! - A line refused for its words is refused rightly: an unknown command
//!   is its first word, a usage error has the wrong number of arguments,
//!   a name error a name over `MAX_NAME` characters or with other ones.

#![no_main]

use edgeloop_cli::servers::chat::command::{parse, Command, ParseError};
use edgeloop_cli::servers::chat::MAX_NAME;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let parsed = parse(frame);
    if !frame.ends_with(b"\n") {
        assert_eq!(parse(&[frame, b"\n"].concat()), parsed);
        // With a `\r` already there, that `\r` and the `\n` are the line end.
        if !frame.ends_with(b"\r") {
            assert_eq!(parse(&[frame, b"\r\n"].concat()), parsed);
        }
    }
    match parsed {
        Ok(command) => {
            assert!(std::str::from_utf8(frame).is_ok() && !frame.contains(&0));
            assert_eq!(parse(render(command).as_bytes()), Ok(command));
            match command {
                Command::Empty => assert!(matches!(frame, b"" | b"\n" | b"\r" | b"\r\n")),
                Command::Say(text) => {
                    assert_eq!(text.as_ptr(), frame.as_ptr());
                    assert!(matches!(&frame[text.len()..], b"" | b"\n" | b"\r" | b"\r\n"));
                    assert!(!text.is_empty() && !text.starts_with(b"/"));
                }
                Command::Nick(name) | Command::Join(name) => {
                    assert!(words(frame).eq(words(render(command).as_bytes())));
                    assert!(inside(name, frame));
                    assert!(is_name(name), "{name:?}");
                }
                Command::Who | Command::Quit => assert!(words(frame).eq(words(render(command).as_bytes()))),
            }
        }
        Err(ParseError::Nul) => assert!(frame.contains(&0)),
        Err(ParseError::InvalidUtf8) => assert!(std::str::from_utf8(frame).is_err()),
        // Refused for its words.
        Err(error) => {
            let reply = error.to_string();
            assert!(!reply.contains(['\n', '\0']), "{reply:?}");
            let line = std::str::from_utf8(frame).expect("UTF-8");
            assert!(line.starts_with('/'));
            let mut words = line.split_ascii_whitespace();
            let first = words.next();
            match error {
                ParseError::Unknown(word) => {
                    assert_eq!(word.as_ptr(), frame.as_ptr());
                    assert_eq!(Some(word), first);
                    assert!(!["/nick", "/join", "/who", "/quit"].contains(&word));
                }
                ParseError::Usage(syntax) => {
                    assert_eq!(syntax.split(' ').next(), first);
                    assert_ne!(words.count(), syntax.split(' ').count() - 1, "{syntax}: the right arguments");
                }
                _ => {
                    assert!(matches!(first, Some("/nick" | "/join")));
                    let name = words.next().expect("a name");
                    let too_long = name.chars().count() > MAX_NAME;
                    assert_eq!(error == ParseError::NameTooLong, too_long);
                    assert!(too_long || !is_name(name));
                }
            }
        }
    }
});

/// `command` as a client would write it, with the longer line end: a
/// text's own trailing `\r` stays text.
fn render(command: Command) -> String {
    match command {
        Command::Empty => "\r\n".into(),
        Command::Say(text) => format!("{}\r\n", std::str::from_utf8(text).expect("Say is UTF-8")),
        Command::Nick(name) => format!("/nick {name}\r\n"),
        Command::Join(room) => format!("/join {room}\r\n"),
        Command::Who => "/who\r\n".into(),
        Command::Quit => "/quit\r\n".into(),
    }
}

/// The line's words: what is between blanks.
fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace).filter(|word| !word.is_empty())
}

/// Whether `part` is a slice of `whole`, not a copy.
fn inside(part: &str, whole: &[u8]) -> bool {
    let (part, whole) = (part.as_bytes().as_ptr_range(), whole.as_ptr_range());
    whole.start <= part.start && part.end <= whole.end
}

/// The name rules: 1 to `MAX_NAME` of `A-Z a-z 0-9 _ -`.
fn is_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}
