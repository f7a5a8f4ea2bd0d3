//! Placeholder templates (`{http.request.uri.path}`, escapes, unknown keys): parsed once
//! at config time from text a config author wrote.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let t = dwaar_config::placeholder::Template::parse(text);
    assert_eq!(t.raw(), text);
    // A template without placeholders is its own literal text (escapes resolved).
    if !text.contains(['{', '}', '\\']) {
        assert_eq!(t.as_literal().unwrap_or(text), text);
    }
});
