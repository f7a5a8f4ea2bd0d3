//! From the request path to the output: a bounded channel and a `BatchWriter` thread.
//!
//! The request path only ever calls [`Logger::log`], which hands the record to the
//! channel with `try_send`: when the channel is full the record is dropped and counted,
//! so a stalled disk or log collector can never slow requests down. The writer thread
//! encodes records into a reused buffer and writes up to [`BATCH_RECORDS`] of them per
//! `write`, or whatever is pending after [`BATCH_INTERVAL`].

use crate::encode::{self, Style};
use crate::output::{self, Output};
use crate::record::RequestLog;
use dwaar_config::model::{LogConfig, LogLevel, LogOutput};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Records per `write` call at most.
pub const BATCH_RECORDS: usize = 200;
/// Pending records are written at the latest this long after the first arrived.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Records waiting per output before new ones are dropped. Slots are allocated up front
/// (about 0.5 KiB each), which keeps the request path free of allocations.
pub const CHANNEL_CAPACITY: usize = 2048;

static DROPPED: AtomicU64 = AtomicU64::new(0);
static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Records dropped by this process (channel full or output failing), for `/metrics`.
pub fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Records written by this process.
pub fn written_total() -> u64 {
    WRITTEN.load(Ordering::Relaxed)
}

// Records travel by value: channel slots are allocated once, so the request path never
// allocates to log (a flush is rare and small).
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(RequestLog, Arc<Style>),
    Flush(mpsc::Sender<()>),
}

/// One output and its writer thread; shared by every site that logs there.
///
/// The writer is not woken per record (a wake-up per request costs more than the record
/// itself): it sleeps for the batch interval and senders unpark it only each time another
/// [`BATCH_RECORDS`] records are waiting.
pub struct Sink {
    tx: SyncSender<Msg>,
    discard: bool,
    pending: Arc<AtomicU64>,
    writer: std::thread::Thread,
}

impl Sink {
    fn start(output: &LogOutput) -> std::io::Result<Arc<Sink>> {
        let discard = matches!(output, LogOutput::Discard);
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let out = output::open(output)?;
        let pending = Arc::new(AtomicU64::new(0));
        let p = pending.clone();
        let handle = std::thread::Builder::new()
            .name("dwaar-log-writer".into())
            .spawn(move || batch_writer(rx, out, &p))?;
        Ok(Arc::new(Sink {
            tx,
            discard,
            pending,
            writer: handle.thread().clone(),
        }))
    }

    /// Writes everything pending; waits at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(tx);
        // The channel may be full: keep trying until the deadline.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => {
                    self.writer.unpark();
                    break;
                }
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// A site's access logger: its sink plus how it wants records written.
pub struct Logger {
    sink: Arc<Sink>,
    style: Arc<Style>,
    level: LogLevel,
    sampler: Option<Sampler>,
}

/// `sampling`: of each level's records within an interval, the first `first` are kept,
/// then every `thereafter`-th (zap's sampler, which Caddy uses). Lock-free: a window
/// number and a count per level.
struct Sampler {
    interval_ns: u64,
    first: u64,
    thereafter: u64,
    epoch: Instant,
    windows: [AtomicU64; 2],
    counts: [AtomicU64; 2],
}

impl Sampler {
    fn new(s: &dwaar_config::model::LogSampling) -> Sampler {
        Sampler {
            interval_ns: s.interval_ms.max(1).saturating_mul(1_000_000),
            first: s.first,
            thereafter: s.thereafter,
            epoch: Instant::now(),
            windows: [AtomicU64::new(0), AtomicU64::new(0)],
            counts: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Whether this record of the level (`error`: 5xx) is written.
    fn keep(&self, error: bool) -> bool {
        let i = usize::from(error);
        let window = self.epoch.elapsed().as_nanos() as u64 / self.interval_ns;
        if self.windows[i].load(Ordering::Relaxed) != window
            && self.windows[i].swap(window, Ordering::Relaxed) != window
        {
            self.counts[i].store(0, Ordering::Relaxed);
        }
        let n = self.counts[i].fetch_add(1, Ordering::Relaxed) + 1;
        n <= self.first || (self.thereafter > 0 && (n - self.first).is_multiple_of(self.thereafter))
    }
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("style", &self.style)
            .field("level", &self.level)
            .finish()
    }
}

impl Logger {
    /// Whether records need header fields (see [`Style::wants_headers`]).
    pub fn wants_headers(&self) -> bool {
        self.style.wants_headers()
    }

    /// Hands a record to the writer; never blocks. Returns false when it was dropped.
    pub fn log(&self, record: RequestLog) -> bool {
        if record.level() < self.level {
            return true;
        }
        if self.sink.discard {
            return true;
        }
        if let Some(s) = &self.sampler {
            if !s.keep(record.level() == LogLevel::Error) {
                return true;
            }
        }
        match self
            .sink
            .tx
            .try_send(Msg::Record(record, self.style.clone()))
        {
            Ok(()) => {
                let waiting = self.sink.pending.fetch_add(1, Ordering::Relaxed) + 1;
                if waiting.is_multiple_of(BATCH_RECORDS as u64) {
                    self.sink.writer.unpark();
                }
                true
            }
            Err(_) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Sinks by output, so a reload keeps open files and connections, and two sites that
/// log to the same file share one writer.
#[derive(Default)]
pub struct LogRegistry {
    sinks: Mutex<HashMap<LogOutput, Weak<Sink>>>,
}

impl LogRegistry {
    /// The logger for a `log` block (reusing the running sink of the same output).
    pub fn logger(&self, c: &LogConfig) -> Result<Arc<Logger>, String> {
        let mut sinks = self.sinks.lock().map_err(|_| "log registry poisoned")?;
        sinks.retain(|_, w| w.strong_count() > 0);
        let sink = match sinks.get(&c.output).and_then(Weak::upgrade) {
            Some(s) => s,
            None => {
                let s = Sink::start(&c.output)
                    .map_err(|e| format!("cannot start a log writer: {e}"))?;
                sinks.insert(c.output.clone(), Arc::downgrade(&s));
                s
            }
        };
        Ok(Arc::new(Logger {
            sink,
            style: Arc::new(Style::of(c)?),
            level: c.level,
            sampler: c.sampling.as_ref().map(Sampler::new),
        }))
    }

    /// Flushes every live sink (shutdown); waits at most `timeout` in total.
    pub fn flush_all(&self, timeout: Duration) {
        let live: Vec<Arc<Sink>> = match self.sinks.lock() {
            Ok(s) => s.values().filter_map(Weak::upgrade).collect(),
            Err(_) => return,
        };
        let deadline = Instant::now() + timeout;
        for s in live {
            if !s.flush(deadline.saturating_duration_since(Instant::now())) {
                tracing::warn!("a log output did not flush in time");
            }
        }
    }
}

/// The writer thread: every [`BATCH_INTERVAL`] (or when unparked) it takes what is
/// waiting and writes it, [`BATCH_RECORDS`] records per `write`, until every sender is
/// gone.
fn batch_writer(rx: mpsc::Receiver<Msg>, mut out: Box<dyn Output>, pending: &AtomicU64) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut count = 0usize;
    let mut write = |buf: &mut Vec<u8>, count: &mut usize| {
        if *count == 0 {
            return;
        }
        match out.write_batch(buf) {
            Ok(()) => {
                WRITTEN.fetch_add(*count as u64, Ordering::Relaxed);
            }
            Err(e) => {
                DROPPED.fetch_add(*count as u64, Ordering::Relaxed);
                tracing::debug!("log write failed, {} records lost: {e}", count);
            }
        }
        pending.fetch_sub(*count as u64, Ordering::Relaxed);
        buf.clear();
        *count = 0;
        // Do not keep a huge buffer around after a burst.
        if buf.capacity() > 4 * 1024 * 1024 {
            buf.shrink_to(64 * 1024);
        }
    };
    loop {
        std::thread::park_timeout(BATCH_INTERVAL);
        loop {
            match rx.try_recv() {
                Ok(Msg::Record(record, style)) => {
                    encode::encode(&record, &style, &mut buf);
                    count += 1;
                    if count >= BATCH_RECORDS {
                        write(&mut buf, &mut count);
                    }
                }
                Ok(Msg::Flush(ack)) => {
                    write(&mut buf, &mut count);
                    let _ = ack.send(());
                }
                Err(mpsc::TryRecvError::Empty) => {
                    write(&mut buf, &mut count);
                    break;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    write(&mut buf, &mut count);
                    return;
                }
            }
        }
    }
}
