//! A TCP connection of the userspace stack as a tokio byte stream.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::engine::Shared;

/// One accepted tunnel connection. Reads and writes copy straight between the caller's
/// buffer and the socket's ring buffers under a short lock, and wake the engine to move
/// the packets.
pub struct TunnelStream {
    shared: Arc<Shared>,
    handle: Option<SocketHandle>,
}

impl TunnelStream {
    pub(crate) fn new(shared: Arc<Shared>, handle: SocketHandle) -> Self {
        TunnelStream {
            shared,
            handle: Some(handle),
        }
    }

    /// Detach without touching the stack (the caller holds its lock and cleans up).
    pub(crate) fn forget(mut self) {
        self.handle = None;
    }

    fn handle(&self) -> io::Result<SocketHandle> {
        self.handle.ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream").field("handle", &self.handle).finish()
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let h = self.handle()?;
        let mut st = self.shared.lock();
        let s = st.sockets.get_mut::<tcp::Socket>(h);
        // Reset (a revoked peer, a limit, or the peer's RST): bytes still buffered from
        // before are dropped, as a kernel socket drops them, never handed to the reader.
        if s.state() == tcp::State::Closed {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if s.can_recv() {
            let n = s
                .recv_slice(buf.initialize_unfilled())
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e.to_string()))?;
            buf.advance(n);
            drop(st);
            // The receive window opened: let the engine tell the peer.
            self.shared.wake.notify_one();
            return Poll::Ready(Ok(()));
        }
        if !s.may_recv() {
            return Poll::Ready(Ok(())); // end of stream (the peer's FIN)
        }
        s.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let h = self.handle()?;
        let mut st = self.shared.lock();
        let s = st.sockets.get_mut::<tcp::Socket>(h);
        if !s.may_send() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if s.can_send() {
            let n = s
                .send_slice(data)
                .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
            drop(st);
            self.shared.wake.notify_one();
            return Poll::Ready(Ok(n));
        }
        s.register_send_waker(cx.waker());
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let h = self.handle()?;
        self.shared.lock().sockets.get_mut::<tcp::Socket>(h).close();
        self.shared.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let Some(h) = self.handle.take() else { return };
        let mut st = self.shared.lock();
        st.conns.remove(&h);
        let s = st.sockets.get_mut::<tcp::Socket>(h);
        s.close();
        // A peer that vanished must not pin the socket forever (nor one that answers
        // keep-alives and never closes: the stack resets it after its linger time).
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(30)));
        st.close_later(h);
        drop(st);
        self.shared.wake.notify_one();
    }
}
