//! URL → usable WebSocket: TCP connect with a timeout, TLS, the upgrade
//! handshake, all blocking and bounded by one deadline; then non-blocking.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::WebSocket;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;

use crate::Error;
use crate::config::{Config, redact_url};
use crate::tunnel::{HttpProxy, TunnelError, connect_tunnel};

pub(crate) type Ws = WebSocket<MaybeTlsStream<Stream>>;

/// The socket under tungstenite (and TLS). While a deadline is set (during
/// the proxy tunnel, TLS and the upgrade) every read and write is bounded by
/// the time left before it, so a peer that trickles its answer a byte at a
/// time cannot stretch an attempt past `connect_timeout`: a socket timeout
/// alone bounds each read, not the attempt. Once connected the deadline is
/// cleared and reads and writes go straight to the socket.
#[derive(Debug)]
pub(crate) struct Stream {
    tcp: TcpStream,
    deadline: Option<Instant>,
}

impl Stream {
    fn new(tcp: TcpStream, deadline: Instant) -> Self {
        Stream {
            tcp,
            deadline: Some(deadline),
        }
    }

    /// Before a read or write under a deadline: bound the socket by the
    /// time left, or fail once it has passed.
    fn arm(&self, write: bool) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(deadline_passed());
        }
        // A zero timeout means "none" to the OS: never pass it (`left` is not zero).
        let left = Some(left.max(Duration::from_micros(1)));
        if write {
            self.tcp.set_write_timeout(left)
        } else {
            self.tcp.set_read_timeout(left)
        }
    }

    /// While a deadline is set the socket is blocking, so a would-block
    /// error means its timeout ran out: report that as such. (TLS code
    /// takes `WouldBlock` for a non-blocking socket, and one TLS library
    /// even panics on it during the handshake.)
    fn check<T>(&self, r: io::Result<T>) -> io::Result<T> {
        match r {
            Err(e) if self.deadline.is_some() && e.kind() == io::ErrorKind::WouldBlock => {
                Err(deadline_passed())
            }
            r => r,
        }
    }
}

fn deadline_passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out (connect_timeout)")
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.deadline.is_none() {
            return self.tcp.read(buf);
        }
        self.arm(false)?;
        let r = self.tcp.read(buf);
        self.check(r)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.deadline.is_none() {
            return self.tcp.write(buf);
        }
        self.arm(true)?;
        let r = self.tcp.write(buf);
        self.check(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Size at which tungstenite writes its buffer out without a flush.
const WRITE_BUFFER: usize = 64 * 1024;

/// The TCP socket under a WebSocket, TLS or not.
pub(crate) fn tcp(ws: &Ws) -> &TcpStream {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => &s.tcp,
        #[cfg(feature = "native-tls")]
        MaybeTlsStream::NativeTls(s) => &s.get_ref().tcp,
        #[cfg(feature = "rustls")]
        MaybeTlsStream::Rustls(s) => &s.sock.tcp,
        _ => unreachable!("longlink builds every stream variant it can create"),
    }
}

/// The stream under a WebSocket, to clear its deadline.
fn stream_mut(ws: &mut Ws) -> &mut Stream {
    match ws.get_mut() {
        MaybeTlsStream::Plain(s) => s,
        #[cfg(feature = "native-tls")]
        MaybeTlsStream::NativeTls(s) => s.get_mut(),
        #[cfg(feature = "rustls")]
        MaybeTlsStream::Rustls(s) => &mut s.sock,
        _ => unreachable!("longlink builds every stream variant it can create"),
    }
}

fn io_err(context: impl Into<String>, e: io::Error) -> Error {
    Error::Connect {
        context: context.into(),
        source: Box::new(e),
    }
}

/// Open one connection to endpoint `endpoint` (its URL computed by
/// `url_with` if set, and checked). Blocks until `deadline` at most.
pub(crate) fn connect(cfg: &Config, endpoint: usize, deadline: Instant) -> Result<Ws, Error> {
    let url = cfg.attempt_url(endpoint)?;
    let shown = redact_url(&url);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::InvalidConfig(format!("url {shown}: {e}")))?;
    let extra = cfg.header_fn.as_ref().map(|f| f()).unwrap_or_default();
    for (name, value) in cfg.headers.iter().chain(extra.iter()) {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::InvalidConfig(format!("header name {name:?} is not valid")))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| Error::InvalidConfig(format!("value of header {name} is not valid")))?;
        value.set_sensitive(true);
        request.headers_mut().append(name, value);
    }
    let uri = request.uri();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });

    // Through a proxy, TCP goes to the proxy, which opens the tunnel.
    let (dial_host, dial_port) = match &cfg.proxy {
        Some(p) => (p.host.as_str(), p.port),
        None => (host.as_str(), port),
    };
    let dialled = match &cfg.proxy {
        Some(p) => format!("proxy {}:{}", p.host, p.port),
        None => shown.clone(),
    };
    // DNS has no timeout in std; it is usually answered from a cache.
    let addrs = (dial_host, dial_port)
        .to_socket_addrs()
        .map_err(|e| io_err(format!("resolving {dial_host}"), e))?;
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = match stream {
        Some(s) => s,
        None => {
            let e = last
                .unwrap_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            return Err(io_err(format!("connecting to {dialled}"), e));
        }
    };
    stream
        .set_nodelay(true)
        .map_err(|e| io_err("configuring the socket", e))?;
    // From here on every read and write is bounded by what is left of `deadline`.
    let mut stream = Stream::new(stream, deadline);
    if let Some(proxy) = &cfg.proxy {
        tunnel(&mut stream, proxy, &host, port, &dialled)?;
    }

    let ws_config = WebSocketConfig::default()
        .read_buffer_size(cfg.read_buffer_size)
        .write_buffer_size(WRITE_BUFFER)
        // Bounded: we stop writing at the first WouldBlock, so the buffer holds
        // at most one batch threshold plus one message.
        .max_write_buffer_size(
            cfg.outbox_max_bytes
                .max(cfg.max_message_size)
                .saturating_add(WRITE_BUFFER + 1024),
        )
        .max_message_size(Some(cfg.max_message_size))
        .max_frame_size(Some(cfg.max_message_size));

    let timed_out = || io_err(format!("handshake with {shown}"), deadline_passed());
    let (mut ws, _response) = match handshake(cfg, tls, request, stream, ws_config)? {
        Ok(ok) => ok,
        // TLS libraries wrap the I/O error of a read cut at the deadline
        // in their own: say what happened instead.
        Err(HandshakeError::Failure(e))
            if Instant::now() >= deadline && !matches!(e, tungstenite::Error::Http(_)) =>
        {
            return Err(timed_out());
        }
        Err(HandshakeError::Failure(e)) => return Err(classify(e, &shown)),
        Err(HandshakeError::Interrupted(_)) => return Err(timed_out()),
    };
    stream_mut(&mut ws).deadline = None;
    let s = tcp(&ws);
    let finish = |s: &TcpStream| -> io::Result<()> {
        s.set_read_timeout(None)?;
        s.set_write_timeout(None)?;
        s.set_nonblocking(true)
    };
    finish(s).map_err(|e| io_err("configuring the socket", e))?;
    Ok(ws)
}

/// `CONNECT host:port` through the proxy on `stream`.
fn tunnel(
    stream: &mut Stream,
    proxy: &HttpProxy,
    host: &str,
    port: u16,
    dialled: &str,
) -> Result<(), Error> {
    match connect_tunnel(stream, proxy, host, port) {
        Ok(()) => Ok(()),
        Err(TunnelError::Status(status, reason)) => Err(Error::ProxyRejected { status, reason }),
        Err(TunnelError::Io(e)) => Err(io_err(format!("opening a tunnel through {dialled}"), e)),
        Err(TunnelError::Garbled(why)) => Err(io_err(
            format!("opening a tunnel through {dialled}"),
            io::Error::new(io::ErrorKind::InvalidData, why),
        )),
    }
}

type Handshake = Result<
    (Ws, tungstenite::handshake::client::Response),
    HandshakeError<tungstenite::handshake::client::ClientHandshake<MaybeTlsStream<Stream>>>,
>;

/// The upgrade: through TLS for `wss://`, or, without TLS support built
/// in, plain only (`wss://` refused).
fn handshake(
    cfg: &Config,
    tls: bool,
    request: tungstenite::handshake::client::Request,
    stream: Stream,
    ws_config: WebSocketConfig,
) -> Result<Handshake, Error> {
    #[cfg(any(feature = "native-tls", feature = "rustls"))]
    {
        let shown = redact_url(&request.uri().to_string());
        let connector = tls_connector(cfg, &shown, tls)?;
        Ok(tungstenite::client_tls_with_config(
            request,
            stream,
            Some(ws_config),
            connector,
        ))
    }
    #[cfg(not(any(feature = "native-tls", feature = "rustls")))]
    {
        if tls || cfg.accept_invalid_certs {
            return Err(Error::InvalidConfig(
                "wss:// needs the native-tls or rustls feature".into(),
            ));
        }
        Ok(tungstenite::client::client_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(ws_config),
        ))
    }
}

#[cfg(feature = "native-tls")]
fn tls_connector(
    cfg: &Config,
    shown: &str,
    tls: bool,
) -> Result<Option<tungstenite::Connector>, Error> {
    if !tls {
        return Ok(Some(tungstenite::Connector::Plain));
    }
    let mut b = native_tls::TlsConnector::builder();
    for root in &cfg.tls_roots {
        b.add_root_certificate(root.clone());
    }
    if cfg.accept_invalid_certs {
        log::warn!(
            "longlink: certificate and host name checks are OFF for {shown} (danger_accept_invalid_certificates)"
        );
        b.danger_accept_invalid_certs(true)
            .danger_accept_invalid_hostnames(true);
    }
    let c = b.build().map_err(|e| Error::Tls(Box::new(e)))?;
    Ok(Some(tungstenite::Connector::NativeTls(c)))
}

#[cfg(all(feature = "rustls", not(feature = "native-tls")))]
fn tls_connector(
    cfg: &Config,
    _shown: &str,
    _tls: bool,
) -> Result<Option<tungstenite::Connector>, Error> {
    if cfg.accept_invalid_certs {
        return Err(Error::InvalidConfig(
            "danger_accept_invalid_certificates needs the native-tls feature".into(),
        ));
    }
    Ok(None)
}

fn classify(e: tungstenite::Error, shown: &str) -> Error {
    use tungstenite::Error as E;
    match e {
        E::Http(resp) => Error::Rejected {
            status: resp.status().as_u16(),
        },
        E::Tls(t) => Error::Tls(Box::new(t)),
        E::Io(io) => io_err(format!("handshake with {shown}"), io),
        E::Url(u) => Error::InvalidConfig(format!("url {shown}: {u}")),
        other => Error::Connect {
            context: format!("handshake with {shown}"),
            source: Box::new(other),
        },
    }
}
