//! The HTTP/1 request head reader every HTTP/1 connection goes through: `httparse`,
//! then `FastRequest` (byte ranges into the head) and the framing rules. Differential:
//! what `FastRequest` reports is exactly what `httparse` parsed, and an accepted head
//! holds nothing RFC 9112 forbids (controls in values, whitespace in the target).
#![no_main]
use dwaar_core::fast_h1::request::FastRequest;
use dwaar_core::request::HttpRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; dwaar_core::http1::MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = parsed.parse(data) else {
        return;
    };
    let head = bytes::Bytes::copy_from_slice(&data[..len]);
    // Parse again over the copy, as the front-end does over its frozen buffer.
    let mut headers = [httparse::EMPTY_HEADER; dwaar_core::http1::MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(&head) else {
        panic!("the same bytes parsed differently");
    };
    let Some(req) = FastRequest::from_parsed(head.clone(), &parsed) else {
        return;
    };
    assert_eq!(Some(req.method()), parsed.method);
    let target = parsed.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    assert_eq!(req.path(), path);
    assert_eq!(req.query(), query);
    assert!(
        !target.bytes().any(|b| b <= b' ' || b == 0x7f),
        "{target:?}"
    );
    assert_eq!(req.headers.len(), parsed.headers.len());
    for (h, p) in req.headers.iter().zip(parsed.headers.iter()) {
        assert_eq!(req.name_bytes(h), p.name.as_bytes());
        assert_eq!(req.value_bytes(h), p.value);
        assert!(!p.value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
    }
    // The framing decision is total: it answers or lets the request through.
    let _ = dwaar_core::pipeline::framing_check(&req, req.header_count("content-length"));
    let _ = req.header_bytes();
});
