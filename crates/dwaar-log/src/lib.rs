//! Dwaar's request logs.
//!
//! - [`record`]: `RequestLog`, built on the request path without allocating;
//! - [`encode`]: JSON (sonic-rs) and console lines, IP masking, query redaction;
//! - [`filter`]: `format filter`'s field filters (Caddy's filter encoder);
//! - [`writer`]: the bounded channel, the `BatchWriter` thread, sinks shared by output;
//! - [`output`]: stdout, stderr, discard, rotating files, network sockets.

pub mod encode;
pub mod filter;
pub mod output;
pub mod record;
pub mod writer;

pub use encode::Style;
pub use record::RequestLog;
pub use writer::{dropped_total, written_total, LogRegistry, Logger};
