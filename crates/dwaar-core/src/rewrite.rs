//! `Rewrite`: a response body changed on its way to the client, by analytics injection
//! and/or `encode` compression, and [`begin`], the one place every front-end asks
//! whether a response needs one.
//!
//! The stages run in order on each chunk: decode the origin's coding (only when the
//! body must be edited), inject the analytics tag, encode (again in the origin's coding,
//! or in the one `encode` negotiated). Every stage streams; nothing waits for the end
//! of the body.

use crate::compress::{Decoder, Encoder};
use crate::context::RequestContext;
use crate::pipeline::ResponseHead;
use bytes::Bytes;
use dwaar_analytics::inject::Injector;

pub struct Rewrite {
    decoder: Option<Decoder>,
    injector: Option<Injector>,
    encoder: Option<Encoder>,
    /// The coding `encode` chose for this response (for the access log).
    pub encoded: Option<&'static str>,
}

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrite")
            .field("decode", &self.decoder.is_some())
            .field("inject", &self.injector.is_some())
            .field("encode", &self.encoder.is_some())
            .finish()
    }
}

impl Rewrite {
    /// Injection into a body in `coding` (decoded, then encoded the same way).
    pub fn inject(
        injector: Injector,
        coding: Option<crate::compress::Coding>,
    ) -> std::io::Result<Rewrite> {
        Ok(match coding {
            Some(c) => Rewrite {
                decoder: Some(Decoder::new(c)?),
                injector: Some(injector),
                encoder: Some(Encoder::new(c)?),
                encoded: None,
            },
            None => Rewrite {
                decoder: None,
                injector: Some(injector),
                encoder: None,
                encoded: None,
            },
        })
    }

    /// Compression only.
    pub fn encode(encoder: Encoder, name: &'static str) -> Rewrite {
        Rewrite {
            decoder: None,
            injector: None,
            encoder: Some(encoder),
            encoded: Some(name),
        }
    }

    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    pub fn set_encoder(&mut self, e: Encoder, name: &'static str) {
        self.encoder = Some(e);
        self.encoded = Some(name);
    }

    /// The next piece of the body to send for `chunk` (and the end of it when `end`).
    pub fn feed(&mut self, chunk: Option<Bytes>, end: bool) -> std::io::Result<Bytes> {
        let mut plain = match (chunk, self.decoder.as_mut()) {
            (Some(c), Some(d)) => Bytes::from(d.feed(&c)?),
            (Some(c), None) => c,
            (None, _) => Bytes::new(),
        };
        if let Some(inj) = self.injector.as_mut() {
            plain = inj.feed(plain);
            if end {
                let tail = inj.finish();
                if !tail.is_empty() {
                    let mut all = Vec::with_capacity(plain.len() + tail.len());
                    all.extend_from_slice(&plain);
                    all.extend_from_slice(&tail);
                    plain = all.into();
                }
            }
        }
        match self.encoder.as_mut() {
            None => Ok(plain),
            Some(e) => {
                let mut out = if plain.is_empty() {
                    Vec::new()
                } else {
                    e.feed(&plain)?
                };
                if end {
                    out.extend(e.finish()?);
                }
                Ok(out.into())
            }
        }
    }
}

/// At a response head: analytics injection, then `encode`. Edits the head as they
/// need and returns the body's rewrite, if any.
pub fn begin(
    ctx: &mut RequestContext,
    status: u16,
    head: &mut dyn ResponseHead,
) -> Option<Rewrite> {
    let analytics = ctx.site.as_ref().and_then(|s| s.analytics.clone());
    let encode = ctx.resp.encode.clone();
    let rw = begin_parts(
        analytics.as_deref(),
        ctx.resp.page.as_deref_mut(),
        encode.as_ref(),
        status,
        head,
    );
    ctx.log.encoded = rw.as_ref().and_then(|r| r.encoded);
    rw
}

/// [`begin`] with its inputs taken out of the context (a front-end that lent the
/// context elsewhere, like the FastCGI client).
pub fn begin_parts(
    analytics: Option<&crate::analytics::SiteAnalytics>,
    page: Option<&mut crate::analytics::PageFacts>,
    encode: Option<&crate::encode::Negotiated>,
    status: u16,
    head: &mut dyn ResponseHead,
) -> Option<Rewrite> {
    let mut rw = match (analytics, page) {
        (Some(a), Some(p)) => crate::analytics::begin_page(a, p, status, head),
        _ => None,
    };
    if let Some(n) = encode {
        if rw.as_ref().is_none_or(|r| !r.has_encoder()) {
            if let Some((enc, name)) = crate::encode::begin(n, status, head) {
                match rw.as_mut() {
                    Some(r) => r.set_encoder(enc, name),
                    None => rw = Some(Rewrite::encode(enc, name)),
                }
            }
        }
    }
    rw
}

/// For a reply Dwaar built (`respond`, files, errors): edits its head and rewrites its
/// body. A body in memory is rewritten at once (its length stays exact); a streamed one
/// keeps the rewrite in `r.rewrite` for the front-end, which sends it chunked.
pub fn reply(ctx: &mut RequestContext, r: &mut crate::pipeline::Reply) {
    if ctx.resp.page.is_none() && ctx.resp.encode.is_none() {
        return;
    }
    let mut headers = std::mem::take(&mut r.headers);
    // The length the front-end would send, for the size rules; it writes its own.
    ResponseHead::set(&mut headers, "content-length", &r.body_len().to_string());
    let rw = begin(ctx, r.status, &mut headers);
    ResponseHead::remove(&mut headers, "content-length");
    r.headers = headers;
    let Some(mut rw) = rw else { return };
    if r.stream.is_none() {
        match rw.feed(Some(std::mem::take(&mut r.body)), true) {
            Ok(b) => r.body = b,
            Err(_) => *r = crate::pipeline::Reply::status(500),
        }
    } else {
        r.rewrite = Some(Box::new(rw));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Coding;
    use std::io::Read;

    #[test]
    fn inject_then_compress_streams() {
        let mut rw = Rewrite::inject(Injector::new(b"<S>".to_vec()), None).unwrap();
        rw.set_encoder(Encoder::new(Coding::Gzip).unwrap(), "gzip");
        let mut wire = Vec::new();
        for part in ["<html><body>hi</bo", "dy></html>"] {
            let out = rw.feed(Some(Bytes::from(part)), false).unwrap();
            assert!(!out.is_empty(), "each chunk is flushed");
            wire.extend_from_slice(&out);
        }
        wire.extend_from_slice(&rw.feed(None, true).unwrap());
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, "<html><body>hi<S></body></html>");
    }
}
