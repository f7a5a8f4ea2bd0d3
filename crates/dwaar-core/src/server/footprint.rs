//! Giving back memory the process is not using: the code pages that only start-up used,
//! and, once the server has been idle a while, the code pages serving brought back and
//! the allocator's free pages.
//!
//! Reading the config, compiling the route table, loading certificates and starting the
//! listeners run a great deal of code that serving requests never runs again. Once
//! touched, those pages stay mapped and count in the process's resident memory: about
//! half of an idle server's RSS. After start-up (and after every reload, which runs the
//! same code again) the process drops its own mapping of the code and read-only data of
//! its executable and libraries. The pages stay in the kernel's page cache; the few that
//! requests use come back on first touch as minor faults, without disk access while the
//! file is cached, so the request path pays nothing after its first use of each page.
//!
//! Only private file mappings that are not writable and hold no private copy
//! (`Anonymous: 0 kB` in `/proc/self/smaps`) are dropped: their content is exactly the
//! file's, so dropping them loses nothing. Relocated read-only data (RELRO) has private
//! copies and is left alone, as are writable data, the heap and stacks.
//!
//! Idle trimming: serving requests pages in the code it runs (a few megabytes, spread
//! over the executable) and leaves freed heap pages with the allocator. When no request
//! has started for [`IDLE_AFTER`] and none is in flight, the same thread drops the code
//! pages again and asks the allocator (through the hook the binary installs with
//! [`set_heap_trim`]) to return its free pages. The first request after an idle period
//! pays for it with minor page faults (about a thousand, well under a millisecond); a
//! busy server never trims. The check reads per-thread request counters once per
//! period ([`crate::lifecycle::inflight::started_total`]); the request path does
//! nothing more than count its requests, as it did for graceful shutdown.

use std::sync::OnceLock;
use std::time::Duration;

/// How long after start-up the pages are dropped: code that runs once just after the
/// server starts (the first listeners, the HTTP/3 thread) is included.
pub const AFTER_START: Duration = Duration::from_secs(2);

/// How long the server must go without a new request before it trims: it trims between
/// one and two of these periods after the last request.
pub const IDLE_AFTER: Duration = Duration::from_secs(10);

/// Returns the allocator's free pages to the system; installed by the binary, which
/// knows its allocator.
static HEAP_TRIM: OnceLock<fn()> = OnceLock::new();

/// Installs the allocator's trim (once; later calls are ignored).
pub fn set_heap_trim(trim: fn()) {
    let _ = HEAP_TRIM.set(trim);
}

/// Gives back what an idle process does not need: its code pages and the allocator's
/// free pages. Returns the code bytes released.
pub fn trim() -> usize {
    if let Some(heap) = HEAP_TRIM.get() {
        heap();
    }
    release_code_pages()
}

/// A mapping that may be dropped.
#[derive(Debug, PartialEq, Eq)]
struct Droppable {
    start: usize,
    len: usize,
}

/// Reads `/proc/self/smaps` and drops every eligible mapping; returns the bytes that
/// were resident in them. Errors (no `/proc`) release nothing.
pub fn release_code_pages() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for (m, resident) in droppable(&smaps) {
        if advise_dontneed(&m) {
            released += resident;
        }
    }
    released
}

/// Drops pages [`AFTER_START`] from now, then trims whenever the server has been idle
/// for [`IDLE_AFTER`], on a thread of its own for the life of the process.
pub fn release_after_start() {
    let spawned = std::thread::Builder::new()
        .name("dwaar-footprint".into())
        .spawn(|| {
            std::thread::sleep(AFTER_START);
            let code = trim();
            tracing::debug!(code, "start-up memory released");
            let mut idle = IdleWatch::new(crate::lifecycle::inflight::started_total());
            loop {
                std::thread::sleep(IDLE_AFTER);
                let started = crate::lifecycle::inflight::started_total();
                let in_flight = crate::lifecycle::inflight::total();
                if idle.should_trim(started, in_flight) {
                    let code = trim();
                    tracing::debug!(code, "idle: memory released");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("cannot start the footprint thread: {e}");
    }
}

/// Decides, one period at a time, when an idle server trims: once per idle spell, after
/// a whole period in which no request started and with none in flight.
#[derive(Debug)]
struct IdleWatch {
    /// The request counter at the last look.
    seen: usize,
    /// Trimmed since the last request (start-up counts as trimmed).
    trimmed: bool,
}

impl IdleWatch {
    fn new(started: usize) -> IdleWatch {
        IdleWatch {
            seen: started,
            trimmed: true,
        }
    }

    fn should_trim(&mut self, started: usize, in_flight: usize) -> bool {
        if started != self.seen {
            self.seen = started;
            self.trimmed = false;
            return false;
        }
        if self.trimmed || in_flight > 0 {
            return false;
        }
        self.trimmed = true;
        true
    }
}

/// The eligible mappings in `smaps` text, with their resident bytes.
fn droppable(smaps: &str) -> Vec<(Droppable, usize)> {
    let mut out = Vec::new();
    // The mapping being read: (range, eligible so far, resident bytes).
    let mut current: Option<(Droppable, bool, usize)> = None;
    let finish = |c: Option<(Droppable, bool, usize)>, out: &mut Vec<_>| {
        if let Some((m, true, rss)) = c {
            if rss > 0 {
                out.push((m, rss));
            }
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            finish(current.take(), &mut out);
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let eligible = perms.len() == 4
                && perms.as_bytes()[1] != b'w'
                && perms.as_bytes()[3] == b'p'
                && path.starts_with('/');
            current = Some((
                Droppable {
                    start,
                    len: end.saturating_sub(start),
                },
                eligible,
                0,
            ));
            continue;
        }
        let Some(c) = current.as_mut() else {
            continue;
        };
        let kb = || -> usize {
            fields
                .clone()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "Rss:" => c.2 = kb() * 1024,
            // A private copy (relocated or written data) must not be dropped.
            "Anonymous:" if kb() != 0 => c.1 = false,
            "Locked:" if kb() != 0 => c.1 = false,
            _ => {}
        }
    }
    finish(current.take(), &mut out);
    out
}

#[allow(unsafe_code)]
fn advise_dontneed(m: &Droppable) -> bool {
    let Some(addr) = std::ptr::NonNull::new(m.start as *mut std::ffi::c_void) else {
        return false;
    };
    // SAFETY: the range is one whole mapping of this process, read from
    // /proc/self/smaps: a private, non-writable mapping of a file with no private
    // (anonymous) pages. MADV_DONTNEED on such a mapping only removes page-table
    // entries; the next access maps the same file content again, so no data changes
    // and no Rust object is invalidated.
    // MADV_RANDOM first: without it, each later fault maps up to 16 neighbouring
    // pages as well (fault-around), and the dropped pages return within a few requests.
    unsafe {
        let _ = nix::sys::mman::madvise(addr, m.len, nix::sys::mman::MmapAdvise::MADV_RANDOM);
        nix::sys::mman::madvise(addr, m.len, nix::sys::mman::MmapAdvise::MADV_DONTNEED).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_idle_spell_after_a_quiet_period() {
        let mut w = IdleWatch::new(5);
        // Nothing served since start-up (already trimmed then).
        assert!(!w.should_trim(5, 0));
        // Requests came during the period: not yet.
        assert!(!w.should_trim(9, 0));
        // A quiet period, but a long request is still running.
        assert!(!w.should_trim(9, 1));
        // Quiet and nothing in flight: trim, once.
        assert!(w.should_trim(9, 0));
        assert!(!w.should_trim(9, 0));
        // Traffic again, then quiet again: one more trim.
        assert!(!w.should_trim(12, 0));
        assert!(w.should_trim(12, 0));
    }

    const SAMPLE: &str = "\
55d95ef9a000-55d95ef9c000 r--p 00000000 fe:00 5563248                    /usr/bin/dwaar
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
Locked:                0 kB
55d95ef9c000-55d95efa0000 r-xp 00380000 fe:00 5563248                    /usr/bin/dwaar
Size:                 16 kB
Rss:                  12 kB
Anonymous:             0 kB
55d95efa0000-55d95efa2000 r--p 011c9000 fe:00 5563248                    /usr/bin/dwaar
Rss:                   8 kB
Anonymous:             8 kB
55d95efa2000-55d95efa4000 rw-p 0123d000 fe:00 5563248                    /usr/bin/dwaar
Rss:                   8 kB
Anonymous:             8 kB
7f0000000000-7f0000004000 rw-p 00000000 00:00 0
Rss:                  16 kB
Anonymous:            16 kB
7f0000004000-7f0000005000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7f0000005000-7f0000006000 r-xp 00000000 fe:00 77                         /usr/lib/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_unwritten_private_file_mappings_are_dropped() {
        let got = droppable(SAMPLE);
        assert_eq!(
            got,
            vec![
                (
                    Droppable {
                        start: 0x55d95ef9a000,
                        len: 0x2000
                    },
                    8192
                ),
                (
                    Droppable {
                        start: 0x55d95ef9c000,
                        len: 0x4000
                    },
                    12288
                ),
            ]
        );
    }

    /// The real thing in this (test) process: code keeps running afterwards and the
    /// resident size of the dropped mappings went down.
    #[test]
    fn dropping_code_pages_keeps_the_process_working() {
        let before: usize = droppable(&std::fs::read_to_string("/proc/self/smaps").unwrap())
            .iter()
            .map(|(_, r)| r)
            .sum();
        assert!(before > 0);
        let released = release_code_pages();
        assert!(released > 0);
        // Code and read-only data fault back in as they are used.
        let v: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(v[255], "ff");
        assert!(std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .contains("VmRSS"));
    }
}
