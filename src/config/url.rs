//! Server URLs: checked once when the client is built, redacted wherever
//! they are shown.

/// The URL with its user info, query and fragment replaced, for logs,
/// errors and `Debug`: tokens and passwords often travel there. An `@`
/// past the host (a password holding `/`, `?` or `#`, or an `@` in the
/// path or query) leaves no telling where a secret ends: then nothing past
/// the scheme is shown. A URL without `://` is shown as given, minus the
/// same parts.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let shown = if tail.contains('@') {
        "<redacted>".to_owned()
    } else {
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        match tail.find(['?', '#']) {
            Some(i) => format!("{host}{}<redacted>", &tail[..=i]),
            None => format!("{host}{tail}"),
        }
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{shown}"),
        None => shown,
    }
}

/// A checked server URL: the scheme in lower case (`WS://` and `Wss://`
/// are accepted), a host, a port in 1..=65535 if one is given. The rest is
/// kept as given. Errors name the URL redacted, as given.
pub(crate) fn check_url(url: &str) -> Result<String, String> {
    let shown = redact_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("url {shown} must start with ws:// or wss://"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "ws" && scheme != "wss" {
        return Err(format!("url {shown} must start with ws:// or wss://"));
    }
    let normalised = format!("{scheme}://{rest}");
    let uri = normalised
        .parse::<tungstenite::http::Uri>()
        .map_err(|e| format!("url {shown} is not a valid URL: {e}"))?;
    let Some(authority) = uri.authority() else {
        return Err(format!("url {shown} has no host"));
    };
    let hostport = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, hp)| hp);
    // `[v6]:port`, `host:port`, or no port. (http's own parser reads a
    // port over 65535 as "no port", which would dial port 80.)
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, after)) => (h, after.strip_prefix(':')),
            None => (hostport, None),
        },
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    if host.is_empty() {
        return Err(format!("url {shown} has no host"));
    }
    if let Some(p) = port
        && !p
            .parse::<u32>()
            .is_ok_and(|n| (1..=u32::from(u16::MAX)).contains(&n))
    {
        return Err(format!("url {shown}: the port must be 1 to 65535"));
    }
    Ok(normalised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_query_in_logs() {
        assert_eq!(
            redact_url("wss://u:p@h.example:8443/ws?token=abc"),
            "wss://h.example:8443/ws?<redacted>"
        );
        assert_eq!(redact_url("ws://127.0.0.1:80/a"), "ws://127.0.0.1:80/a");
    }

    #[test]
    fn a_password_holding_a_delimiter_is_never_shown() {
        for url in [
            "ws://alice:pa#ss-W0rd@example.com/ws",
            "ws://alice:pa/ss-W0rd@example.com/ws",
            "ws://alice:pa?ss-W0rd@example.com/ws",
            "ws://alice:1234/ss-W0rd@example.com/ws",
            "alice:pa/ss-W0rd@example.com/ws",
        ] {
            let shown = redact_url(url);
            assert!(
                !shown.contains("alice") && !shown.contains("W0rd"),
                "{url}: {shown}"
            );
            // Refused (not a port) or taken as host `alice`: either way not shown.
            if let Err(e) = check_url(url) {
                assert!(!e.contains("alice") && !e.contains("W0rd"), "{url}: {e}");
            }
        }
        // An @ in a query: the host goes too (no telling it from a password).
        assert_eq!(
            redact_url("wss://h.example/ws?mail=a@b.example"),
            "wss://<redacted>"
        );
        // A fragment is redacted like a query.
        assert_eq!(redact_url("ws://h/ws#token=x"), "ws://h/ws#<redacted>");
    }

    #[test]
    fn urls_without_a_scheme_are_shown_as_given() {
        assert_eq!(redact_url("127.0.0.1:9003"), "127.0.0.1:9003");
        assert_eq!(redact_url("ws:/x"), "ws:/x");
        assert_eq!(redact_url("u:p@h/ws?t=s3cret"), "h/ws?<redacted>");
    }

    #[test]
    fn urls_are_checked_once_with_any_scheme_case_and_a_real_port() {
        assert_eq!(
            check_url("WS://127.0.0.1:9/a").unwrap(),
            "ws://127.0.0.1:9/a"
        );
        assert_eq!(check_url("Wss://h.example").unwrap(), "wss://h.example");
        assert_eq!(check_url("ws://[::1]:65535/").unwrap(), "ws://[::1]:65535/");
        assert_eq!(check_url("ws://h:1/?t=x").unwrap(), "ws://h:1/?t=x");
        let refused = |url: &str, shown: &str, why: &str| {
            let e = check_url(url).unwrap_err();
            assert!(e.starts_with(&format!("url {shown}")), "{url}: {e}");
            assert!(e.contains(why), "{url}: {e}");
        };
        refused("ws://127.0.0.1:99999", "ws://127.0.0.1:99999", "1 to 65535");
        refused("ws://127.0.0.1:0/", "ws://127.0.0.1:0/", "1 to 65535");
        refused("ws://h:/", "ws://h:/", "1 to 65535");
        refused("ws://[::1]:70000", "ws://[::1]:70000", "1 to 65535");
        refused("127.0.0.1:9003", "127.0.0.1:9003 ", "ws://");
        refused("ws:/x", "ws:/x ", "ws://");
        refused("http://h", "http://h ", "ws://");
        refused("ws://", "ws:// ", "");
        refused("ws://:80/", "ws://:80/ ", "no host");
        refused(
            "ws://u:p@h:99999/?t=s3cret",
            "ws://h:99999/?<redacted>",
            "1 to 65535",
        );
        assert!(
            !check_url("ws://u:p@h:99999/?t=s3cret")
                .unwrap_err()
                .contains("s3cret")
        );
    }
}
