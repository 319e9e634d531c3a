//! Buffered I/O for one session: the only part of the session that touches the stream.
//!
//! Replies are appended to an output buffer and go out together just before the session
//! next waits for input, so a pipelined batch of commands is answered in one write and a
//! reply is never split across writes. Every wait has a limit: the idle timeout per read,
//! the session's total time, and (between commands) the relay's shutdown.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::smtp::{Refusal, Reply};

/// Read size; also the most a session buffers beyond the current line or chunk.
const READ_CHUNK: usize = 64 * 1024;

/// Why a wait for input ended without data.
#[derive(Debug)]
pub enum Interrupt {
    /// The peer closed the connection.
    Eof,
    /// A limit or the shutdown ended the session; the refusal is the 421 to send.
    Stop(Refusal),
    Io(std::io::Error),
}

pub struct Conn<S> {
    pub stream: S,
    pub input: BytesMut,
    output: Vec<u8>,
    idle: Duration,
    deadline: Instant,
    shutdown: CancellationToken,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(
        stream: S,
        idle: Duration,
        deadline: Instant,
        shutdown: CancellationToken,
    ) -> Conn<S> {
        Conn {
            stream,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: Vec::with_capacity(1024),
            idle,
            deadline,
            shutdown,
        }
    }

    /// Queues a reply; it is sent with the next flush.
    pub fn reply(&mut self, reply: &Reply) {
        crate::metrics::reply_sent(reply.code);
        reply.write_to(&mut self.output);
    }

    /// Sends every queued reply (one write), bounded by the idle timeout so a peer that
    /// stops reading cannot hold the session.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.idle, write).await {
            Ok(result) => {
                self.output.clear();
                result
            }
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "peer did not read our reply",
            )),
        }
    }

    /// Flushes pending replies, then reads more input. `between_commands` makes the wait
    /// end early when the relay shuts down; inside DATA the transaction is allowed to
    /// finish.
    pub async fn fill(&mut self, between_commands: bool) -> Result<(), Interrupt> {
        self.flush().await.map_err(Interrupt::Io)?;
        let now = Instant::now();
        if now >= self.deadline {
            return Err(Interrupt::Stop(Refusal::SessionTimeout));
        }
        let (limit, on_timeout) = if self.deadline - now < self.idle {
            (self.deadline, Refusal::SessionTimeout)
        } else {
            (now + self.idle, Refusal::IdleTimeout)
        };
        if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(READ_CHUNK);
        }
        let read = tokio::time::timeout_at(limit, self.stream.read_buf(&mut self.input));
        let result = if between_commands {
            tokio::select! {
                r = read => r,
                () = self.shutdown.cancelled() => return Err(Interrupt::Stop(Refusal::ShuttingDown)),
            }
        } else {
            read.await
        };
        match result {
            Err(_) => Err(Interrupt::Stop(on_timeout)),
            Ok(Ok(0)) => Err(Interrupt::Eof),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Interrupt::Io(e)),
        }
    }

    /// Sends a final reply and closes the write side.
    pub async fn close_with(&mut self, reply: &Reply) -> std::io::Result<()> {
        self.reply(reply);
        self.flush().await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
        Ok(())
    }

    pub fn into_stream(self) -> S {
        self.stream
    }
}
