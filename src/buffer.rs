//! Buffers: the read buffer a connection decodes frames from, the output
//! queue it writes from, the box that holds both, and the pools all three
//! draw their memory from.
//!
//! A connection with nothing buffered holds no buffer at all — not even
//! the headers of one: its [`Buffers`] is a null pointer. The first byte
//! read or queued takes a box from the pool, holding the read buffer's
//! header and the output queue; a read takes a 64 KiB buffer from the pool
//! into it. When neither direction holds a byte any more, the box goes
//! back — with its empty read buffer still in it (a *warm* box: the next
//! read takes one thing from the pool, not two); when the input is
//! delivered but output is pending, only the read buffer goes back. Only a
//! connection that holds a partial frame, or output the kernel refused,
//! keeps memory — which is why an idle connection costs only its slab
//! entry, and why that entry pays 8 bytes, not 40, for its buffers.
//!
//! ```text
//!   Conn.bufs ──▶ Held (pooled box, 80 bytes; null while idle)
//!                  ├─ input: ReadBuf
//!                  │    buf:  [ delivered | unread bytes .... | spare capacity ]
//!                  │          0         start                len              cap
//!                  │          (start and the line cursor are u32: cap < 4 GiB always)
//!                  └─ output: [chunk 0 (sent up to `offset`)] [chunk 1] ... [chunk n]
//!                              owned Vec<u8> or shared Rc<[u8]>, written with one
//!                              vectored send covering up to MAX_IOVECS chunks
//! ```
//!
//! One box for both directions, not one each: an echo's reply is queued
//! while the bytes it answers are still buffered, so the two are held
//! together anyway, and one warm box is one pool operation per read, as
//! the read buffer alone was before the box (measured: the same
//! instructions per echoed message, see the 64-byte change in
//! BENCHMARKS.md).
//! While frames are delivered the read buffer is moved out of the box
//! ([`Buffers::take_input`]); if the output drains meanwhile, the box may
//! go back to the pool and [`Buffers::put_back_input`] takes another.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

/// Size of a pooled read buffer: one `read` asks for up to this much.
pub const READ_BUF_SIZE: usize = 64 * 1024;
/// Size of a pooled output chunk; small sends are coalesced into it.
pub const OUT_CHUNK_SIZE: usize = 4 * 1024;
/// A partial frame at most this long is moved out of the big pooled
/// buffer into a small one of its own when the connection goes quiet, so a
/// peer dribbling a byte at a time cannot pin 64 KiB per connection.
const SMALL_TAIL: usize = 512;
/// Compact the read buffer (move the unread tail to the front) only when
/// less than this much room is left at the end.
const MIN_READ_ROOM: usize = 4096;
/// The bookkeeping one queued chunk costs beyond its bytes (see
/// [`Buffers::footprint`]).
const CHUNK_OVERHEAD: usize = 64;
/// How many chunks one vectored send covers.
pub const MAX_IOVECS: usize = 64;
/// The most a read buffer ever holds. Its offsets (`start`, `scanned`)
/// are 32-bit, to keep a connection small; a frame is at most
/// [`crate::reactor::MAX_FRAME_LIMIT`] (2 GiB) plus its header, so
/// whatever a connection that may read can hold — one partial frame, plus
/// `MIN_READ_ROOM` to read into — fits below this.
pub const MAX_READ_BUF: usize = u32::MAX as usize;

/// A free list of equally sized byte buffers.
pub struct BufPool {
    size: usize,
    max_free: usize,
    free: Vec<Vec<u8>>,
}

impl BufPool {
    /// A pool of buffers of `size` bytes, keeping at most `max_free`.
    pub fn new(size: usize, max_free: usize) -> BufPool {
        BufPool { size, max_free, free: Vec::new() }
    }

    /// An empty buffer with at least `size` bytes of capacity.
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Return a buffer. Buffers that grew (a large frame) or shrank are
    /// dropped rather than kept, so the pool holds only standard sizes.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == self.size && self.free.len() < self.max_free {
            buf.clear();
            self.free.push(buf);
        }
    }
}

/// A connection's read buffer: unread bytes are `buf[start..]`.
#[derive(Default)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: u32,
    /// The `line` decoder's cursor: unread bytes known to hold no `\n`
    /// (see [`crate::framing::decode`]).
    pub scanned: u32,
}

impl ReadBuf {
    /// The bytes not yet delivered.
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.start as usize..]
    }

    /// Nothing is waiting to be delivered.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == self.start as usize
    }

    /// The bytes not yet delivered, mutably: a WebSocket message is
    /// unmasked and reassembled where it lies (see the `ws` module).
    pub fn unread_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start as usize..]
    }

    /// Remove `from..to` of the unread bytes (a WebSocket reassembly gap),
    /// moving what follows down.
    pub fn cut(&mut self, from: usize, to: usize) {
        let start = self.start as usize;
        self.buf.drain(start + from..start + to);
    }

    /// Mark `n` bytes at the front of the unread bytes as delivered.
    pub fn consume(&mut self, n: usize) {
        self.start += n as u32;
        self.scanned = 0;
    }

    /// Get ready for a read: make sure there is a buffer with room at its
    /// end, at least enough for a frame known to need `need` bytes, and
    /// return the buffer for [`crate::sys::read_into_spare`].
    fn prepare(&mut self, pool: &mut BufPool, need: usize) -> &mut Vec<u8> {
        if self.buf.capacity() == 0 {
            self.buf = pool.take();
        }
        let unread = self.buf.len() - self.start as usize;
        let room = self.buf.capacity() - self.buf.len();
        if self.start > 0 && (room < MIN_READ_ROOM || self.start as usize + need > self.buf.capacity()) {
            // Compaction: the tail moves to the front; only then is the room
            // at the end too small to be worth reading into.
            self.buf.drain(..self.start as usize);
            self.start = 0;
        }
        let want = need.max(unread + MIN_READ_ROOM).clamp(READ_BUF_SIZE, MAX_READ_BUF);
        if self.buf.capacity() < want {
            // Only a frame whose header was validated against max_frame, or
            // a line still under max_frame, gets here: growth is bounded.
            // Exactly: `reserve` would double, and a buffer grown past a
            // 2 GiB frame would pass 4 GiB, where the 32-bit offsets wrap
            // (the edge case "offsets at the frame limit").
            self.buf.reserve_exact(want - self.buf.len());
        }
        &mut self.buf
    }

    /// After the bytes read were delivered: give the buffer back if all of
    /// it was, or shrink a small leftover out of a big pooled buffer.
    fn settle(&mut self, pool: &mut BufPool) {
        if self.is_empty() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > 0 {
                pool.give(std::mem::take(&mut self.buf));
            }
        } else if self.unread().len() <= SMALL_TAIL && self.buf.capacity() >= READ_BUF_SIZE {
            let small = self.unread().to_vec();
            pool.give(std::mem::replace(&mut self.buf, small));
            self.start = 0;
        }
    }

    /// Bytes of heap memory held.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// One piece of pending output.
enum Chunk {
    /// Bytes copied in by `send`; small sends are appended to the last one.
    Owned(Vec<u8>),
    /// A message shared by many queues (a chat broadcast): one allocation,
    /// however many recipients; all of it but the number of bytes given
    /// (a WebSocket line is sent without its `\n`).
    Shared(Rc<[u8]>, u32),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(r, cut) => &r[..r.len() - *cut as usize],
        }
    }
}

/// A connection's pending output, written with vectored sends (it lives
/// in the connection's [`Buffers`] box).
#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Bytes queued and not yet written.
    len: usize,
}

impl Queue {
    /// Queue a copy of `parts` (a header and a payload, say). Bytes are
    /// appended to the last owned chunk while it has room, then to fresh
    /// pooled chunks: many small sends share one chunk, and a large one
    /// costs no allocation of its own.
    fn push_copy(&mut self, parts: &[&[u8]], chunks: &mut BufPool) {
        for mut part in parts.iter().copied() {
            self.len += part.len();
            while !part.is_empty() {
                let room = match self.chunks.back() {
                    Some(Chunk::Owned(v)) => v.capacity() - v.len(),
                    _ => 0,
                };
                if room == 0 {
                    self.chunks.push_back(Chunk::Owned(chunks.take()));
                    continue;
                }
                let (now, later) = part.split_at(room.min(part.len()));
                if let Some(Chunk::Owned(v)) = self.chunks.back_mut() {
                    v.extend_from_slice(now);
                }
                part = later;
            }
        }
    }

    /// Forget the first `n` pending bytes (they were written), returning
    /// finished owned chunks to the pool.
    fn advance(&mut self, mut n: usize, chunks: &mut BufPool) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else { break };
            let left = front.bytes().len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            if let Some(Chunk::Owned(v)) = self.chunks.pop_front() {
                chunks.give(v);
            }
        }
    }
}

/// A connection's buffers, both directions: a null pointer while it has
/// nothing buffered, else a box from [`Pools`] holding its read buffer
/// and its output queue (see the module docs). So an idle connection pays
/// 8 bytes for its buffers, and a busy one no allocation per message (the
/// pool keeps warm boxes).
#[derive(Default)]
pub struct Buffers(Option<Box<Held>>);

/// What a [`Buffers`] box holds.
#[derive(Default)]
struct Held {
    input: ReadBuf,
    output: Queue,
}

/// Where boxes, read buffers and output chunks come from and go back to.
///
/// Boxes are kept in two stacks: *warm* ones still hold an empty pooled
/// read buffer, so that a read takes one box, not a box and a buffer (an
/// echo takes and gives back one warm box per read); *cold* ones hold
/// none, for output (a chat recipient's box needs no read buffer).
pub struct Pools {
    read: BufPool,
    chunks: BufPool,
    // Boxes, not `Held`s: they move into `Buffers` whole, so taking one
    // from the pool allocates nothing.
    #[allow(clippy::vec_box)]
    warm: Vec<Box<Held>>,
    #[allow(clippy::vec_box)]
    cold: Vec<Box<Held>>,
    max_read: usize,
    max_free: usize,
}

impl Pools {
    /// Keep up to `max_read` free read buffers of [`READ_BUF_SIZE`] bytes
    /// (and as many warm boxes holding one), and up to `max_free` free
    /// chunks of [`OUT_CHUNK_SIZE`] bytes and as many cold boxes.
    pub fn new(max_read: usize, max_free: usize) -> Pools {
        Pools {
            read: BufPool::new(READ_BUF_SIZE, max_read),
            chunks: BufPool::new(OUT_CHUNK_SIZE, max_free),
            warm: Vec::new(),
            cold: Vec::new(),
            max_read,
            max_free,
        }
    }
}

/// The box in `slot`, taken from `stack` (or allocated) if there is none
/// yet. (A function of the fields rather than a method of [`Pools`], so
/// that the caller may use the other pools while holding the box.)
#[allow(clippy::vec_box)] // the pool's boxes: see `Pools`
#[inline]
fn hold<'a>(slot: &'a mut Option<Box<Held>>, stack: &mut Vec<Box<Held>>) -> &'a mut Held {
    slot.get_or_insert_with(|| stack.pop().unwrap_or_default())
}

impl Buffers {
    /// Whether it holds no bytes: nothing unread, nothing to write (an
    /// empty read buffer may still be there).
    fn vacant(h: &Held) -> bool {
        h.input.is_empty() && h.output.len == 0
    }

    /// Give the box back to the pool, warm if it holds a pooled read
    /// buffer and the warm stack has room. Only called when vacant.
    fn release(&mut self, pools: &mut Pools) {
        let Some(mut h) = self.0.take() else { return };
        // Shared chunks of length 0 are never queued, so the chunk list is
        // empty: it keeps its array warm for the next user.
        h.output.offset = 0;
        h.input.scanned = 0;
        h.input.start = 0;
        h.input.buf.clear();
        if h.input.capacity() == READ_BUF_SIZE && pools.warm.len() < pools.max_read {
            pools.warm.push(h);
        } else {
            pools.read.give(std::mem::take(&mut h.input.buf));
            if pools.cold.len() < pools.max_free {
                pools.cold.push(h);
            }
        }
    }

    // Input.

    /// Get ready for a read: make sure there is a buffer with room at its
    /// end, at least enough for a frame known to need `need` bytes, and
    /// return the buffer for [`crate::sys::read_into_spare`].
    pub fn prepare(&mut self, pools: &mut Pools, need: usize) -> &mut Vec<u8> {
        let h = self.0.get_or_insert_with(|| pools.warm.pop().or_else(|| pools.cold.pop()).unwrap_or_default());
        h.input.prepare(&mut pools.read, need)
    }

    /// After the bytes read were delivered: give the box back, its read
    /// buffer in it, if it holds nothing more; else give the read buffer
    /// back if all of it was delivered, or shrink a small leftover out of
    /// a big pooled buffer.
    pub fn settle(&mut self, pools: &mut Pools) {
        let Some(h) = &mut self.0 else { return };
        if Self::vacant(h) {
            return self.release(pools);
        }
        h.input.settle(&mut pools.read);
    }

    /// Drop every byte read and not delivered (a closing connection's
    /// input is discarded; a reaped one's buffers go back to the pools).
    pub fn discard_input(&mut self, pools: &mut Pools) {
        if let Some(h) = &mut self.0 {
            h.input.consume(h.input.unread().len());
        }
        self.settle(pools);
    }

    /// Move the read buffer out, to hand its bytes to the application
    /// while the connection itself stays mutable;
    /// [`Buffers::put_back_input`] returns it.
    #[inline]
    pub fn take_input(&mut self) -> ReadBuf {
        match &mut self.0 {
            Some(h) => std::mem::take(&mut h.input),
            None => ReadBuf::default(),
        }
    }

    /// Return the read buffer [`Buffers::take_input`] moved out (into
    /// another box if the output drained meanwhile and gave this one back).
    #[inline]
    pub fn put_back_input(&mut self, input: ReadBuf, pools: &mut Pools) {
        match &mut self.0 {
            Some(h) => h.input = input,
            // Nothing to hold, and nothing holding it.
            None if input.capacity() == 0 => {}
            None => hold(&mut self.0, &mut pools.cold).input = input,
        }
    }

    /// The line decoder starts over (the framing changed).
    pub fn restart_scan(&mut self) {
        if let Some(h) = &mut self.0 {
            h.input.scanned = 0;
        }
    }

    /// Nothing read is waiting to be delivered.
    #[inline]
    pub fn input_is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|h| h.input.is_empty())
    }

    /// Bytes of heap memory the read buffer holds.
    pub fn input_capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |h| h.input.capacity())
    }

    // Output.

    /// Bytes queued and not yet written.
    #[inline]
    pub fn output_len(&self) -> usize {
        self.0.as_ref().map_or(0, |h| h.output.len)
    }

    /// No output is queued.
    #[inline]
    pub fn output_is_empty(&self) -> bool {
        self.output_len() == 0
    }

    /// What the output queue costs, as judged against its output limit:
    /// its bytes plus a fixed charge per chunk (the queue slot, an `Rc`'s
    /// header, malloc's rounding). Without the charge a stream of tiny
    /// shared messages would hold many times the limit in bookkeeping.
    pub fn footprint(&self) -> usize {
        self.0.as_ref().map_or(0, |h| h.output.len + h.output.chunks.len() * CHUNK_OVERHEAD)
    }

    /// Queue a copy of `parts` (a header and a payload, say): appended to
    /// the last owned chunk while it has room, then to fresh pooled chunks.
    pub fn push_copy(&mut self, parts: &[&[u8]], pools: &mut Pools) {
        if parts.iter().all(|p| p.is_empty()) {
            return;
        }
        hold(&mut self.0, &mut pools.cold).output.push_copy(parts, &mut pools.chunks);
    }

    /// Queue a shared message by reference.
    pub fn push_shared(&mut self, msg: Rc<[u8]>, pools: &mut Pools) {
        self.push_shared_prefix(msg, usize::MAX, pools);
    }

    /// Queue the first `len` bytes of a shared message by reference (all
    /// of it if shorter, and at least all but 4 GiB of it).
    pub fn push_shared_prefix(&mut self, msg: Rc<[u8]>, len: usize, pools: &mut Pools) {
        let cut = (msg.len() - len.min(msg.len())).min(u32::MAX as usize);
        let len = msg.len() - cut;
        if len > 0 {
            let q = &mut hold(&mut self.0, &mut pools.cold).output;
            q.len += len;
            q.chunks.push_back(Chunk::Shared(msg, cut as u32));
        }
    }

    /// Fill `out` with the pending bytes for one vectored send; returns how
    /// many slices were filled and how many bytes they hold.
    pub fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_IOVECS]) -> (usize, usize) {
        let Some(h) = &self.0 else { return (0, 0) };
        let q = &h.output;
        let mut bytes_total = 0;
        let mut count = 0;
        for (slot, (i, chunk)) in out.iter_mut().zip(q.chunks.iter().enumerate()) {
            let bytes = if i == 0 { &chunk.bytes()[q.offset..] } else { chunk.bytes() };
            *slot = IoSlice::new(bytes);
            bytes_total += bytes.len();
            count += 1;
        }
        (count, bytes_total)
    }

    /// Forget the first `n` pending bytes (they were written), returning
    /// finished owned chunks to the pool, and the box once it holds
    /// nothing.
    pub fn advance(&mut self, n: usize, pools: &mut Pools) {
        let Some(h) = &mut self.0 else { return };
        h.output.advance(n, &mut pools.chunks);
        if Self::vacant(h) {
            self.release(pools);
        }
    }

    /// Drop all pending output.
    pub fn clear_output(&mut self, pools: &mut Pools) {
        self.advance(self.output_len(), pools);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(q: &Buffers) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let (count, total) = q.io_slices(&mut slices);
        let bytes: Vec<u8> = slices[..count].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(bytes.len(), total);
        bytes
    }

    #[test]
    fn small_sends_coalesce_and_shared_chunks_stay_separate() {
        let mut pool = Pools::new(4, 4);
        let mut q = Buffers::default();
        assert!(q.output_is_empty() && q.0.is_none());
        q.push_copy(&[b"ab"], &mut pool);
        q.push_copy(&[b"\x00\x01", b"c"], &mut pool);
        q.push_shared(Rc::from(&b"shared"[..]), &mut pool);
        q.push_copy(&[b"z"], &mut pool);
        assert_eq!(q.0.as_ref().unwrap().output.chunks.len(), 3);
        // A copy larger than a chunk spans pooled chunks, no allocation.
        let big = vec![7u8; OUT_CHUNK_SIZE + 10];
        let mut q2 = Buffers::default();
        q2.push_copy(&[b"ab", &big], &mut pool);
        assert_eq!((q2.0.as_ref().unwrap().output.chunks.len(), q2.output_len()), (2, OUT_CHUNK_SIZE + 12));
        assert_eq!(&pending(&q2)[..3], b"ab\x07");
        assert_eq!(pending(&q), b"ab\x00\x01cshared z".iter().filter(|&&b| b != b' ').copied().collect::<Vec<_>>());
        q.advance(3, &mut pool);
        assert_eq!(pending(&q), b"\x01csharedz");
        q.advance(8, &mut pool);
        assert_eq!(pending(&q), b"z");
        q.clear_output(&mut pool);
        assert!(q.output_is_empty() && q.0.is_none());
        // The emptied box went back to the pool: no allocation next time.
        assert_eq!((pool.cold.len(), pool.warm.len()), (1, 0));
    }

    /// The limit a slow chat member is judged by must see the bookkeeping
    /// of many tiny shared lines, not just their bytes.
    #[test]
    fn footprint_charges_each_chunk() {
        let mut pool = Pools::new(4, 4);
        let mut q = Buffers::default();
        let line: Rc<[u8]> = Rc::from(&b"a: x\n"[..]);
        for _ in 0..1000 {
            q.push_shared(Rc::clone(&line), &mut pool);
        }
        assert_eq!(q.output_len(), 5000);
        assert_eq!(q.footprint(), 5000 + 1000 * CHUNK_OVERHEAD);
    }

    /// A WebSocket line goes out without its `\n`, the shared buffer
    /// untouched and still shared.
    #[test]
    fn a_shared_prefix_is_queued_by_reference() {
        let mut pool = Pools::new(4, 4);
        let mut q = Buffers::default();
        let line: Rc<[u8]> = Rc::from(&b"a: hi\n"[..]);
        q.push_copy(&[b"\x81\x05"], &mut pool);
        q.push_shared_prefix(Rc::clone(&line), 5, &mut pool);
        q.push_shared_prefix(Rc::clone(&line), 99, &mut pool);
        q.push_shared_prefix(Rc::clone(&line), 0, &mut pool);
        assert_eq!(pending(&q), b"\x81\x05a: hia: hi\n");
        assert_eq!((q.output_len(), Rc::strong_count(&line)), (13, 3));
        q.advance(7, &mut pool);
        assert_eq!(pending(&q), b"a: hi\n");
    }

    /// Input and output share one box, which exists only while either
    /// holds something: an echo's read buffer and reply use one box, and
    /// it goes back once the reply is written and the input delivered.
    #[test]
    fn one_box_for_both_directions_while_either_holds_bytes() {
        let mut pools = Pools::new(4, 4);
        let mut b = Buffers::default();
        b.prepare(&mut pools, 0).extend_from_slice(b"ping\n");
        b.push_copy(&[b"ping\n"], &mut pools);
        assert_eq!((pools.warm.len() + pools.cold.len(), b.input_capacity() >= READ_BUF_SIZE), (0, true));
        // The reply is written: the box stays, the read buffer is in it.
        b.advance(5, &mut pools);
        assert!(b.0.is_some() && b.output_is_empty());
        let input = b.take_input();
        assert_eq!(input.unread(), b"ping\n");
        b.put_back_input(input, &mut pools);
        // Delivered: the box goes back, warm: its read buffer in it.
        b.discard_input(&mut pools);
        assert!(b.0.is_none());
        assert_eq!((pools.warm.len(), pools.read.free.len(), pools.chunks.free.len()), (1, 0, 1));
        // The next read takes that box, and that buffer, in one step.
        b.prepare(&mut pools, 0);
        assert_eq!((pools.warm.len(), b.input_capacity()), (0, READ_BUF_SIZE));
        b.settle(&mut pools);
        assert!(b.0.is_none() && pools.warm.len() == 1);
        // Output alone holds a box too, and gives it back when written.
        b.push_copy(&[b"x"], &mut pools);
        assert_eq!((pools.cold.len(), b.input_capacity()), (0, 0));
        b.clear_output(&mut pools);
        assert!(b.0.is_none() && pools.cold.len() == 1 && pools.warm.len() == 1);
    }

    /// While frames are delivered the read buffer is out of the box; if
    /// the output drains then, the box goes back, and putting the read
    /// buffer back takes a box again, its bytes intact.
    #[test]
    fn input_put_back_after_the_box_went_back() {
        let mut pools = Pools::new(4, 4);
        let mut b = Buffers::default();
        b.prepare(&mut pools, 0).extend_from_slice(b"one\ntwo");
        let mut input = b.take_input();
        input.consume(4);
        b.push_copy(&[b"one\n"], &mut pools);
        b.advance(4, &mut pools);
        assert!(b.0.is_none(), "the box holds nothing while the input is out");
        b.put_back_input(input, &mut pools);
        assert_eq!(b.take_input().unread(), b"two");
        // An empty read buffer put back takes no box.
        let mut idle = Buffers::default();
        let nothing = idle.take_input();
        idle.put_back_input(nothing, &mut pools);
        assert!(idle.0.is_none());
    }

    /// Cutting the WebSocket reassembly gap out of the unread bytes.
    #[test]
    fn a_gap_is_cut_from_the_unread_bytes() {
        let mut pool = BufPool::new(READ_BUF_SIZE, 4);
        let mut rb = ReadBuf::default();
        rb.prepare(&mut pool, 0).extend_from_slice(b"xxABgapCD");
        rb.consume(2);
        rb.unread_mut()[0] = b'a';
        rb.cut(2, 5);
        assert_eq!(rb.unread(), b"aBCD");
    }

    #[test]
    fn read_buffer_returns_to_the_pool_when_drained() {
        let mut pool = BufPool::new(READ_BUF_SIZE, 4);
        let mut rb = ReadBuf::default();
        rb.prepare(&mut pool, 0).extend_from_slice(b"hello");
        rb.consume(5);
        rb.settle(&mut pool);
        assert_eq!(rb.capacity(), 0);
        assert_eq!(pool.free.len(), 1);
    }

    #[test]
    fn small_leftover_leaves_the_big_buffer() {
        let mut pool = BufPool::new(READ_BUF_SIZE, 4);
        let mut rb = ReadBuf::default();
        rb.prepare(&mut pool, 0).extend_from_slice(b"line one\npart");
        rb.consume(9);
        rb.settle(&mut pool);
        assert_eq!(rb.unread(), b"part");
        assert!(rb.capacity() < 64);
        // The next read grows it back to a useful size.
        assert!(rb.prepare(&mut pool, 0).capacity() >= READ_BUF_SIZE);
        assert_eq!(rb.unread(), b"part");
    }

    /// A frame at the limit: 2 GiB buffered, its header saying 4 more
    /// bytes are needed. The buffer must grow to what is needed, not
    /// double past 4 GiB (`start` would wrap). `vec![0; n]` is calloc's
    /// untouched pages, and growing them is an mremap: this costs address
    /// space, not memory.
    #[test]
    fn a_frame_at_the_limit_keeps_the_offsets_in_32_bits() {
        use crate::reactor::MAX_FRAME_LIMIT;
        let mut pool = BufPool::new(READ_BUF_SIZE, 0);
        let mut rb = ReadBuf { buf: vec![0u8; MAX_FRAME_LIMIT], start: 0, scanned: 0 };
        let capacity = rb.prepare(&mut pool, MAX_FRAME_LIMIT + 4).capacity();
        assert!(capacity >= MAX_FRAME_LIMIT + 4, "{capacity}");
        assert!(capacity <= MAX_READ_BUF, "{capacity} bytes: 32-bit offsets would wrap");
    }

    #[test]
    fn prepare_reserves_what_a_validated_frame_needs() {
        let mut pool = BufPool::new(READ_BUF_SIZE, 4);
        let mut rb = ReadBuf::default();
        let buf = rb.prepare(&mut pool, 200_000);
        assert!(buf.capacity() >= 200_000);
    }
}
