//! Accepting connections for both receivers, and an idle limit on every one (gRPC's
//! `max_connection_idle`, HTTP's `idle_timeout`), so clients that connect and go quiet,
//! or stop halfway through a request, give their connection and its buffers back.
//!
//! [`Incoming`] waits out transient accept errors (a client that reset before it was
//! accepted, out of file descriptors) and ends on any other, keeping the error, so a
//! receiver whose listener broke ends with that error instead of spinning on it.
//!
//! Written here because neither hyper nor tonic closes a connection on which no bytes
//! move: hyper's HTTP/1 header timeout covers only the headers, and tonic has no idle
//! limit at all.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// How a receiver's accept loop ended: fine when it was stopped, else the listener's
/// error (or the loop's own end, which only a panic in it can cause).
pub fn ended(stop: &tokio_util::sync::CancellationToken, fatal: &Fatal) -> io::Result<()> {
    match fatal.take() {
        Some(e) => Err(e),
        None if stop.is_cancelled() => Ok(()),
        None => Err(io::Error::other("the accept loop ended")),
    }
}

/// How long to wait after a transient accept error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Where an [`Incoming`] leaves the error that ended it.
#[derive(Clone, Default)]
pub struct Fatal(Arc<Mutex<Option<io::Error>>>);

impl Fatal {
    /// The error that ended the stream, if one did.
    pub fn take(&self) -> Option<io::Error> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn set(&self, e: io::Error) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// Accepted connections of a listener, each with the idle limit; ends at the first error
/// that is not transient, which it leaves in [`Fatal`].
pub struct Incoming {
    listener: TcpListener,
    idle: Duration,
    fatal: Fatal,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    pub fn new(listener: TcpListener, idle: Duration) -> (Self, Fatal) {
        let fatal = Fatal::default();
        let incoming = Self {
            listener,
            idle,
            fatal: fatal.clone(),
            backoff: None,
        };
        (incoming, fatal)
    }
}

/// Errors that say nothing about the listener: the next accept may well succeed.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::OutOfMemory
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO)
    )
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<IdleLimited<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(backoff) = self.backoff.as_mut() {
                if backoff.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, _))) => {
                    let _ = stream.set_nodelay(true);
                    let idle = self.idle;
                    return Poll::Ready(Some(Ok(IdleLimited::new(stream, idle))));
                }
                Poll::Ready(Err(e)) if transient(&e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "the listener failed");
                    self.fatal.set(e);
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// A connection that fails with `TimedOut` once no byte was read or written for `limit`.
pub struct IdleLimited<T> {
    inner: T,
    limit: Option<Duration>,
    /// When bytes last moved.
    last: Instant,
    /// Fires at `last + limit` or earlier; moved forward when it fires early, so traffic
    /// costs a clock read per call, not a timer update.
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleLimited<T> {
    /// `limit` zero means no limit.
    pub fn new(inner: T, limit: Duration) -> Self {
        let limit = (!limit.is_zero()).then_some(limit);
        let far = Duration::from_secs(86_400 * 365);
        Self {
            inner,
            limit,
            last: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(limit.unwrap_or(far))),
        }
    }

    fn moved(&mut self) {
        if self.limit.is_some() {
            self.last = Instant::now();
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        while self.deadline.as_mut().poll(cx).is_ready() {
            let due = self.last + limit;
            if Instant::now() >= due {
                return true;
            }
            self.deadline.as_mut().reset(due);
        }
        false
    }
}

fn idle() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
}

impl<T> IdleLimited<T> {
    /// An IO call's result, with the idle clock reset when it moved bytes and the limit
    /// enforced while it waits.
    fn observe<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
        moved: impl FnOnce(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(Ok(r)) => {
                if moved(&r) {
                    self.moved();
                }
                Poll::Ready(Ok(r))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle())),
            other => other,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleLimited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let after = buf.filled().len();
        self.observe(cx, poll, |_| after > before)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleLimited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        self.observe(cx, poll, |n| *n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.observe(cx, poll, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for IdleLimited<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_times_out_and_traffic_keeps_it_open() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleLimited::new(server, Duration::from_secs(60));
        let mut client = client;
        let mut buf = [0u8; 8];
        // Bytes every 50 s keep it alive past the limit.
        for _ in 0..3 {
            let read = server.read(&mut buf);
            let write = async {
                tokio::time::sleep(Duration::from_secs(50)).await;
                client.write_all(b"x").await.unwrap();
            };
            let (n, ()) = tokio::join!(read, write);
            assert_eq!(n.unwrap(), 1);
        }
        let started = Instant::now();
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_no_limit() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = IdleLimited::new(server, Duration::ZERO);
        let mut buf = [0u8; 1];
        let read = server.read(&mut buf);
        let write = async {
            tokio::time::sleep(Duration::from_secs(86_400)).await;
            client.write_all(b"x").await.unwrap();
        };
        let (n, ()) = tokio::join!(read, write);
        assert_eq!(n.unwrap(), 1);
    }
}
