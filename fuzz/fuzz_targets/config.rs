//! The Dwaarfile lexer, parser (with its nesting limit) and compiler on arbitrary text,
//! and the formatter against them: formatting never changes what a config means
//! (`fmt` then load gives the same model, or the same failure), and formatting twice
//! changes nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn load(text: &str) -> Option<dwaar_config::model::Config> {
    dwaar_config::load_str("Dwaarfile", None, text, &|_| None)
        .ok()
        .map(|l| l.config)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let model = load(text);
    let Ok(formatted) = dwaar_config::fmt::format(text) else {
        return;
    };
    assert_eq!(
        load(&formatted),
        model,
        "formatting changed the model:\n{text}\n---\n{formatted}"
    );
    let again = dwaar_config::fmt::format(&formatted).unwrap_or_default();
    assert_eq!(again, formatted, "formatting is not idempotent");
});
