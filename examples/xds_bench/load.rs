//! An open-loop HTTP/1.1 load generator for the EDS churn benchmark (`churn.rs`): a fixed
//! request rate, whatever the proxy does, with latencies corrected for coordinated omission.
//!
//! `connections` keep-alive connections each send one request at a time, on a fixed
//! schedule: connection `c` is due to send its `k`-th request at
//! `t0 + (k + c / connections) × connections / rate`, so together they offer `rate` requests
//! per second, evenly interleaved. A request's latency runs from the moment it should have
//! started to the end of its response body:
//!
//! - if its connection was free at the due time, from when it was actually sent (the timer
//!   that wakes it fires up to about a millisecond late, tokio's timer resolution; that
//!   lateness is the client's, not the proxy's, so it is not counted);
//! - if its connection was still waiting for the previous response at the due time, from the
//!   due time: the request was held up behind a slow one, and the wait is part of what the
//!   proxy made it cost. A connection that falls behind sends back to back until it catches
//!   up (as wrk2 does), so a stall shows in the latencies of every request scheduled during
//!   it, not only in the few that were in flight (what a closed-loop client like wrk records).
//!
//! The generator runs on its own thread with a current-thread runtime, so that the control
//! plane's work on the driver's runtime does not delay its timers. Because of tokio's
//! millisecond timer, requests leave in small bursts (about `rate / 1000` at each tick): the
//! proxy sees that burstiness in the baseline and the churn phases alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// One request.
#[derive(Clone, Copy)]
pub struct Sample {
    /// When the request counts from, µs after the generator's `t0` (see the module doc).
    pub start_us: u32,
    /// From `start` to the end of the response body, ns.
    pub latency_ns: u64,
    /// The response's status, or 0 when the request failed (connect, I/O or protocol error).
    pub status: u16,
}

impl Sample {
    pub fn end_us(&self) -> u64 {
        u64::from(self.start_us) + self.latency_ns / 1000
    }
}

/// A running generator.
pub struct Generator {
    /// The origin of the samples' `start_us`.
    pub t0: Instant,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Generator {
    /// Starts `connections` connections to `target` offering `rate` requests per second of
    /// `GET /` in all.
    pub fn start(target: SocketAddr, rate: u32, connections: usize) -> Generator {
        let t0 = Instant::now() + Duration::from_millis(100);
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_secs_f64(connections as f64 / f64::from(rate));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("xds-scale-load".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                runtime.block_on(async move {
                    let tasks: Vec<_> = (0..connections)
                        .map(|c| {
                            let first = t0 + interval.mul_f64(c as f64 / connections as f64);
                            tokio::spawn(connection(target, t0, first, interval, flag.clone()))
                        })
                        .collect();
                    let mut samples = Vec::new();
                    for task in tasks {
                        samples.extend(task.await.unwrap_or_default());
                    }
                    samples.sort_unstable_by_key(|s| s.start_us);
                    samples
                })
            })
            .expect("start the load generator thread");
        Generator { t0, stop, thread }
    }

    /// Stops the generator (each connection finishes its request in flight) and returns every
    /// sample, in order of start.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// One connection's schedule: its `k`-th request is due at `first + k × interval`.
async fn connection(
    target: SocketAddr,
    t0: Instant,
    first: Instant,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut sender = None;
    let mut previous_done = first;
    let mut k: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = first + interval * k;
        k += 1;
        if Instant::now() < due {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        let start = if previous_done > due { due } else { sent };
        let status = get(&mut sender, target).await.unwrap_or_else(|()| {
            sender = None;
            0
        });
        let done = Instant::now();
        previous_done = done;
        samples.push(Sample {
            start_us: start.saturating_duration_since(t0).as_micros() as u32,
            latency_ns: done.saturating_duration_since(start).as_nanos() as u64,
            status,
        });
    }
    samples
}

/// `GET /` on the connection (opened first if there is none): the status, once the whole
/// body is in.
async fn get(sender: &mut Option<SendRequest<Empty<Bytes>>>, target: SocketAddr) -> Result<u16, ()> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = tokio::net::TcpStream::connect(target).await.map_err(|_| ())?;
        let _ = stream.set_nodelay(true);
        let (s, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|_| ())?;
        tokio::spawn(connection);
        *sender = Some(s);
    }
    let s = sender.as_mut().expect("connected");
    s.ready().await.map_err(|_| ())?;
    let request = http::Request::get("/")
        .header(http::header::HOST, target.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|_| ())?;
    let response = s.send_request(request).await.map_err(|_| ())?;
    let status = response.status().as_u16();
    response.into_body().collect().await.map_err(|_| ())?;
    Ok(status)
}
