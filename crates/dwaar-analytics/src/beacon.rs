//! `Beacon`: what the page script reports, and the checks the collect endpoint makes
//! before counting it (size, content type, origin, token).

use compact_str::CompactString;

/// Largest beacon body accepted, in bytes.
pub const MAX_BODY: usize = 2048;

/// A validated beacon payload.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Beacon {
    pub token: String,
    pub path: CompactString,
    pub referrer: CompactString,
    /// Viewport width in CSS pixels.
    pub width: u32,
    pub language: CompactString,
    /// Seconds the page was visible.
    pub seconds: Option<f64>,
    pub lcp: Option<f64>,
    pub cls: Option<f64>,
    pub inp: Option<f64>,
    /// A route change inside a single-page app (not a full page load).
    pub soft: bool,
}

#[derive(serde::Deserialize)]
struct Wire {
    t: String,
    #[serde(default)]
    p: String,
    #[serde(default)]
    r: String,
    #[serde(default)]
    w: f64,
    #[serde(default)]
    l: String,
    s: Option<f64>,
    lcp: Option<f64>,
    cls: Option<f64>,
    inp: Option<f64>,
    #[serde(default)]
    n: u8,
}

/// Why a beacon was refused, with the status the endpoint answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooLarge,
    ContentType,
    Origin,
    Malformed,
    Token,
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            Refused::TooLarge => 413,
            Refused::ContentType => 415,
            Refused::Origin | Refused::Token => 403,
            Refused::Malformed => 400,
        }
    }
}

fn short(s: &str, max: usize) -> CompactString {
    let mut i = s.len().min(max);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    CompactString::new(&s[..i])
}

/// A number the page may report, or `None` when absent or implausible.
fn bounded(v: Option<f64>, max: f64) -> Option<f64> {
    v.filter(|v| v.is_finite() && *v >= 0.0 && *v <= max)
}

/// Checks the request facts and parses the body. `origin_host` is the host of the
/// `Origin` header (or of `Referer` when a browser sent no `Origin`).
pub fn parse(
    content_type: Option<&str>,
    origin_host: Option<&str>,
    request_host: &str,
    body: &[u8],
) -> Result<Beacon, Refused> {
    if body.len() > MAX_BODY {
        return Err(Refused::TooLarge);
    }
    let ct = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if !matches!(ct.as_deref(), Some("text/plain") | Some("application/json")) {
        return Err(Refused::ContentType);
    }
    match origin_host {
        Some(o) if o.eq_ignore_ascii_case(request_host) => {}
        _ => return Err(Refused::Origin),
    }
    let w: Wire = serde_json::from_slice(body).map_err(|_| Refused::Malformed)?;
    if w.t.is_empty() || w.t.len() > 100 {
        return Err(Refused::Token);
    }
    Ok(Beacon {
        token: w.t,
        path: short(&w.p, 300),
        referrer: short(&w.r, 300),
        width: if w.w.is_finite() && w.w > 0.0 {
            w.w.min(100_000.0) as u32
        } else {
            0
        },
        language: short(w.l.trim(), 16),
        seconds: bounded(w.s, 86_400.0),
        lcp: bounded(w.lcp, 120_000.0),
        cls: bounded(w.cls, 100.0),
        inp: bounded(w.inp, 120_000.0),
        soft: w.n == 1,
    })
}

/// The host part of an `Origin` or URL (`https://a.example:8443/x` -> `a.example`).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = br#"{"t":"1.ab","p":"/x","r":"","w":1280,"l":"en-US","s":12.5,"lcp":900,"cls":0.01,"inp":null}"#;

    #[test]
    fn accepts_a_well_formed_beacon() {
        let b = parse(
            Some("text/plain;charset=UTF-8"),
            Some("a.test"),
            "a.test",
            OK,
        )
        .unwrap();
        assert_eq!(b.width, 1280);
        assert_eq!(b.lcp, Some(900.0));
        assert_eq!(b.inp, None);
        assert_eq!(b.language, "en-US");
    }

    #[test]
    fn refuses_what_it_must() {
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(
            parse(Some("text/plain"), Some("a.test"), "a.test", &big),
            Err(Refused::TooLarge)
        );
        assert_eq!(
            parse(Some("text/html"), Some("a.test"), "a.test", OK),
            Err(Refused::ContentType)
        );
        assert_eq!(
            parse(None, Some("a.test"), "a.test", OK),
            Err(Refused::ContentType)
        );
        assert_eq!(
            parse(Some("text/plain"), Some("evil.test"), "a.test", OK),
            Err(Refused::Origin)
        );
        assert_eq!(
            parse(Some("text/plain"), None, "a.test", OK),
            Err(Refused::Origin)
        );
        assert_eq!(
            parse(Some("text/plain"), Some("a.test"), "a.test", b"{"),
            Err(Refused::Malformed)
        );
        let huge = br#"{"t":"x","lcp":1e300,"cls":-1}"#;
        let b = parse(Some("application/json"), Some("a.test"), "a.test", huge).unwrap();
        assert_eq!((b.lcp, b.cls), (None, None));
    }

    #[test]
    fn hosts_from_urls() {
        assert_eq!(url_host("https://a.example:8443/x?y"), Some("a.example"));
        assert_eq!(url_host("http://[::1]:80/"), Some("::1"));
        assert_eq!(url_host("null"), None);
    }
}
