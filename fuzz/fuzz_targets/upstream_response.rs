//! An upstream's response head: `httparse`, then how Dwaar frames the body and whether
//! it keeps the connection. Several or malformed `Content-Length`s and codings other
//! than one `chunked` must never be given a framing.
#![no_main]
use dwaar_core::http1::{upstream_framing, upstream_keepalive, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; dwaar_core::http1::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = resp.parse(data) else {
        return;
    };
    let status = resp.code.unwrap_or(0);
    for head_request in [false, true] {
        let framing = upstream_framing(&resp, status, head_request);
        let lengths = resp
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .count();
        if let Some(Framing::Length(_)) = framing {
            assert_eq!(lengths, 1, "a length chosen among several");
        }
    }
    let _ = upstream_keepalive(&resp);
});
