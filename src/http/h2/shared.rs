//! What an HTTP/2 connection shares with the handles of its streams (a request body, a
//! response being sent): the frames waiting to be written, the stream table, and flow
//! control in both directions. One `Rc<RefCell<Shared>>` per connection, on its worker;
//! no borrow is held across a wait, and waking a waker never polls anything in place, so
//! waking under a borrow is safe.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use fnv::FnvHashMap;
use http::HeaderMap;

use super::frame::{self, Reason};
use super::head::Refusal;
use super::hpack::Encoder;
use super::output::Output;
use crate::upstream::cluster::ClusterStats;

/// Queued output beyond which streams wait before sending more data: the socket is slower
/// than the peer's flow-control windows allow (a client with huge windows that reads slowly).
pub const OUTPUT_LIMIT: usize = 1024 * 1024;

pub struct Shared {
    pub out: Output,
    /// The HPACK encoder of the header blocks legate sends.
    pub encoder: Encoder,
    pub streams: FnvHashMap<u32, Stream>,
    /// Streams neither closed at both ends nor reset: what MAX_CONCURRENT_STREAMS bounds.
    pub open: u32,
    /// What the peer lets legate send on the connection.
    pub send_window: i64,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE: each new stream's send window.
    pub peer_initial_window: i64,
    pub peer_max_frame: usize,
    /// The window legate advertises for each stream, and for the connection.
    pub stream_window: u32,
    pub connection_window: u32,
    /// What the peer may still send on the connection.
    pub recv_window: i64,
    /// Data taken by readers (or discarded) and not yet given back to the peer.
    pub recv_unacked: u32,
    /// Streams waiting for the peer's connection window.
    pub window_waiters: Vec<Waker>,
    /// Streams waiting for the output to drain below `OUTPUT_LIMIT`.
    pub output_waiters: Vec<Waker>,
    /// The connection's task, to flush what a handle polled in another task queued.
    pub task: Option<Waker>,
    /// The connection's task is polling now (and flushes before it returns).
    pub polling: bool,
    /// The connection is gone: every handle sees its stream reset.
    pub closed: bool,
    /// Legate opens the streams (an upstream connection).
    client: bool,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS (what a client may open).
    pub peer_max_streams: u32,
    /// The peer's GOAWAY, with the last of legate's streams it took.
    pub goaway: Option<u32>,
    /// Legate ended the connection for the peer's breach of HTTP/2.
    pub broken: bool,
    /// The id of the next stream legate opens (a client).
    pub next_stream: u32,
    /// The id of the last stream legate may open: the end of the id space, or earlier
    /// under `max_requests_per_connection`.
    pub last_stream: u32,
    /// Requests waiting for the peer's stream limit to leave room.
    pub stream_waiters: Vec<Waker>,
    /// A connection to an upstream: the cluster whose `upstream_rq_tx_reset` and
    /// `upstream_rq_rx_reset` count its streams' resets. Only multiplexed upstreams count
    /// them, as in Envoy, whose HTTP/1.1 pool closes the connection instead.
    pub upstream_stats: Option<Arc<ClusterStats>>,
}

/// One stream's state, kept while a handle refers to it.
#[derive(Default)]
pub struct Stream {
    /// Request data received and not yet taken by the body.
    pub recv: VecDeque<Bytes>,
    pub trailers: Option<HeaderMap>,
    /// The peer ended its side (END_STREAM received).
    pub recv_closed: bool,
    /// What the peer may still send on this stream.
    pub recv_window: i64,
    pub recv_unacked: u32,
    /// What is left of a declared `content-length`; the body must match it exactly.
    pub content_left: Option<u64>,
    pub reader: Option<Waker>,
    /// The request body was dropped: what still arrives is discarded.
    pub reader_gone: bool,
    /// What legate may send on this stream.
    pub send_window: i64,
    /// Legate ended its side (END_STREAM sent).
    pub send_closed: bool,
    /// The task sending the response, waiting for window or watching for a reset.
    pub sender: Option<Waker>,
    pub reset: Option<Reason>,
    /// The reset came from the peer (RST_STREAM, or beyond its GOAWAY).
    pub reset_by_peer: bool,
    /// Counted out of `Shared::open` already.
    closed_counted: bool,
    /// Handles (the received body, the sending side) still referring to the stream.
    pub handles: u8,
    /// The response head, on a stream legate opened (upstream), until it is taken.
    pub head: Option<(http::response::Parts, Option<u64>)>,
    /// A response head arrived: a later header block holds trailers.
    pub head_seen: bool,
}

impl Stream {
    /// On a reset: what was received of a body that did not end is dropped (a body that
    /// ended is whole, and its reader still takes it). Returns how much was dropped.
    fn discard_unfinished(&mut self) -> usize {
        if self.recv_closed {
            return 0;
        }
        self.recv.drain(..).map(|data| data.len()).sum()
    }

    fn wake(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
        if let Some(waker) = self.sender.take() {
            waker.wake();
        }
    }
}

/// Keeps `slot` holding a waker for `cx`'s task, cloning only when it changed.
pub fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// Polls a connection's task (`poll`), noting meanwhile that what handles queue is flushed
/// before it returns, and keeping the task's waker for handles polled elsewhere.
pub fn polling<R>(
    shared: &Rc<RefCell<Shared>>,
    cx: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<R>,
) -> Poll<R> {
    shared.borrow_mut().polling = true;
    let result = poll(cx);
    let mut state = shared.borrow_mut();
    state.polling = false;
    if result.is_pending() {
        register(&mut state.task, cx);
    }
    result
}

impl Shared {
    /// `client`: legate opens the streams (upstream), else the peer does (downstream).
    pub fn new(client: bool, stream_window: u32, connection_window: u32) -> Shared {
        Shared {
            out: Output::default(),
            encoder: Encoder::default(),
            streams: FnvHashMap::default(),
            open: 0,
            send_window: frame::DEFAULT_WINDOW,
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            stream_window,
            connection_window,
            recv_window: i64::from(connection_window),
            recv_unacked: 0,
            window_waiters: Vec::new(),
            output_waiters: Vec::new(),
            task: None,
            polling: false,
            closed: false,
            client,
            peer_max_streams: u32::MAX,
            goaway: None,
            broken: false,
            next_stream: 1,
            last_stream: frame::MAX_WINDOW as u32,
            stream_waiters: Vec::new(),
            upstream_stats: None,
        }
    }

    /// Raises the connection's receive window from the protocol's initial 64 KiB to the one
    /// configured (sent right after SETTINGS).
    pub fn grow_connection_window(&mut self) {
        let grow = self.connection_window.saturating_sub(frame::DEFAULT_WINDOW as u32);
        if grow > 0 {
            frame::put_window_update(&mut self.out.buf, 0, grow);
        }
    }

    /// Adds stream `id` with the windows both ends start it with, counted open and held by
    /// two handles (its received body and its sending side).
    pub fn insert_stream(&mut self, id: u32) -> &mut Stream {
        self.open += 1;
        self.streams.entry(id).or_insert(Stream {
            recv_window: i64::from(self.stream_window),
            send_window: self.peer_initial_window,
            handles: 2,
            ..Stream::default()
        })
    }

    /// Wakes the connection's task if the caller runs outside it, so what was queued gets
    /// written. Every method that queues a frame calls it: a request body's task queues
    /// DATA that nothing else would flush.
    pub fn wake_task(&mut self) {
        if !self.polling
            && let Some(task) = self.task.take()
        {
            task.wake();
        }
    }

    /// Wakes the streams waiting for the connection window.
    pub fn wake_window_waiters(&mut self) {
        for waker in self.window_waiters.drain(..) {
            waker.wake();
        }
    }

    /// Wakes the streams waiting for output room; whether there were any.
    pub fn wake_output_waiters(&mut self) -> bool {
        let any = !self.output_waiters.is_empty();
        for waker in self.output_waiters.drain(..) {
            waker.wake();
        }
        any
    }

    /// Counts the stream out of the open ones if it has just closed.
    pub(super) fn note_closed(&mut self, id: u32) {
        if let Some(stream) = self.streams.get_mut(&id)
            && !stream.closed_counted
            && (stream.reset.is_some() || (stream.recv_closed && stream.send_closed))
        {
            stream.closed_counted = true;
            self.open -= 1;
            // Room for a request waiting on the peer's stream limit.
            if let Some(waiter) = self.stream_waiters.pop() {
                waiter.wake();
            }
        }
    }

    /// Resets a stream: RST_STREAM goes out, its handles see the reset, and what it had
    /// received unread is given back to the connection's window.
    pub fn reset(&mut self, id: u32, reason: Reason) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if stream.reset.is_some() || (stream.recv_closed && stream.send_closed) {
            return;
        }
        stream.reset = Some(reason);
        let unread = stream.discard_unfinished();
        stream.wake();
        // A stream of a connection that has ended was cut by it, and counted then.
        if let Some(stats) = self.upstream_stats.as_ref().filter(|_| !self.closed) {
            stats.upstream_rq_tx_reset.inc();
        }
        frame::put_rst_stream(&mut self.out.buf, id, reason);
        self.note_closed(id);
        self.give_back(unread);
        self.wake_task();
    }

    /// The peer reset a stream.
    pub fn peer_reset(&mut self, id: u32, reason: Reason) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if stream.reset.is_none() {
            stream.reset = Some(reason);
            stream.reset_by_peer = true;
            let unread = stream.discard_unfinished();
            stream.wake();
            // A refused stream was never processed (GOAWAY, REFUSED_STREAM): Envoy does not
            // count it as reset.
            if let Some(stats) = self.upstream_stats.as_ref().filter(|_| reason != Reason::REFUSED_STREAM) {
                stats.upstream_rq_rx_reset.inc();
            }
            self.note_closed(id);
            self.give_back(unread);
        }
    }

    /// A handle let go of its stream; the stream is forgotten once none refers to it.
    pub fn drop_handle(&mut self, id: u32) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.handles -= 1;
            if stream.handles == 0 {
                // Counted out already unless the connection is going away under it.
                if !stream.closed_counted {
                    self.open -= 1;
                }
                self.streams.remove(&id);
                // An upstream connection's driver ends once its last stream is gone.
                self.wake_task();
            }
        }
    }

    /// The received body was dropped. Upstream, a response nobody reads any more is
    /// cancelled. Downstream, request data still in flight is discarded (the stream is reset
    /// once the response is complete, in `end_send`).
    pub fn drop_reader(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        let unread: usize = stream.recv.drain(..).map(|data| data.len()).sum();
        stream.reader_gone = true;
        let cancel = self.client && !stream.recv_closed;
        self.give_back(unread);
        if cancel {
            self.reset(id, Reason::CANCEL);
        }
        self.drop_handle(id);
    }

    /// Data a reader took (or that was discarded) frees the peer's windows: WINDOW_UPDATE
    /// once half of a window is used, not for every frame.
    pub fn release(&mut self, id: u32, n: usize) {
        if let Some(stream) = self.streams.get_mut(&id)
            && !stream.recv_closed
            && stream.reset.is_none()
        {
            stream.recv_unacked += n as u32;
            if stream.recv_unacked >= self.stream_window / 2 {
                let increment = std::mem::take(&mut stream.recv_unacked);
                stream.recv_window += i64::from(increment);
                frame::put_window_update(&mut self.out.buf, id, increment);
                self.wake_task();
            }
        }
        self.give_back(n);
    }

    /// Returns `n` bytes to the connection's receive window.
    pub fn give_back(&mut self, n: usize) {
        self.recv_unacked += n as u32;
        if self.recv_unacked >= self.connection_window / 2 {
            let increment = std::mem::take(&mut self.recv_unacked);
            self.recv_window += i64::from(increment);
            frame::put_window_update(&mut self.out.buf, 0, increment);
            self.wake_task();
        }
    }

    /// DATA received on a stream (the connection window already charged with `flow_len`,
    /// the frame's length with padding). Stream-level faults reset the stream.
    pub fn recv_data(&mut self, id: u32, data: Bytes, flow_len: usize, end: bool) {
        let Some(stream) = self.streams.get_mut(&id) else {
            // A stream legate reset or forgot: frames in flight are ignored, but still
            // count against (and so go back to) the connection window.
            return self.give_back(flow_len);
        };
        if stream.reset.is_some() || stream.recv_closed {
            let closed = stream.reset.is_none();
            self.give_back(flow_len);
            if closed {
                self.reset(id, Reason::STREAM_CLOSED);
            }
            return;
        }
        if flow_len as i64 > stream.recv_window {
            self.give_back(flow_len);
            return self.reset(id, Reason::FLOW_CONTROL_ERROR);
        }
        stream.recv_window -= flow_len as i64;
        // A body that disagrees with its `content-length` is malformed (RFC 9113 §8.1.1).
        let content_ok = match &mut stream.content_left {
            Some(left) if data.len() as u64 > *left => false,
            Some(left) => {
                *left -= data.len() as u64;
                !end || *left == 0
            }
            None => true,
        };
        if !content_ok {
            self.give_back(flow_len);
            return self.reset(id, Reason::PROTOCOL_ERROR);
        }
        let unread = if stream.reader_gone { flow_len } else { flow_len - data.len() };
        if !stream.reader_gone && !data.is_empty() {
            stream.recv.push_back(data);
        }
        if end {
            stream.recv_closed = true;
        }
        if let Some(waker) = stream.reader.take() {
            waker.wake();
        }
        // Padding, and data nobody will read, are given back at once.
        if unread > 0 {
            self.release(id, unread);
        }
        if end {
            self.note_closed(id);
        }
    }

    /// A header block on a stream whose request is in progress: its trailers.
    pub fn recv_trailers(&mut self, id: u32, end: bool, trailers: Result<HeaderMap, Refusal>) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if stream.reset.is_some() {
            return;
        }
        if stream.recv_closed {
            return self.reset(id, Reason::STREAM_CLOSED);
        }
        let trailers = match trailers {
            Ok(trailers) if end && stream.content_left.is_none_or(|left| left == 0) => trailers,
            _ => return self.reset(id, Reason::PROTOCOL_ERROR),
        };
        if !trailers.is_empty() && !stream.reader_gone {
            stream.trailers = Some(trailers);
        }
        stream.recv_closed = true;
        if let Some(waker) = stream.reader.take() {
            waker.wake();
        }
        self.note_closed(id);
    }

    /// How much data the stream may send now; `Err` once it was reset. Registers the
    /// caller to be woken when that may change.
    pub fn poll_capacity(&mut self, id: u32, cx: &Context<'_>) -> Poll<Result<usize, Reason>> {
        let room = OUTPUT_LIMIT.saturating_sub(self.out.len()) as i64;
        let closed = self.closed;
        let Some(stream) = self.streams.get_mut(&id) else { return Poll::Ready(Err(Reason::CANCEL)) };
        if let Some(reason) = stream.reset {
            return Poll::Ready(Err(reason));
        }
        if closed {
            return Poll::Ready(Err(Reason::CANCEL));
        }
        if stream.send_window > 0 && self.send_window > 0 && room > 0 {
            return Poll::Ready(Ok(stream.send_window.min(self.send_window).min(room) as usize));
        }
        // A stream window update or a reset wakes the stream itself; the connection's waits
        // have lists of their own, woken only by what ends them (a connection window update,
        // the output written), so a stream waiting for one is not polled for the other.
        register(&mut stream.sender, cx);
        if stream.send_window > 0 && self.send_window <= 0 {
            self.window_waiters.push(cx.waker().clone());
        } else if stream.send_window > 0 && room <= 0 {
            self.output_waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Ready with the reason once the stream is reset (by either side) or the connection
    /// is gone.
    pub fn poll_reset(&mut self, id: u32, cx: &Context<'_>) -> Poll<Reason> {
        let closed = self.closed;
        let Some(stream) = self.streams.get_mut(&id) else { return Poll::Ready(Reason::CANCEL) };
        match stream.reset {
            Some(reason) => Poll::Ready(reason),
            None if closed => Poll::Ready(Reason::CANCEL),
            None => {
                register(&mut stream.sender, cx);
                Poll::Pending
            }
        }
    }

    /// Queues a HEADERS frame (and CONTINUATION frames if the block exceeds the peer's
    /// frame size) with the block `encode` writes. The block is always queued once encoded:
    /// the peer's HPACK table follows the encoder's only if it decodes every block.
    pub fn send_headers(&mut self, id: u32, end: bool, encode: impl FnOnce(&mut Encoder, &mut BytesMut)) {
        let buf = &mut self.out.buf;
        let start = buf.len();
        buf.put_slice(&[0; frame::HEADER_LEN]);
        self.encoder.begin_block(buf);
        encode(&mut self.encoder, buf);
        let len = buf.len() - start - frame::HEADER_LEN;
        let end_flag = if end { frame::END_STREAM } else { 0 };
        if len <= self.peer_max_frame {
            let head = frame::head_bytes(len, frame::HEADERS, end_flag | frame::END_HEADERS, id);
            buf[start..start + frame::HEADER_LEN].copy_from_slice(&head);
        } else {
            let block = buf.split_off(start + frame::HEADER_LEN).freeze();
            buf.truncate(start);
            let mut pieces = block.chunks(self.peer_max_frame).peekable();
            let mut kind = frame::HEADERS;
            let mut flags = end_flag;
            while let Some(piece) = pieces.next() {
                let last = pieces.peek().is_none();
                frame::put_head(buf, piece.len(), kind, flags | if last { frame::END_HEADERS } else { 0 }, id);
                buf.put_slice(piece);
                kind = frame::CONTINUATION;
                flags = 0;
            }
        }
        if end {
            self.end_send(id);
        }
        self.wake_task();
    }

    /// Queues `data` (no more than `poll_capacity` allowed) as DATA frames.
    pub fn send_data(&mut self, id: u32, mut data: Bytes, end: bool) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        stream.send_window -= data.len() as i64;
        self.send_window -= data.len() as i64;
        loop {
            let piece = data.split_to(data.len().min(self.peer_max_frame));
            let last = data.is_empty();
            let flags = if end && last { frame::END_STREAM } else { 0 };
            self.out.push_frame(frame::head_bytes(piece.len(), frame::DATA, flags, id), piece);
            if last {
                break;
            }
        }
        if end {
            self.end_send(id);
        }
        self.wake_task();
    }

    fn end_send(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        stream.send_closed = true;
        // A response complete before its request: the client is told to stop sending
        // (RFC 9113 §8.1: RST_STREAM with NO_ERROR), as Envoy resets such a stream; the reads
        // of whoever forwards the request body end, which resets an upstream stream it feeds.
        // (Upstream, legate's side ends with its request, before the response: the usual way.)
        let stop_peer = !self.client && !stream.recv_closed;
        self.note_closed(id);
        if stop_peer {
            self.reset(id, Reason::NO_ERROR);
        }
    }

    /// The connection ended: every stream's handles see a reset.
    pub fn close(&mut self) {
        self.closed = true;
        for stream in self.streams.values_mut() {
            stream.wake();
        }
        self.wake_window_waiters();
        self.wake_output_waiters();
    }
}
