//! Bounds on the connections the hub holds: how many in all and per peer address, how long
//! one may sit idle, how long a write may stay blocked, and a back-off when accepting fails
//! (out of file descriptors, say) instead of a loop spinning on the error. The TLS handshake's
//! own time limit is tonic's (`ServerTlsConfig::timeout`), set from the same configuration.
//!
//! An accepted connection over a cap is closed at once. A connection counts until it closes;
//! its TLS handshake happens inside that lifetime, so half-sent ClientHellos count too.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The bounds, from the hub's `[limits]`.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections held at once, in all.
    pub max_connections: usize,
    /// Connections held at once from one peer address.
    pub max_per_address: usize,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// A write blocked (the peer not reading) for this long closes the connection.
    pub send_timeout: Duration,
}

/// Connections per peer address.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Accepts connections from `listener` within `limits` and hands them on, each wrapped in a
/// [`Bounded`] that enforces the timeouts and gives its place back when it closes. The accept
/// task stops when the receiving side is dropped.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Bounded>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let all = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let per_address: PerAddress = Arc::new(Mutex::new(HashMap::new()));
        let mut backoff = Backoff::default();
        let mut refused_since_warning = 0u64;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    let delay = backoff.next();
                    if backoff.is_first() {
                        tracing::warn!(error = %e, "accepting a connection failed; backing off");
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            backoff.reset();
            let Some(bounded) = admit(stream, peer, &all, &per_address, limits) else {
                refused_since_warning += 1;
                if refused_since_warning.is_power_of_two() {
                    tracing::warn!(
                        refused = refused_since_warning,
                        peer = %peer.ip(),
                        max_connections = limits.max_connections,
                        max_per_address = limits.max_per_address,
                        "connection refused: over the connection limit"
                    );
                }
                continue;
            };
            if tx.send(Ok(bounded)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The connection wrapped, if both caps leave room for it; otherwise it is dropped (closed).
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    all: &Arc<Semaphore>,
    per_address: &PerAddress,
    limits: ConnectionLimits,
) -> Option<Bounded> {
    let permit = all.clone().try_acquire_owned().ok()?;
    let slot = AddressSlot::take(per_address, peer.ip(), limits.max_per_address)?;
    if let Err(e) = stream.set_nodelay(true) {
        // With Nagle on, a response written in two parts waits ~40 ms for a delayed ACK.
        tracing::warn!(error = %e, "could not turn off Nagle's algorithm on a connection");
    }
    Some(Bounded {
        inner: stream,
        idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        idle_timeout: limits.idle_timeout,
        blocked_write: None,
        send_timeout: limits.send_timeout,
        _permit: permit,
        _slot: slot,
    })
}

/// One peer address's place in the per-address count, given back on drop.
struct AddressSlot {
    map: PerAddress,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(map: &PerAddress, ip: IpAddr, max: usize) -> Option<Self> {
        let mut m = map.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(Self {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.lock()
            && let Some(n) = m.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Doubling delays after failed accepts: 10 ms up to 1 s.
#[derive(Default)]
struct Backoff {
    current: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let d = match self.current {
            None => Self::FIRST,
            Some(d) => (d * 2).min(Self::MAX),
        };
        self.current = Some(d);
        d
    }

    fn is_first(&self) -> bool {
        self.current == Some(Self::FIRST)
    }

    fn reset(&mut self) {
        self.current = None;
    }
}

/// An accepted connection within the limits: closes itself (an I/O error to the server)
/// when idle too long or when a write stays blocked too long; gives its places back on drop.
pub struct Bounded {
    inner: TcpStream,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    /// When the current blocked write began to wait, and its deadline.
    blocked_write: Option<Pin<Box<Sleep>>>,
    send_timeout: Duration,
    _permit: OwnedSemaphorePermit,
    _slot: AddressSlot,
}

impl Bounded {
    fn progress(&mut self) {
        self.idle.as_mut().reset(Instant::now() + self.idle_timeout);
    }

    /// An error once the connection has been idle too long; registers the wake-up otherwise.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle past the hub's idle_timeout_seconds",
            )),
            Poll::Pending => Ok(()),
        }
    }

    /// What a write of the inner stream means: progress ends a blocked spell; a blocked
    /// write fails once blocked (or idle) too long.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                self.blocked_write = None;
                if n > 0 {
                    self.progress();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check_blocked(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    /// An error once a write has been blocked too long.
    fn check_blocked(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let send_timeout = self.send_timeout;
        let deadline = self
            .blocked_write
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading: a write was blocked past the hub's send_timeout_seconds",
            )),
            Poll::Pending => self.check_idle(cx),
        }
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progress();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.blocked_write = None;
                Poll::Ready(r)
            }
            Poll::Pending => match this.check_blocked(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Bounded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_back_off_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(10));
        assert!(b.is_first());
    }

    #[test]
    fn an_address_slot_is_given_back_on_drop() {
        let map: PerAddress = Arc::new(Mutex::new(HashMap::new()));
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = AddressSlot::take(&map, ip, 2);
        let b = AddressSlot::take(&map, ip, 2);
        assert!(a.is_some() && b.is_some());
        assert!(AddressSlot::take(&map, ip, 2).is_none());
        drop(a);
        assert!(AddressSlot::take(&map, ip, 2).is_some());
    }
}
