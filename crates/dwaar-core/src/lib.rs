//! `dwaar-core`: the request path.
//!
//! [`route_table`] compiles a config once; [`pipeline`] runs one request through it,
//! independent of protocol, using the [`request::HttpRequest`] view and the
//! [`context::RequestContext`]; [`proxy`] is the Pingora front-end; [`upstream`] holds
//! backend state, load balancing and health checks; [`server`] wires the process.

pub mod analytics;
pub mod auth;
pub mod cache;
pub mod compress;
pub mod context;
pub mod encode;
pub mod fast_h1;
pub mod fastcgi;
pub mod files;
pub mod matcher;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod proxy;
pub mod quic;
pub mod request;
pub mod rewrite;
pub mod route_table;
pub mod security;
pub mod server;
pub mod streams;
pub mod template;
pub mod upstream;
