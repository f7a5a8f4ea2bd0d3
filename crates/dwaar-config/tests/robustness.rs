//! Property tests: no input, however malformed, panics the lexer, parser or validator,
//! and formatting is idempotent.

use proptest::prelude::*;

fn load(text: &str) {
    let _ = dwaar_config::load_str("Dwaarfile", None, text, &|_| None);
}

const WORDS: &[&str] = &[
    "{",
    "}",
    "{",
    "}",
    "\n",
    "\n",
    "\n",
    " ",
    "\t",
    "import",
    "(snip)",
    "@m",
    "*",
    "/api/*",
    ":8080",
    "http://a.com",
    "respond",
    "reverse_proxy",
    "handle",
    "route",
    "header",
    "-Server",
    "+X",
    "redir",
    "rewrite",
    "uri",
    "strip_prefix",
    "map",
    "vars",
    "error",
    "abort",
    "not",
    "path",
    "method",
    "GET",
    "\"q s\"",
    "`b`",
    "<<EOF\nx\nEOF",
    "{args[0]}",
    "{args[:]}",
    "{$HOME}",
    "{host}",
    "#c",
    "\\\n",
    "lb_policy",
    "to",
    "transport",
    "http",
    "health_uri",
    "1s",
    "10MB",
    "404",
    "handle_errors",
    "bind",
    "request_body",
    "max_size",
    "order",
    "before",
    "servers",
    "\"",
    "`",
    "<<",
    "(x)",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        load(&text);
        let _ = dwaar_config::fmt::format(&text);
    }

    #[test]
    fn token_soup_never_panics(idx in proptest::collection::vec(0..WORDS.len(), 0..80)) {
        let text: String = idx.iter().map(|&i| WORDS[i]).collect::<Vec<_>>().join(" ");
        load(&text);
        if let Ok(once) = dwaar_config::fmt::format(&text) {
            let twice = dwaar_config::fmt::format(&once);
            prop_assert_eq!(Some(once), twice.ok());
        }
    }
}
