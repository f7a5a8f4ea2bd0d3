//! The analytics beacon: a JSON body any browser (or anyone) may POST.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ct in ["text/plain", "application/json; charset=utf-8"] {
        if let Ok(b) =
            dwaar_analytics::beacon::parse(Some(ct), Some("a.example"), "a.example", data)
        {
            assert!(!b.token.is_empty() && b.token.len() <= 100);
            assert!(b.path.len() <= 300 && b.referrer.len() <= 300);
        }
    }
});
