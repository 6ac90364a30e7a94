//! A connection's write half that holds what is written until a flush, so
//! that a burst of frames reaches the kernel in one write instead of one
//! per frame. Nothing is kept between bursts: an idle connection holds no
//! buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;

pub struct Gather<W> {
    inner: W,
    held: Vec<u8>,
    /// How much of `held` the kernel has taken.
    written: usize,
}

impl<W> Gather<W> {
    pub fn new(inner: W) -> Self {
        Gather { inner, held: Vec::new(), written: 0 }
    }
}

impl<W: AsyncWrite + Unpin> Gather<W> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.held = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Gather<W> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, _: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let held = &mut self.get_mut().held;
        let before = held.len();
        for b in bufs {
            held.extend_from_slice(b);
        }
        Poll::Ready(Ok(held.len() - before))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn nothing_reaches_the_peer_before_a_flush_and_all_of_it_in_order_after() {
        // A pipe smaller than a burst: the drain takes several writes.
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = Gather::new(a);
        let burst: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        w.write_all(&burst[..300]).await.unwrap();
        let n = w.write_vectored(&[IoSlice::new(&burst[300..700]), IoSlice::new(&burst[700..])]).await.unwrap();
        assert_eq!(n, 700, "every slice taken at once");
        let mut peek = [0u8; 1];
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut peek)).await.is_err(),
            "held until the flush"
        );
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1000];
            b.read_exact(&mut got).await.unwrap();
            got
        });
        w.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), burst);
        assert_eq!(w.held.capacity(), 0, "no buffer kept after the burst");
    }
}
