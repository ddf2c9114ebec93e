//! The budget for request bytes in flight, shared by every receiver of a process: bytes
//! of HTTP bodies and gRPC messages being received, and what they inflate to, from the
//! moment they are read until the request has been handed on. A request that cannot get
//! budget is refused with a retryable status at once: before its body is read when the
//! length is declared, else as soon as a chunk would overdraw it. The bytes the memory
//! limiter cannot see between two checks (requests on the wire) are bounded by it.
//!
//! Reading bodies and gzip lives here too, so that both protocols read and inflate
//! through one budget: every gzip member is read (`MultiGzDecoder`), as Go's and zlib's
//! readers do, within the request size limit.

use std::io::Read;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use metrics::{Counter, Gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::{self, Registry};

/// The budget is kept in units of this many bytes (a semaphore's permits).
const UNIT: u64 = 1024;
/// How much is inflated between two budget checks.
const INFLATE_STEP: usize = 64 * 1024;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request exceeds {0} bytes")]
    TooLarge(usize),
    #[error("request bytes in flight are at their limit; retry later")]
    Exhausted,
    #[error("reading the request: {0}")]
    Read(String),
    #[error("invalid gzip: {0}")]
    Gzip(std::io::Error),
}

/// Request bytes in flight, across every receiver of the process.
#[derive(Clone)]
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    in_flight: Gauge,
    refused: Counter,
    limit: u64,
}

impl RequestBudget {
    pub fn new(limit_bytes: u64, registry: &Registry) -> Self {
        let units = (limit_bytes / UNIT).max(1);
        registry
            .gauge(telemetry::RECEIVER_REQUEST_BYTES_LIMIT, &[])
            .set((units * UNIT) as f64);
        Self {
            permits: Arc::new(Semaphore::new(
                usize::try_from(units).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            in_flight: registry.gauge(telemetry::RECEIVER_REQUEST_BYTES_IN_FLIGHT, &[]),
            refused: registry.counter(telemetry::RECEIVER_ADMISSION_REFUSED_REQUESTS, &[]),
            limit: units * UNIT,
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// An empty reservation, to grow as bytes arrive.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            permit: None,
            bytes: 0,
        }
    }

    fn update_gauge(&self) {
        let free = self.permits.available_permits() as u64 * UNIT;
        self.in_flight.set(self.limit.saturating_sub(free) as f64);
    }
}

/// Budget held by one request; given back when dropped.
pub struct Reservation {
    budget: RequestBudget,
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl Reservation {
    /// Holds `bytes` more, or refuses (counted) when the budget cannot give them now.
    pub fn grow(&mut self, bytes: usize) -> Result<(), BodyError> {
        let wanted = self.bytes + bytes as u64;
        let held = self.permit.as_ref().map_or(0, |p| p.num_permits() as u64);
        let needed = wanted.div_ceil(UNIT).saturating_sub(held);
        if needed > 0 {
            let needed = u32::try_from(needed).map_err(|_| self.refuse())?;
            let more = Arc::clone(&self.budget.permits)
                .try_acquire_many_owned(needed)
                .map_err(|_| self.refuse())?;
            match &mut self.permit {
                Some(permit) => permit.merge(more),
                None => self.permit = Some(more),
            }
            self.budget.update_gauge();
        }
        self.bytes = wanted;
        Ok(())
    }

    fn refuse(&self) -> BodyError {
        self.budget.refused.increment(1);
        BodyError::Exhausted
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.budget.update_gauge();
        }
    }
}

/// Reads a whole body of at most `max` bytes into `reservation`: a declared length (the
/// body's exact size hint, from `content-length`) is reserved before anything is read,
/// otherwise each chunk as it comes. `framed_length` reads the body's length from its first
/// chunk where the protocol states it there (gRPC's message prefix): that length is checked
/// and reserved like a declared one, and a body in many chunks is gathered into one buffer
/// of that size rather than into a growing one (which copies and faults pages again at
/// every doubling).
pub async fn read_body<B>(
    body: B,
    max: usize,
    reservation: &mut Reservation,
    framed_length: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: std::fmt::Display,
{
    let declared = body.size_hint().exact();
    if let Some(length) = declared {
        if length > max as u64 {
            return Err(BodyError::TooLarge(max));
        }
        reservation.grow(length as usize)?;
    }
    let mut declared = declared.unwrap_or(0) as usize;
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        // Trailers, and empty data frames: HTTP/2 clients commonly end a request with an
        // empty DATA frame carrying END_STREAM, which must not make a one-chunk body a
        // gathered one.
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if !data.has_remaining() {
            continue;
        }
        let len = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if len + data.remaining() > max {
            return Err(BodyError::TooLarge(max));
        }
        if len + data.remaining() > declared {
            reservation.grow(len + data.remaining() - declared.max(len))?;
        }
        // One chunk is kept as it is; more are gathered (one copy).
        match &first {
            None => {
                let f = data.copy_to_bytes(data.remaining());
                if let Some(stated) = framed_length(&f).filter(|s| *s > declared.max(f.len())) {
                    if stated > max {
                        return Err(BodyError::TooLarge(max));
                    }
                    reservation.grow(stated - declared.max(f.len()))?;
                    declared = stated;
                }
                first = Some(f);
            }
            Some(f) => {
                if rest.is_empty() {
                    rest.reserve(declared.max(f.len() + data.remaining()));
                    rest.extend_from_slice(f);
                }
                while data.has_remaining() {
                    let chunk = data.chunk();
                    rest.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

/// Inflates every gzip member of `compressed`, to at most `max` bytes, growing
/// `reservation` as it goes.
pub fn gunzip(
    compressed: &[u8],
    max: usize,
    reservation: &mut Reservation,
) -> Result<Vec<u8>, BodyError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut out = Vec::new();
    loop {
        let step = INFLATE_STEP.min(max + 1 - out.len());
        reservation.grow(step)?;
        let start = out.len();
        out.resize(start + step, 0);
        let mut filled = 0;
        while filled < step {
            match decoder.read(&mut out[start + filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BodyError::Gzip(e)),
            }
        }
        out.truncate(start + filled);
        if out.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        if filled < step {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::{Frame, SizeHint};

    use super::*;
    use crate::receiver::grpc::stated_length;

    /// A body that declares `len` bytes and fails the test if it is ever read.
    struct Unread(u64);

    impl Body for Unread {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            panic!("the body was read although it could not get budget");
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0)
        }
    }

    fn budget(bytes: u64) -> RequestBudget {
        RequestBudget::new(bytes, &Registry::new())
    }

    #[tokio::test]
    async fn a_declared_body_over_the_budget_is_refused_before_it_is_read() {
        let budget = budget(64 * 1024);
        let mut reservation = budget.reservation();
        let refused = read_body(Unread(65 * 1024), 1 << 20, &mut reservation, |_| None).await;
        assert!(matches!(refused, Err(BodyError::Exhausted)));
        let too_large = read_body(Unread(2 << 20), 1 << 20, &mut reservation, |_| None).await;
        assert!(matches!(too_large, Err(BodyError::TooLarge(_))));
    }

    #[tokio::test]
    async fn budget_is_held_until_the_reservation_is_dropped() {
        let budget = budget(64 * 1024);
        let mut first = budget.reservation();
        let body = http_body_util::Full::new(Bytes::from(vec![7u8; 40 * 1024]));
        assert_eq!(
            read_body(body, 1 << 20, &mut first, |_| None)
                .await
                .unwrap()
                .len(),
            40 * 1024
        );
        let mut second = budget.reservation();
        assert!(matches!(second.grow(40 * 1024), Err(BodyError::Exhausted)));
        drop(first);
        assert!(second.grow(40 * 1024).is_ok());
    }

    /// A body in `parts`, counting the frames read.
    struct Parts(
        std::collections::VecDeque<Bytes>,
        Arc<std::sync::atomic::AtomicUsize>,
    );

    impl Body for Parts {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    /// A gRPC message prefix stating `len` bytes of message, then `then` bytes, in `parts`
    /// parts after the prefix's.
    fn grpc_body(
        len: u32,
        then: usize,
        parts: usize,
    ) -> (Parts, Arc<std::sync::atomic::AtomicUsize>) {
        let mut first = vec![0u8];
        first.extend(len.to_be_bytes());
        let mut all = vec![Bytes::from(first)];
        all.extend((0..parts).map(|i| Bytes::from(vec![i as u8; then / parts])));
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (Parts(all.into(), read.clone()), read)
    }

    #[tokio::test]
    async fn a_length_stated_in_the_first_chunk_is_checked_and_reserved_before_the_rest() {
        let budget = budget(64 * 1024);
        // More than the budget: refused after the first chunk.
        let (body, read) = grpc_body(100 * 1024, 100 * 1024, 4);
        let mut reservation = budget.reservation();
        let refused = read_body(body, 1 << 20, &mut reservation, stated_length).await;
        assert!(matches!(refused, Err(BodyError::Exhausted)), "{refused:?}");
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 1);
        // More than the limit: too large after the first chunk.
        let (body, read) = grpc_body(2 << 20, 1024, 1);
        let too_large = read_body(body, 1 << 20, &mut budget.reservation(), stated_length).await;
        assert!(matches!(too_large, Err(BodyError::TooLarge(_))));
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Within both: every part gathered in order, the stated length held.
        let (body, _) = grpc_body(40 * 1024, 40 * 1024, 4);
        let mut held = budget.reservation();
        let gathered = read_body(body, 1 << 20, &mut held, stated_length)
            .await
            .unwrap();
        assert_eq!(gathered.len(), 5 + 40 * 1024);
        assert_eq!(gathered[5 + 30 * 1024], 3);
        assert!(matches!(
            budget.reservation().grow(30 * 1024),
            Err(BodyError::Exhausted)
        ));
        drop(held);
        // A prefix stating less than is sent: the rest is still read, and counted.
        let (body, _) = grpc_body(1024, 40 * 1024, 4);
        let mut reservation = budget.reservation();
        let gathered = read_body(body, 1 << 20, &mut reservation, stated_length)
            .await
            .unwrap();
        assert_eq!(gathered.len(), 5 + 40 * 1024);
        assert!(matches!(
            budget.reservation().grow(30 * 1024),
            Err(BodyError::Exhausted)
        ));
    }

    #[tokio::test]
    async fn a_body_in_one_chunk_among_empty_frames_is_handed_on_without_a_copy() {
        let budget = budget(1 << 20);
        let message = Bytes::from(vec![9u8; 40 * 1024]);
        let frames = [Bytes::new(), message.clone(), Bytes::new(), Bytes::new()];
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let body = Parts(frames.into_iter().collect(), read.clone());
        let mut reservation = budget.reservation();
        let got = read_body(body, 1 << 20, &mut reservation, |_| None)
            .await
            .unwrap();
        assert_eq!(got, message);
        assert_eq!(got.as_ptr(), message.as_ptr(), "the chunk was copied");
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 5);
    }

    #[test]
    fn every_gzip_member_is_inflated_within_the_limit() {
        let mut body = Vec::new();
        for part in [&b"first member, "[..], &b"second member"[..]] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(part).unwrap();
            body.extend(gz.finish().unwrap());
        }
        let budget = budget(1 << 20);
        let mut reservation = budget.reservation();
        let inflated = gunzip(&body, 1024, &mut reservation).unwrap();
        assert_eq!(inflated, b"first member, second member");
        assert!(matches!(
            gunzip(&body, 10, &mut reservation),
            Err(BodyError::TooLarge(10))
        ));
        assert!(matches!(
            gunzip(&body[..body.len() - 3], 1024, &mut reservation),
            Err(BodyError::Gzip(_))
        ));
    }
}
