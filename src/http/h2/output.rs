//! Frames waiting to be written on an HTTP/2 connection, and the write (vectored when
//! large payloads are queued uncopied) that sends them.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::frame;

/// Data this large is queued as its own segment rather than copied behind its frame header.
const COPY_LIMIT: usize = 1024;
/// The most segments one vectored write takes.
const MAX_SLICES: usize = 64;

/// Frames waiting to be written: segments ready in order, then the buffer frames are being
/// put into. Large DATA payloads are segments of their own, written without a copy.
#[derive(Default)]
pub struct Output {
    queue: VecDeque<Bytes>,
    queued: usize,
    pub buf: BytesMut,
}

impl Output {
    pub fn len(&self) -> usize {
        self.queued + self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_frame(&mut self, head: [u8; frame::HEADER_LEN], payload: Bytes) {
        self.buf.put_slice(&head);
        if payload.len() < COPY_LIMIT {
            self.buf.put_slice(&payload);
            return;
        }
        let framed = self.buf.split().freeze();
        self.queued += framed.len() + payload.len();
        self.queue.push_back(framed);
        self.queue.push_back(payload);
    }

    /// Writes until everything is written or the socket is full.
    pub fn poll_write(&mut self, io: &mut (impl AsyncWrite + Unpin), cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for segment in self.queue.iter().take(MAX_SLICES - 1) {
                slices[count] = IoSlice::new(segment);
                count += 1;
            }
            // The buffer follows every queued segment, so it goes out only behind all of them.
            if !self.buf.is_empty() && count == self.queue.len() {
                slices[count] = IoSlice::new(&self.buf);
                count += 1;
            }
            // One slice goes out with send(2), which costs the kernel less than writev(2).
            let written = match count {
                1 => ready!(Pin::new(&mut *io).poll_write(cx, &slices[0]))?,
                _ => ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?,
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(written);
        }
        Pin::new(&mut *io).poll_flush(cx)
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                self.buf.advance(n);
                return;
            };
            let taken = n.min(front.len());
            front.advance(taken);
            self.queued -= taken;
            n -= taken;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn output_keeps_frame_order_across_more_segments_than_one_write_takes() {
        let mut out = Output::default();
        let mut expected = Vec::new();
        for i in 0..100u8 {
            let head = frame::head_bytes(COPY_LIMIT, frame::DATA, 0, 1);
            let payload = Bytes::from(vec![i; COPY_LIMIT]);
            expected.extend_from_slice(&head);
            expected.extend_from_slice(&payload);
            out.push_frame(head, payload);
        }
        frame::put_ping_ack(&mut out.buf, b"12345678");
        expected.extend_from_slice(&out.buf);
        let mut written = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(out.poll_write(&mut written, &mut cx), Poll::Ready(Ok(()))));
        assert!(out.is_empty());
        assert!(written == expected, "frames were written out of order");
    }
}
