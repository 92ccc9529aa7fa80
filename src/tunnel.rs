//! Tunnels through HTTP CONNECT proxies ([`HttpProxy`]): which proxy
//! (explicit, or from the environment's `HTTPS_PROXY` / `HTTP_PROXY` /
//! `ALL_PROXY` and `NO_PROXY` when asked), and the tunnel handshake.
//! Parsing and selection are pure.

use std::fmt;
use std::io::{self, Read, Write};

/// An HTTP proxy reached with `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct HttpProxy {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// User and password for `Proxy-Authorization: Basic`.
    pub(crate) auth: Option<(String, String)>,
}

/// Never shows the credentials.
impl fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://")?;
        if self.auth.is_some() {
            write!(f, "<credentials>@")?;
        }
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl HttpProxy {
    /// `http://[user[:password]@]host[:port][/]`; the port defaults to 80.
    /// User and password may be percent-encoded.
    pub(crate) fn parse(url: &str) -> Result<HttpProxy, String> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy scheme {scheme:?} is not supported (only http:// CONNECT proxies)"
                ));
            }
            // `host:port` alone, as some environments set it.
            None => url,
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains(['/', '?', '#']) {
            return Err("a proxy URL has no path or query".into());
        }
        let (auth, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hp)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((percent_decode(user)?, percent_decode(pass)?)), hp)
            }
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return Err("the proxy URL has no host".into());
        }
        Ok(HttpProxy {
            host: host.to_owned(),
            port: port.unwrap_or(80),
            auth,
        })
    }

    /// The proxy the environment names for `target_host` (of a `ws://` or
    /// `wss://` URL), honouring `NO_PROXY`. `env` looks a variable up.
    pub(crate) fn from_env(
        tls: bool,
        target_host: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<HttpProxy>, String> {
        let var = |name: &str| {
            env(name)
                .or_else(|| env(&name.to_ascii_lowercase()))
                .filter(|v| !v.trim().is_empty())
        };
        let chosen = if tls {
            var("HTTPS_PROXY")
        } else {
            var("HTTP_PROXY")
        }
        .or_else(|| var("ALL_PROXY"));
        let Some(url) = chosen else {
            return Ok(None);
        };
        if var("NO_PROXY").is_some_and(|list| no_proxy_matches(&list, target_host)) {
            return Ok(None);
        }
        HttpProxy::parse(url.trim()).map(Some)
    }
}

/// `NO_PROXY`: comma-separated host names, domain suffixes (`.example.com`
/// or `example.com` both match subdomains), IP addresses, or `*`. A `:port`
/// on an entry is ignored. Case-insensitive.
pub(crate) fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    list.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let name = match split_host_port(entry) {
            Ok((h, _)) => h.to_ascii_lowercase(),
            Err(_) => entry.to_ascii_lowercase(),
        };
        let name = name.trim_start_matches("*.").trim_start_matches('.');
        !name.is_empty()
            && (host == name
                || host
                    .strip_suffix(name)
                    .is_some_and(|head| head.ends_with('.')))
    })
}

fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = || format!("{s:?}: the port is not a number");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed ["))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(p.parse().map_err(|_| bad_port())?))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("{s:?}: unexpected text after ]")),
        };
    }
    match s.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address.
        Some((h, _)) if h.contains(':') => Ok((s, None)),
        Some((h, p)) => Ok((h, Some(p.parse().map_err(|_| bad_port())?))),
        None => Ok((s, None)),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding in the proxy credentials")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "proxy credentials are not UTF-8".into())
}

/// Standard base64 with padding (for `Proxy-Authorization: Basic`).
pub(crate) fn base64(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How a CONNECT went wrong.
#[derive(Debug)]
pub(crate) enum TunnelError {
    Io(io::Error),
    /// The proxy answered with a non-2xx status.
    Status(u16, String),
    /// The answer was not HTTP.
    Garbled(String),
}

/// Ask the proxy on `stream` for a tunnel to `host:port`. The stream bounds
/// it (the connect path passes one that enforces the attempt's deadline on
/// every read and write). Reads the answer byte by byte so that nothing
/// after the proxy's header is taken from the tunnel.
pub(crate) fn connect_tunnel(
    stream: &mut (impl Read + Write),
    proxy: &HttpProxy,
    host: &str,
    port: u16,
) -> Result<(), TunnelError> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = &proxy.auth {
        let token = base64(format!("{user}:{pass}").as_bytes());
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).map_err(TunnelError::Io)?;
    const MAX_HEAD: usize = 16 * 1024;
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(TunnelError::Garbled(format!(
                "no end of the proxy's answer within {MAX_HEAD} bytes"
            )));
        }
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(TunnelError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the proxy closed the connection before answering CONNECT",
                )));
            }
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TunnelError::Io(e)),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next());
    let code: u16 = match (version, code.and_then(|c| c.parse().ok())) {
        (Some(v), Some(c)) if v.starts_with("HTTP/1.") => c,
        _ => {
            let shown: String = status_line.chars().take(80).collect();
            return Err(TunnelError::Garbled(format!(
                "the proxy did not answer in HTTP: {shown:?}"
            )));
        }
    };
    if (200..300).contains(&code) {
        Ok(())
    } else {
        let reason: String = reason.unwrap_or_default().chars().take(80).collect();
        Err(TunnelError::Status(code, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_and_without_credentials() {
        let p = HttpProxy::parse("http://proxy.lan:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port, p.auth), ("proxy.lan", 3128, None));
        let p = HttpProxy::parse("http://al%40ice:s3:cr3t@10.0.0.1/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 80));
        assert_eq!(p.auth, Some(("al@ice".into(), "s3:cr3t".into())));
        assert_eq!(format!("{p:?}"), "http://<credentials>@10.0.0.1:80");
        let p = HttpProxy::parse("[::1]:8080").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 8080));
        assert!(
            HttpProxy::parse("socks5://h:1")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(HttpProxy::parse("http://h:port").is_err());
        assert!(HttpProxy::parse("http://h:1/path").is_err());
        assert!(HttpProxy::parse("http://").is_err());
    }

    #[test]
    fn no_proxy_matches_hosts_suffixes_ips_and_star() {
        let list = "localhost, .internal.example,corp.example:443, 10.1.2.3,[::1]";
        for host in [
            "localhost",
            "a.internal.example",
            "internal.example",
            "x.corp.example",
            "CORP.example",
            "10.1.2.3",
            "[::1]",
        ] {
            assert!(no_proxy_matches(list, host), "{host}");
        }
        for host in [
            "example",
            "notcorp.example",
            "10.1.2.30",
            "internal.example.org",
        ] {
            assert!(!no_proxy_matches(list, host), "{host}");
        }
        assert!(no_proxy_matches("*", "anything"));
        assert!(!no_proxy_matches("", "anything"));
    }

    #[test]
    fn the_environment_is_read_by_scheme_with_no_proxy_and_lowercase_names() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = env(&[("HTTPS_PROXY", "http://s:1"), ("http_proxy", "http://p:2")]);
        assert_eq!(
            HttpProxy::from_env(true, "h", e).unwrap().unwrap().host,
            "s"
        );
        assert_eq!(
            HttpProxy::from_env(false, "h", e).unwrap().unwrap().host,
            "p"
        );
        let e = env(&[("ALL_PROXY", "http://a:3"), ("NO_PROXY", "h,.lan")]);
        assert_eq!(HttpProxy::from_env(true, "x", e).unwrap().unwrap().port, 3);
        assert_eq!(HttpProxy::from_env(true, "h", e).unwrap(), None);
        assert_eq!(HttpProxy::from_env(false, "srv.lan", e).unwrap(), None);
        assert_eq!(HttpProxy::from_env(true, "h", env(&[])).unwrap(), None);
        assert!(HttpProxy::from_env(true, "h", env(&[("HTTPS_PROXY", "ftp://x")])).is_err());
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"alice:s3cret"), "YWxpY2U6czNjcmV0");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }
}
