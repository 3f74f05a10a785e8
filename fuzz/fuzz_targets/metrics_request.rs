//! The `/metrics` request handling, fed arbitrary bytes cut into reads at
//! arbitrary places (the first byte picks the read size): never a panic,
//! the head never grows past its limit, and once it holds an empty line
//! the wait ends (an answer, never "incomplete").

#![no_main]

use edgeloop_cli::metrics::{take_bytes, Request, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&size, input)) = input.split_first() else { return };
    let mut head = Vec::new();
    for read in input.chunks(usize::from(size).max(1)) {
        let outcome = take_bytes(&mut head, read);
        assert!(head.len() <= MAX_HEAD);
        if head.windows(2).any(|w| w == b"\n\n") || head.windows(3).any(|w| w == b"\n\r\n") {
            assert_ne!(outcome, Request::Incomplete, "an empty line left the request waiting");
        }
        if outcome != Request::Incomplete {
            return; // the server answers and closes
        }
    }
});
