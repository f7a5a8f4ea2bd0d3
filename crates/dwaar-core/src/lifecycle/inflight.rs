//! In-flight request counting for graceful shutdown: a [`Guard`] per request.
//!
//! Each worker thread owns its counters (tasks never leave their current-thread runtime,
//! so increments are uncontended): requests started and requests finished. Shutdown
//! sums the difference; [`started_total`] tells the idle trimmer
//! ([`crate::server::footprint`]) whether any request came since it last looked.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One thread's requests: started and finished (each only ever grows, so a reader
/// sees activity even when every request that came has already ended).
#[derive(Default)]
struct Counts {
    started: AtomicUsize,
    finished: AtomicUsize,
}

thread_local! {
    static LOCAL: RefCell<Option<Arc<Counts>>> = const { RefCell::new(None) };
}

static ALL: Mutex<Vec<Arc<Counts>>> = Mutex::new(Vec::new());
static DRAINING: AtomicBool = AtomicBool::new(false);

/// When draining ends (the grace period's end), for `{http.time_until_shutdown}`.
static DEADLINE: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// The process is shutting down (until `deadline`): responses close their connections so
/// clients move on to the successor or a sibling instead of reusing a connection about
/// to go away.
pub fn start_draining(deadline: std::time::Instant) {
    if let Ok(mut d) = DEADLINE.lock() {
        *d = Some(deadline);
    }
    DRAINING.store(true, Ordering::Release);
}

/// How long until the process stops, once it is draining.
pub fn time_until_shutdown() -> Option<std::time::Duration> {
    if !draining() {
        return None;
    }
    let deadline = (*DEADLINE.lock().ok()?)?;
    Some(deadline.saturating_duration_since(std::time::Instant::now()))
}

/// Whether the process is shutting down (one relaxed load per request).
#[inline]
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Gives the calling thread its own counters (once per thread that serves requests).
pub fn register_thread() {
    let c = Arc::new(Counts::default());
    if let Ok(mut all) = ALL.lock() {
        all.push(c.clone());
    }
    LOCAL.with_borrow_mut(|l| *l = Some(c));
}

/// A request started; returns whether it was counted (false off worker threads).
fn enter() -> bool {
    LOCAL.with_borrow(|l| match l {
        Some(c) => {
            c.started.fetch_add(1, Ordering::Relaxed);
            true
        }
        None => false,
    })
}

/// A counted request finished.
fn exit() {
    LOCAL.with_borrow(|l| {
        if let Some(c) = l {
            c.finished.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Requests in flight across all worker threads.
pub fn total() -> usize {
    ALL.lock()
        .map(|all| {
            all.iter()
                .map(|c| {
                    // Finished first: a request that ends between the two loads is then
                    // still seen as started.
                    let finished = c.finished.load(Ordering::Relaxed);
                    c.started.load(Ordering::Relaxed).wrapping_sub(finished)
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Requests started since the process began, across all threads (it changes whenever a
/// request comes; its value means nothing else).
pub fn started_total() -> usize {
    ALL.lock()
        .map(|all| {
            all.iter().fold(0usize, |n, c| {
                n.wrapping_add(c.started.load(Ordering::Relaxed))
            })
        })
        .unwrap_or(0)
}

/// A request counted in its worker's in-flight requests until dropped (on every way
/// out, a panic's unwinding included).
#[derive(Debug)]
pub struct Guard(());

impl Guard {
    /// Counts a request that starts now; `None` off worker threads (nothing to count).
    pub fn enter() -> Option<Guard> {
        enter().then_some(Guard(()))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        exit();
    }
}
