//! Dwaar's request logs.
//!
//! - [`record`]: `RequestLog`, built on the request path (header fields copied only for
//!   logs that write them);
//! - [`encode`]: JSON (sonic-rs) and console lines, IP masking, query redaction;
//! - [`transform`]: `format filter`'s field filters and the encoder options;
//! - [`writer`]: the bounded channel, the `BatchWriter` thread, sinks shared by output;
//! - [`output`]: stdout, stderr, discard, rotating files, network sockets.

pub mod encode;
pub mod output;
pub mod record;
pub mod transform;
pub mod writer;

pub use encode::Style;
pub use record::RequestLog;
pub use writer::{dropped_total, written_total, LogRegistry, Logger};
