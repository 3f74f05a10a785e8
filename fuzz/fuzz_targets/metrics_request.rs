//! The `/metrics` request handling, fed arbitrary bytes cut into lines as
//! the listener's `line` framing cuts them: never a panic, the head never
//! grows past its limit, and a blank line always ends the wait (an
//! answer, never "incomplete").

#![no_main]

use edgeloop_cli::metrics::{take_line, Request, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut head = Vec::new();
    for line in input.split_inclusive(|&b| b == b'\n') {
        let outcome = take_line(&mut head, line);
        assert!(head.len() <= MAX_HEAD);
        if line == b"\n" || line == b"\r\n" {
            assert_ne!(outcome, Request::Incomplete, "a blank line left the request waiting");
        }
        if outcome != Request::Incomplete {
            return; // the server answers and closes
        }
    }
});
