//! The HTML injector: puts the analytics `<script>` tag before `</body>` while the page
//! streams through, plus the page-level rules that go with it (the tag itself, and the
//! page's Content-Security-Policy so the script may run).
//!
//! The closing tag may be split across chunks, so up to five bytes are held back between
//! chunks; once the tag is placed every later chunk passes through untouched. A page with
//! no `</body>` gets the tag at its end (browsers run it there too).

use bytes::Bytes;

const NEEDLE: &[u8] = b"</body";

/// Streams one HTML body, inserting `tag` once.
#[derive(Debug)]
pub struct Injector {
    tag: Vec<u8>,
    carry: Vec<u8>,
    done: bool,
}

impl Injector {
    pub fn new(tag: Vec<u8>) -> Injector {
        Injector {
            tag,
            carry: Vec::with_capacity(NEEDLE.len()),
            done: false,
        }
    }

    /// Bytes the injection adds to the body (for a corrected `Content-Length`).
    pub fn added(&self) -> usize {
        self.tag.len()
    }

    /// Takes the next chunk of the page and returns what can be sent now.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.done {
            return chunk;
        }
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(&chunk);
        if let Some(i) = find_ci(&data, NEEDLE) {
            let mut out = Vec::with_capacity(data.len() + self.tag.len());
            out.extend_from_slice(&data[..i]);
            out.extend_from_slice(&self.tag);
            out.extend_from_slice(&data[i..]);
            self.done = true;
            return out.into();
        }
        // Keep a tail that could be the start of `</body`.
        let keep = partial_suffix(&data);
        self.carry = data.split_off(data.len() - keep);
        data.into()
    }

    /// The end of the page: what was held back, and the tag if it was never placed.
    pub fn finish(&mut self) -> Bytes {
        if self.done {
            return Bytes::new();
        }
        self.done = true;
        let mut out = std::mem::take(&mut self.carry);
        out.extend_from_slice(&self.tag);
        out.into()
    }

    /// Injects into a whole body at once.
    pub fn whole(&mut self, body: &[u8]) -> Vec<u8> {
        let mut out = self.feed(Bytes::copy_from_slice(body)).to_vec();
        out.extend_from_slice(&self.finish());
        out
    }
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// The length of the longest suffix of `data` that is a proper prefix of the needle.
fn partial_suffix(data: &[u8]) -> usize {
    (1..NEEDLE.len())
        .rev()
        .find(|&n| n <= data.len() && data[data.len() - n..].eq_ignore_ascii_case(&NEEDLE[..n]))
        .unwrap_or(0)
}

/// What a page's Content-Security-Policy means for the injected script.
#[derive(Debug, Default, PartialEq)]
pub struct CspFit {
    /// A nonce the page already allows scripts with: put it on the tag.
    pub nonce: Option<String>,
    /// The header value to send instead (the script's hash or `'self'` added).
    pub rewritten: Option<String>,
    /// The tag must carry `integrity` (the policy now allows it by hash).
    pub integrity: bool,
}

/// Reads one Content-Security-Policy value and says how the script can be allowed.
pub fn fit_csp(policy: &str, script_hash: &str) -> CspFit {
    // (directive, sources) in the order written.
    let mut dirs: Vec<(String, Vec<String>)> = policy
        .split(';')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            let mut it = d.split_whitespace();
            let name = it.next().unwrap_or_default().to_string();
            (name, it.map(str::to_string).collect())
        })
        .collect();
    let find = |dirs: &[(String, Vec<String>)], names: &[&str]| {
        names
            .iter()
            .find_map(|n| dirs.iter().position(|(d, _)| d.eq_ignore_ascii_case(n)))
    };
    let allows_self = |s: &[String]| {
        s.iter()
            .any(|t| t.eq_ignore_ascii_case("'self'") || t == "*")
    };
    let mut fit = CspFit::default();
    let mut changed = false;
    // The beacon is a same-origin request: `connect-src` must allow it.
    if let Some(i) = find(&dirs, &["connect-src", "default-src"]) {
        if !allows_self(&dirs[i].1) {
            dirs[i].1.retain(|t| !t.eq_ignore_ascii_case("'none'"));
            dirs[i].1.push("'self'".into());
            changed = true;
        }
    }
    if let Some(i) = find(&dirs, &["script-src-elem", "script-src", "default-src"]) {
        let sources = &dirs[i].1;
        if let Some(n) = sources
            .iter()
            .find_map(|t| t.strip_prefix("'nonce-").and_then(|r| r.strip_suffix('\'')))
        {
            fit.nonce = Some(n.to_string());
        } else {
            let strict = sources
                .iter()
                .any(|t| t.eq_ignore_ascii_case("'strict-dynamic'"));
            if strict || !allows_self(sources) {
                dirs[i].1.retain(|t| !t.eq_ignore_ascii_case("'none'"));
                dirs[i].1.push(format!("'sha256-{script_hash}'"));
                fit.integrity = true;
                changed = true;
            }
        }
    }
    if changed {
        let out: Vec<String> = dirs
            .iter()
            .map(|(d, s)| {
                if s.is_empty() {
                    d.clone()
                } else {
                    format!("{d} {}", s.join(" "))
                }
            })
            .collect();
        fit.rewritten = Some(out.join("; "));
    }
    fit
}

/// The `<script>` tag for a page.
pub fn script_tag(
    token: &str,
    nonce: Option<&str>,
    integrity: Option<&str>,
    respect_dnt: bool,
) -> Vec<u8> {
    let mut t = String::with_capacity(160);
    t.push_str("<script src=\"/_dwaar/a.js\" data-dwaar data-t=\"");
    t.push_str(&attr(token));
    t.push('"');
    if !respect_dnt {
        t.push_str(" data-dnt=\"0\"");
    }
    if let Some(n) = nonce {
        t.push_str(" nonce=\"");
        t.push_str(&attr(n));
        t.push('"');
    }
    if let Some(h) = integrity {
        t.push_str(" integrity=\"sha256-");
        t.push_str(h);
        t.push('"');
    }
    t.push_str(" defer></script>");
    t.into_bytes()
}

fn attr(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '"' | '<' | '>' | '&' | '\'') && !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&str]) -> String {
        let mut inj = Injector::new(b"<S>".to_vec());
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&inj.feed(Bytes::copy_from_slice(c.as_bytes())));
        }
        out.extend_from_slice(&inj.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn injects_before_body_across_every_split() {
        let page = "<html><body><p>hi</p></BODY></html>";
        let want = "<html><body><p>hi</p><S></BODY></html>";
        for i in 0..page.len() {
            for j in i..page.len() {
                assert_eq!(run(&[&page[..i], &page[i..j], &page[j..]]), want, "{i} {j}");
            }
        }
    }

    #[test]
    fn once_only_and_appended_without_body() {
        assert_eq!(run(&["a</body>b</body>"]), "a<S></body>b</body>");
        assert_eq!(run(&["<p>no body", " end</bod"]), "<p>no body end</bod<S>");
        assert_eq!(run(&[]), "<S>");
    }

    #[test]
    fn csp_nonce_hash_and_connect() {
        assert_eq!(fit_csp("default-src 'self'", "H"), CspFit::default());
        let n = fit_csp("script-src 'nonce-abc123' 'strict-dynamic'", "H");
        assert_eq!(n.nonce.as_deref(), Some("abc123"));
        assert!(n.rewritten.is_none());
        let h = fit_csp("script-src https://cdn.example; img-src *", "H");
        assert!(h.integrity);
        assert_eq!(
            h.rewritten.as_deref(),
            Some("script-src https://cdn.example 'sha256-H'; img-src *")
        );
        let c = fit_csp("default-src 'none'", "H");
        assert_eq!(c.rewritten.as_deref(), Some("default-src 'self'"));
        assert!(!c.integrity);
        let c = fit_csp("default-src 'none'; script-src 'none'", "H");
        assert_eq!(
            c.rewritten.as_deref(),
            Some("default-src 'self'; script-src 'sha256-H'")
        );
        let c = fit_csp("script-src 'self'; connect-src https://api.example", "H");
        assert_eq!(
            c.rewritten.as_deref(),
            Some("script-src 'self'; connect-src https://api.example 'self'")
        );
    }

    #[test]
    fn tag_attributes_are_escaped() {
        let t = String::from_utf8(script_tag("1.a\"b", Some("n<"), Some("HASH"), false)).unwrap();
        assert_eq!(
            t,
            "<script src=\"/_dwaar/a.js\" data-dwaar data-t=\"1.ab\" data-dnt=\"0\" nonce=\"n\" integrity=\"sha256-HASH\" defer></script>"
        );
    }
}
