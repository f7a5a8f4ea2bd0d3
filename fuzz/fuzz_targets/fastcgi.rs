//! What a FastCGI responder sends back: records (header, content, padding) and the CGI
//! response head inside the STDOUT stream, read with the functions the FastCGI client
//! uses.
#![no_main]
use dwaar_core::fastcgi::{head_end, parse_cgi_head, proto};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut stdout = Vec::new();
    while rest.len() >= 8 {
        let mut h = [0u8; 8];
        h.copy_from_slice(&rest[..8]);
        let Some(hdr) = proto::parse_header(&h) else {
            break;
        };
        let total = hdr.content_len + hdr.padding;
        if rest.len() < 8 + total {
            break;
        }
        let content = &rest[8..8 + hdr.content_len];
        if hdr.kind == proto::STDOUT {
            stdout.extend_from_slice(content);
        }
        rest = &rest[8 + total..];
    }
    let head = match head_end(&stdout) {
        Some((end, body_start)) => {
            assert!(end <= body_start && body_start <= stdout.len());
            &stdout[..end]
        }
        None => &stdout[..],
    };
    if let Ok((status, fields, _)) = parse_cgi_head(head) {
        assert!((100..1000).contains(&status));
        for (name, value) in fields {
            assert!(!name.is_empty());
            assert!(!value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)));
        }
    }
    // Anything at all as a head, too.
    let _ = parse_cgi_head(data);
});
