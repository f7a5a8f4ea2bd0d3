//! A TLS connection as Pingora sees it.
//!
//! `dwaar-tls` performs the handshake (with the site's own policy, chosen from the
//! ClientHello); this wrapper gives the resulting rustls stream the traits Pingora's
//! HTTP/1 and HTTP/2 servers need: the negotiated ALPN (so `h2` connections go to the
//! HTTP/2 server), an `SslDigest` (cipher, version, client certificate), and the socket
//! digest of the TCP connection underneath.
//!
//! The TLS policy a connection was accepted under is recorded per thread by the
//! connection's address pair ([`policy_of`]): a request for a site that requires client certificates
//! must arrive on a connection accepted under that site's policy, or it is refused
//! (otherwise a client could handshake as another site and send that Host instead).

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A live TCP connection: (peer, local) addresses.
type ConnKey = (SocketAddr, SocketAddr);

/// What Pingora's phases cannot read from its own digest: the connection's TLS policy
/// and handshake facts.
type Known = (u64, Arc<crate::context::TlsFacts>);

thread_local! {
    static POLICIES: RefCell<HashMap<ConnKey, Known>> = RefCell::new(HashMap::new());
}

/// The TLS policy and handshake facts of the live connection between `peer` and
/// `local` on this thread.
pub fn known(peer: SocketAddr, local: SocketAddr) -> Option<Known> {
    POLICIES.with(|p| p.borrow().get(&(peer, local)).cloned())
}

pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<Stream>,
    digest: Arc<SslDigest>,
    alpn: Option<ALPN>,
    id: UniqueIDType,
    key: Option<ConnKey>,
    /// Bytes read from the connection before it was handed over (the lean path read a
    /// request head), served before anything more is read.
    prefix: bytes::Bytes,
}

impl TlsConn {
    pub fn new(
        inner: tokio_rustls::server::TlsStream<Stream>,
        policy: u64,
        facts: Arc<crate::context::TlsFacts>,
        addrs: Option<ConnKey>,
    ) -> TlsConn {
        let (tcp, conn) = inner.get_ref();
        let id = tcp.id();
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "",
        };
        let (org, serial, cert_digest) = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| client_cert_facts(leaf))
            .unwrap_or((None, None, Vec::new()));
        let digest = Arc::new(SslDigest::new(
            cipher,
            version.to_string(),
            org,
            serial,
            cert_digest,
        ));
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(b"http/1.1") => Some(ALPN::H1),
            _ => None,
        };
        if let Some(k) = addrs {
            POLICIES.with(|p| p.borrow_mut().insert(k, (policy, facts)));
        }
        TlsConn {
            inner,
            digest,
            alpn,
            id,
            key: addrs,
            prefix: bytes::Bytes::new(),
        }
    }
}

fn client_cert_facts(der: &[u8]) -> (Option<String>, Option<String>, Vec<u8>) {
    let digest = ring_sha256(der);
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => {
            let org = c
                .subject()
                .iter_organization()
                .next()
                .and_then(|o| o.as_str().ok())
                .map(str::to_string);
            (org, Some(c.raw_serial_as_string()), digest)
        }
        Err(_) => (None, None, digest),
    }
}

fn ring_sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            let _ = POLICIES.try_with(|p| p.borrow_mut().remove(&k));
        }
    }
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn").field("id", &self.id).finish()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for TlsConn {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for TlsConn {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

impl Ssl for TlsConn {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.digest.clone())
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().0.get_timing_digest()
    }
}

impl GetProxyDigest for TlsConn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TlsConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().0.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().0.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for TlsConn {}

impl crate::fast_h1::LeanIo for TlsConn {
    type Handed = TlsConn;

    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }

    fn hand(mut self, read: &[u8], _peer: SocketAddr, _local: Option<SocketAddr>) -> TlsConn {
        if !read.is_empty() {
            let mut prefix = bytes::BytesMut::with_capacity(read.len() + self.prefix.len());
            prefix.extend_from_slice(read);
            prefix.extend_from_slice(&self.prefix);
            self.prefix = prefix.freeze();
        }
        self
    }

    fn resume(
        handed: TlsConn,
    ) -> Result<TlsConn, Box<pingora_core::protocols::l4::stream::Stream>> {
        Ok(handed)
    }
}
