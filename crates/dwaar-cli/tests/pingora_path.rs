// The request-path suites again, with the lean HTTP/1 fast path switched off, so every
// behaviour is checked through both front-ends. `dwaar-testkit` starts dwaar with
// `DWAAR_FAST_PATH=0` when the test binary's name contains `pingora_path`.

// Each included suite declares its own `mod common;`.
#![allow(clippy::duplicate_mod)]

mod handlers {
    include!("handlers.rs");
}
mod proxy {
    include!("proxy.rs");
}
mod dynamic_upstreams {
    include!("dynamic_upstreams.rs");
}
mod logs {
    include!("logs.rs");
}
mod files {
    include!("files.rs");
}
mod hardening {
    include!("hardening.rs");
}
mod security {
    include!("security.rs");
}
mod analytics {
    include!("analytics.rs");
}
mod encode {
    include!("encode.rs");
}
mod cache {
    include!("cache.rs");
}
