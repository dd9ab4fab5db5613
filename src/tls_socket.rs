//! A TLS connection on rustls' unbuffered API: the handshake, then one session shared by the
//! connection (which reads and writes through it) and its mailbox (whose flusher encrypts
//! broadcasts straight into the socket, corked, as it does for plain sockets).
//!
//! Records are read, decrypted and encrypted in buffers of the worker thread. A connection keeps
//! only what did not fit: the start of a record a read cut off, plaintext a small read could not
//! take, ciphertext the socket did not take; each is freed once used, so an idle connection holds
//! none. (rustls' buffered connection keeps a 4 KiB read buffer for the connection's life.)
//! Ciphertext waiting for the socket always goes out before anything encrypted after it, under
//! the session's lock, so whoever writes, records leave in the order they were numbered.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Ciphertext read from a socket at once.
const READ_CHUNK: usize = 64 * 1024;
/// Plaintext encrypted per write: what a connection whose socket is full keeps, at most.
const WRITE_CHUNK: usize = 64 * 1024;

thread_local! {
    /// Ciphertext read: the start of a record a previous read cut off, then the new bytes.
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A write's frames, gathered so they are sealed in as few records as possible.
    static PLAIN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A write's ciphertext.
    static SEALED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A socket and its TLS session.
pub struct TlsSocket {
    tcp: TcpStream,
    state: Mutex<State>,
}

struct State {
    conn: UnbufferedServerConnection,
    /// The start of a record a read cut off.
    partial: Vec<u8>,
    /// Decrypted, not yet taken by a read.
    plain: Vec<u8>,
    /// Encrypted, not yet taken by the socket.
    outgoing: Vec<u8>,
    /// The peer sent close_notify, or its socket closed: reads return end of file.
    read_closed: bool,
    /// Our close_notify is queued: nothing more is encrypted.
    write_closed: bool,
}

impl std::fmt::Debug for TlsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSocket").field("tcp", &self.tcp).finish_non_exhaustive()
    }
}

/// Where a session stands once its input is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stand {
    /// The handshake needs more from the peer.
    Handshaking,
    /// Application data may be sent.
    Open,
    /// The peer sent close_notify.
    PeerClosed,
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Runs the handshake on `tcp` (the caller bounds it in time).
pub async fn accept(mut tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsSocket> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let (mut input, mut out, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let driven = drive(&mut conn, &mut input, &mut out, &mut |p| plain.extend_from_slice(p));
        let (used, stand) = match driven {
            Ok(driven) => driven,
            Err(e) => {
                // Best effort: the alert tells the client why.
                alert(&mut conn, &mut out);
                let _ = tcp.try_write(&out);
                return Err(invalid(e));
            }
        };
        input.drain(..used);
        tcp.write_all(&out).await?;
        out.clear();
        match stand {
            Stand::Open => break,
            Stand::Handshaking => {
                input.reserve(4096);
                if tcp.read_buf(&mut input).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            Stand::PeerClosed => return Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
    input.shrink_to_fit();
    plain.shrink_to_fit();
    let state = State { conn, partial: input, plain, outgoing: Vec::new(), read_closed: false, write_closed: false };
    Ok(TlsSocket { tcp, state: Mutex::new(state) })
}

/// Processes the whole records in `input`: what the session must send is appended to `out`
/// (the caller sends it), application data is handed to `plain`. Returns the bytes used and
/// where the session stands.
fn drive(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    out: &mut Vec<u8>,
    plain: &mut dyn FnMut(&[u8]),
) -> Result<(usize, Stand), rustls::Error> {
    let (mut used, mut peer_closed) = (0, false);
    loop {
        let status = conn.process_tls_records(&mut input[used..]);
        let discard = status.discard;
        let stand = match status.state? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    used += record.discard;
                    plain(record.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut encode, out);
                None
            }
            // Sent by the caller, in order, before anything encrypted later.
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                None
            }
            // Reported once; the next call goes on from there.
            ConnectionState::PeerClosed => {
                peer_closed = true;
                None
            }
            ConnectionState::BlockedHandshake => Some(Stand::Handshaking),
            ConnectionState::WriteTraffic(_) => Some(Stand::Open),
            ConnectionState::Closed => Some(Stand::PeerClosed),
            // Early data is not enabled, so it cannot come.
            _ => return Err(rustls::Error::General("unexpected TLS state".into())),
        };
        used += discard;
        if let Some(stand) = stand {
            return Ok((used, if peer_closed { Stand::PeerClosed } else { stand }));
        }
    }
}

/// Appends a record the session wants sent to `out`.
fn encode_into(encode: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) {
    let start = out.len();
    loop {
        match encode.encode(&mut out[start..]) {
            Ok(n) => return out.truncate(start + n),
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.resize(start + required_size, 0);
            }
            Err(EncodeError::AlreadyEncoded) => return out.truncate(start),
        }
    }
}

/// After an error: the alert rustls queued for the peer, if any, appended to `out`.
fn alert(conn: &mut UnbufferedServerConnection, out: &mut Vec<u8>) {
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = conn.process_tls_records(&mut []).state {
        encode_into(&mut encode, out);
    }
}

/// Writes `out` until the socket blocks; the rest stays there. Frees it once empty.
fn send(tcp: &TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    while !out.is_empty() {
        match tcp.try_write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => drop(out.drain(..n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    *out = Vec::new();
    Ok(())
}

/// Copies `bufs` into `plain`, up to [`WRITE_CHUNK`] bytes.
fn gather(bufs: &[IoSlice<'_>], plain: &mut Vec<u8>) {
    plain.clear();
    for buf in bufs {
        let room = WRITE_CHUNK - plain.len();
        plain.extend_from_slice(&buf[..buf.len().min(room)]);
        if plain.len() == WRITE_CHUNK {
            break;
        }
    }
}

impl TlsSocket {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encrypts up to [`WRITE_CHUNK`] bytes of `bufs` and writes what the socket takes now; the
    /// rest of the ciphertext waits in the session ([`backlog`](Self::backlog)). Returns the
    /// plaintext bytes taken, or `WouldBlock` while earlier ciphertext still waits.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut guard = self.lock();
        let State { conn, outgoing, plain: unread, write_closed, .. } = &mut *guard;
        send(&self.tcp, outgoing)?;
        if !outgoing.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if *write_closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        PLAIN.with_borrow_mut(|plain| {
            gather(bufs, plain);
            if plain.is_empty() {
                return Ok(0);
            }
            SEALED.with_borrow_mut(|sealed| {
                // What the session owes the peer (a key update's answer) goes out first.
                drive(conn, &mut [], outgoing, &mut |p| unread.extend_from_slice(p)).map_err(invalid)?;
                let n = seal(conn, plain, sealed)?;
                if outgoing.is_empty() {
                    let mut rest = &sealed[..n];
                    while !rest.is_empty() {
                        match self.tcp.try_write(rest) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(k) => rest = &rest[k..],
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                    outgoing.extend_from_slice(rest);
                } else {
                    outgoing.extend_from_slice(&sealed[..n]);
                    send(&self.tcp, outgoing)?;
                }
                Ok(plain.len())
            })
        })
    }

    /// True when encrypted bytes wait for the socket: the connection's writer must finish them.
    pub fn backlog(&self) -> bool {
        !self.lock().outgoing.is_empty()
    }

    pub(crate) fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        loop {
            if !state.plain.is_empty() {
                let n = state.plain.len().min(buf.remaining());
                buf.put_slice(&state.plain[..n]);
                state.plain.drain(..n);
                if state.plain.is_empty() {
                    state.plain = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if state.read_closed {
                return Poll::Ready(Ok(()));
            }
            ready!(self.tcp.poll_read_ready(cx))?;
            // A WouldBlock clears the readiness, so the next poll waits for the reactor.
            if self.read_records(&mut state, buf)? {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// One read from the socket, its records processed; true when it gave plaintext or ended
    /// the stream, false when the socket had nothing or only handshake records came.
    fn read_records(&self, state: &mut State, buf: &mut ReadBuf<'_>) -> io::Result<bool> {
        INPUT.with_borrow_mut(|input| {
            let kept = state.partial.len();
            if input.len() < kept + READ_CHUNK {
                input.resize(kept + READ_CHUNK, 0);
            }
            input[..kept].copy_from_slice(&state.partial);
            let n = match self.tcp.try_read(&mut input[kept..kept + READ_CHUNK]) {
                Ok(0) => {
                    state.read_closed = true;
                    return Ok(true);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            let before = buf.filled().len();
            let State { conn, plain, outgoing, .. } = &mut *state;
            let mut take = |p: &[u8]| {
                let fits = p.len().min(buf.remaining());
                buf.put_slice(&p[..fits]);
                plain.extend_from_slice(&p[fits..]);
            };
            let driven = drive(conn, &mut input[..kept + n], outgoing, &mut take);
            let (used, stand) = driven.map_err(|e| {
                alert(conn, outgoing);
                let _ = send(&self.tcp, outgoing);
                invalid(e)
            })?;
            state.partial = if stand == Stand::PeerClosed { Vec::new() } else { input[used..kept + n].to_vec() };
            state.read_closed = stand == Stand::PeerClosed;
            send(&self.tcp, &mut state.outgoing)?;
            Ok(buf.filled().len() > before || !state.plain.is_empty() || state.read_closed)
        })
    }

    pub(crate) fn poll_write_vectored(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            match self.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(self.tcp.poll_write_ready(cx))?,
                r => return Poll::Ready(r),
            }
        }
    }

    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let mut state = self.lock();
                send(&self.tcp, &mut state.outgoing)?;
                if state.outgoing.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }

    /// Sends close_notify, then ends the socket's sending side.
    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let mut guard = self.lock();
            let State { conn, outgoing, plain, write_closed, .. } = &mut *guard;
            if !*write_closed {
                *write_closed = true;
                drive(conn, &mut [], outgoing, &mut |p| plain.extend_from_slice(p)).map_err(invalid)?;
                if let Ok(ConnectionState::WriteTraffic(mut traffic)) = conn.process_tls_records(&mut []).state {
                    let mut alert = [0; 64];
                    if let Ok(n) = traffic.queue_close_notify(&mut alert) {
                        outgoing.extend_from_slice(&alert[..n]);
                    }
                }
            }
        }
        ready!(self.poll_flush(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write))
    }
}

/// Seals `plain` into `sealed` (grown as needed); returns the ciphertext's length.
fn seal(conn: &mut UnbufferedServerConnection, plain: &[u8], sealed: &mut Vec<u8>) -> io::Result<usize> {
    let Ok(ConnectionState::WriteTraffic(mut traffic)) = conn.process_tls_records(&mut []).state else {
        return Err(io::Error::new(io::ErrorKind::NotConnected, "the TLS session cannot send"));
    };
    loop {
        match traffic.encrypt(plain, sealed) {
            Ok(n) => return Ok(n),
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                sealed.resize(required_size, 0);
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;

    use crate::duplex::Socket;

    /// A server config and the certificate a client must trust, made here.
    fn configs(version: &'static rustls::SupportedProtocolVersion) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// Bytes no two offsets of which repeat within a record.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// A real handshake on loopback with rustls' client, 200 KB each way (read in small pieces
    /// and written in one go), then idle: the session must hold no buffer at all.
    #[tokio::test]
    async fn after_traffic_both_ways_an_idle_session_keeps_no_buffer() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (server, client) = configs(version);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (done, hold) = tokio::sync::oneshot::channel::<()>();
            let peer = tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let connector = tokio_rustls::TlsConnector::from(client);
                let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
                tls.write_all(&pattern(200_000)).await.unwrap();
                let mut back = vec![0; 200_000];
                tls.read_exact(&mut back).await.unwrap();
                assert!(back == pattern(200_000), "what the server sealed arrives intact");
                let _ = hold.await;
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let mut socket = Socket::Tls(Arc::new(accept(tcp, server).await.unwrap()));
            let mut got = Vec::new();
            let mut piece = [0; 1000];
            while got.len() < 200_000 {
                let n = socket.read(&mut piece).await.unwrap();
                assert!(n > 0, "end of stream after {} bytes", got.len());
                got.extend_from_slice(&piece[..n]);
            }
            assert!(got == pattern(200_000), "{version:?}: what the client sent arrives intact");
            socket.write_all(&pattern(200_000)).await.unwrap();
            socket.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let Socket::Tls(tls) = &socket else { unreachable!() };
            let held = {
                let state = tls.lock();
                (state.partial.capacity(), state.plain.capacity(), state.outgoing.capacity())
            };
            assert_eq!(held, (0, 0, 0), "{version:?}: buffers an idle session holds");
            done.send(()).unwrap();
            peer.await.unwrap();
        }
    }
}
