//! Building a typical record and handing it to a logger allocates nothing.
//!
//! A counting global allocator is the one place a test needs `unsafe`.
#![allow(unsafe_code)]

use dwaar_config::model::{LogConfig, LogOutput};
use dwaar_log::{LogRegistry, RequestLog};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` above with the same layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn typical_record_allocates_nothing() {
    let registry = LogRegistry::default();
    // The output never writes anything, but records still cross the channel.
    let dir = std::env::temp_dir().join(format!("dwaar-noalloc-{}", std::process::id()));
    let logger = registry
        .logger(&LogConfig {
            output: LogOutput::File {
                path: dir.join("a.log").display().to_string(),
                roll_size: 0,
                roll_keep: 0,
                roll_keep_for_ms: 0,
                mode: 0o600,
            },
            ..LogConfig::default()
        })
        .expect("logger");
    // Header values as a parsed request holds them: already shared.
    let ua =
        http::HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0");
    let host = compact_str::CompactString::new("shop.example.com");
    let id = uuid::Uuid::now_v7();
    let mut allocations = Vec::new();
    for _ in 0..100 {
        COUNTING.store(true, Ordering::SeqCst);
        let before = ALLOCS.load(Ordering::SeqCst);
        let record = RequestLog {
            ts_ms: 1_795_986_600_123,
            request_id: Some(id),
            method: compact_str::CompactString::new("GET"),
            host: host.clone(),
            path: compact_str::CompactString::new("/api/v1/products/42"),
            query: compact_str::CompactString::new("page=2"),
            status: 200,
            duration_us: 1234,
            upstream_addr: Some(compact_str::CompactString::new("10.0.0.12:8080")),
            user_agent: Some(ua.clone()),
            ..RequestLog::default()
        };
        logger.log(record);
        allocations.push(ALLOCS.load(Ordering::SeqCst) - before);
        COUNTING.store(false, Ordering::SeqCst);
    }
    registry.flush_all(std::time::Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    // The writer thread allocates its buffer while counting may be on; the request
    // side must not: take the minimum over many rounds, and most rounds must be zero.
    let zero_rounds = allocations.iter().filter(|a| **a == 0).count();
    assert!(zero_rounds >= 90, "allocations per record: {allocations:?}");
}
