//! Who may use the admin API.
//!
//! - Clients on loopback or on the unix socket are trusted like the local user.
//! - Any other client needs `Authorization: Bearer <token>` (from `admin { token }` or
//!   `$DWAAR_ADMIN_TOKEN`), compared in constant time; without a configured token,
//!   remote access is refused outright.
//! - Browsers: a request carrying an `Origin` that is not the admin endpoint itself (or
//!   an `origins` entry) is refused, as is a `Host` that does not name the endpoint (DNS
//!   rebinding). Answers carry `Access-Control-Allow-Origin: null` and pre-flight
//!   `OPTIONS` gets 405.

use crate::http::{Request, Response};
use crate::listener::Peer;
use dwaar_config::model::AdminOptions;

/// The token for remote clients: the config's, else `$DWAAR_ADMIN_TOKEN`.
pub fn token(admin: &AdminOptions) -> Option<String> {
    admin.token.clone().or_else(|| {
        std::env::var("DWAAR_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    })
}

/// Equal-length-independent comparison whose time does not depend on where the
/// inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Host names under which the endpoint on `port` may be addressed.
fn local_authorities(port: u16) -> [String; 3] {
    [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ]
}

fn authority_of_origin(origin: &str) -> &str {
    origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/')
}

/// Allows the request or returns the refusal to send.
pub fn check(
    req: &Request,
    peer: Peer,
    local_port: Option<u16>,
    admin: &AdminOptions,
) -> Result<(), Response> {
    if req.method == "OPTIONS" {
        return Err(
            Response::error(405, "cross-origin requests are not supported")
                .with_header("Allow", "GET, HEAD, POST"),
        );
    }
    let remote = match peer {
        Peer::Unix => false,
        Peer::Tcp(addr) => !crate::listener::is_loopback(addr.ip()),
    };
    if remote {
        let Some(expected) = token(admin) else {
            return Err(Response::error(
                403,
                "remote admin access needs a token (admin { token ... } or DWAAR_ADMIN_TOKEN)",
            ));
        };
        let given = req
            .header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => {}
            _ => {
                return Err(Response::error(401, "missing or wrong admin token")
                    .with_header("WWW-Authenticate", "Bearer realm=\"dwaar-admin\""))
            }
        }
    }
    if req
        .header("sec-fetch-site")
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
    {
        return Err(Response::error(403, "cross-site request refused"));
    }
    if req.header_count("host") > 1 {
        return Err(Response::error(400, "duplicate Host header"));
    }
    let configured = |authority: &str| {
        admin
            .origins
            .iter()
            .any(|o| authority_of_origin(o).eq_ignore_ascii_case(authority))
    };
    let local = |authority: &str| {
        local_port.is_some_and(|p| {
            local_authorities(p)
                .iter()
                .any(|l| l.eq_ignore_ascii_case(authority))
        })
    };
    // A local client must name the endpoint itself: a page on another site whose DNS
    // name was rebound to 127.0.0.1 sends its own name. (A remote client proved itself
    // with the token, and its Host is whatever name it reached us by.)
    if !remote && local_port.is_some() {
        let host = req.header("host").unwrap_or("");
        if !local(host) && !configured(host) {
            return Err(Response::error(
                403,
                &format!("host '{host}' is not allowed for the admin API"),
            ));
        }
    }
    if let Some(origin) = req.header("origin") {
        let listed = admin.origins.iter().any(|o| o.eq_ignore_ascii_case(origin));
        let ok = origin != "null" && (listed || local(authority_of_origin(origin)));
        if !ok {
            return Err(Response::error(
                403,
                &format!("origin '{origin}' is not allowed for the admin API"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            path: "/load".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    fn remote() -> Peer {
        Peer::Tcp("10.1.2.3:5555".parse().expect("addr"))
    }

    fn local() -> Peer {
        Peer::Tcp("127.0.0.1:5555".parse().expect("addr"))
    }

    fn with_token(t: Option<&str>) -> AdminOptions {
        AdminOptions {
            listen: Some("0.0.0.0:2019".into()),
            token: t.map(str::to_string),
            origins: vec!["https://ops.example.com".into()],
        }
    }

    fn status(r: Result<(), Response>) -> u16 {
        r.err().map_or(200, |e| e.status)
    }

    #[test]
    fn remote_clients_need_the_token() {
        let host = [("Host", "proxy.example.com:2019")];
        // No token configured: remote access is refused outright.
        assert_eq!(
            status(check(&req(&host), remote(), Some(2019), &with_token(None))),
            403
        );
        let opts = with_token(Some("0123456789abcdef-secret"));
        assert_eq!(status(check(&req(&host), remote(), Some(2019), &opts)), 401);
        let wrong = [
            ("Host", "proxy.example.com:2019"),
            ("Authorization", "Bearer 0123456789abcdef-secreX"),
        ];
        assert_eq!(
            status(check(&req(&wrong), remote(), Some(2019), &opts)),
            401
        );
        let right = [
            ("Host", "proxy.example.com:2019"),
            ("Authorization", "Bearer 0123456789abcdef-secret"),
        ];
        assert_eq!(
            status(check(&req(&right), remote(), Some(2019), &opts)),
            200
        );
        // Loopback and the unix socket need no token.
        assert_eq!(
            status(check(
                &req(&[("Host", "localhost:2019")]),
                local(),
                Some(2019),
                &opts
            )),
            200
        );
        assert_eq!(status(check(&req(&[]), Peer::Unix, None, &opts)), 200);
    }

    #[test]
    fn browsers_are_held_to_their_origin() {
        let opts = with_token(None);
        let ok = |h: &[(&str, &str)]| status(check(&req(h), local(), Some(2019), &opts));
        assert_eq!(ok(&[("Host", "127.0.0.1:2019")]), 200);
        assert_eq!(ok(&[("Host", "[::1]:2019")]), 200);
        assert_eq!(ok(&[("Host", "rebound.attacker.example:2019")]), 403);
        assert_eq!(
            ok(&[
                ("Host", "localhost:2019"),
                ("Origin", "https://attacker.example")
            ]),
            403
        );
        assert_eq!(
            ok(&[
                ("Host", "localhost:2019"),
                ("Origin", "https://ops.example.com")
            ]),
            200
        );
        assert_eq!(
            ok(&[("Host", "localhost:2019"), ("Sec-Fetch-Site", "cross-site")]),
            403
        );
        assert_eq!(
            ok(&[("Host", "localhost:2019"), ("Host", "localhost:2019")]),
            400
        );
    }

    #[test]
    fn compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
