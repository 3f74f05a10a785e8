//! Frames from this side: a server's frames are never masked, so a frame
//! is a 2-to-10-byte header written in front of a payload that stays where
//! it is (see "Zero-copy" in [`super`]).

use super::MessageKind;

/// The longest server frame header: 2 bytes and a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// The opcode of a message kind (a handshake is never framed: binary).
pub fn opcode(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Text => 0x1,
        MessageKind::Handshake | MessageKind::Binary => 0x2,
    }
}

/// The header of a final, unmasked frame of `len` bytes with `opcode`;
/// returns it and its length.
pub fn header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | opcode;
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, n)
}

/// A whole close frame with `status` (no reason).
pub fn close(status: u16) -> [u8; 4] {
    let s = status.to_be_bytes();
    [0x88, 2, s[0], s[1]]
}

/// A client's frame, masked with `key`: for tests, fuzzing and clients.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let (h, n) = header(opcode, payload.len());
    let mut frame = h[..n].to_vec();
    frame[0] = if fin { frame[0] } else { frame[0] & 0x7f };
    frame[1] |= 0x80;
    frame.extend_from_slice(&key);
    let start = frame.len();
    frame.extend_from_slice(payload);
    super::unmask(&mut frame[start..], key);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_take_the_shortest_form() {
        assert_eq!(header(0x1, 5).1, 2);
        assert_eq!(&header(0x2, 126).0[..4], &[0x82, 126, 0, 126]);
        assert_eq!(header(0x2, 65_535).1, 4);
        assert_eq!(&header(0x2, 65_536).0[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
