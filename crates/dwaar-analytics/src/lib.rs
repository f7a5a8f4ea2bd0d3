//! First-party analytics for Dwaar sites (`analytics` in a site block).
//!
//! Pages get a small script tag injected ([`inject`]); the script ([`script`]) reports
//! one beacon per page view ([`beacon`]); the request path reports every response.
//! Events cross a bounded channel to one thread per process ([`collector`]), which
//! aggregates them per site and minute in fixed-size sketches ([`hll`], [`digest`],
//! [`topk`], together a [`bucket`]) and merges them into minute, hour and day rollups
//! in an SQLite file ([`store`]). Reports over any range merge rollups ([`query`]).
//! Nothing here knows about HTTP servers; `dwaar-core` wires it to the request path
//! and `dwaar-admin` serves the API and dashboard.

pub mod agent;
pub mod beacon;
pub mod bucket;
pub mod collector;
pub mod digest;
pub mod geo;
pub mod hll;
pub mod inject;
pub mod query;
pub mod script;
pub mod store;
pub mod topk;

pub use collector::{Collector, Event, Settings};
