//! `dwaar-core`: the request path.
//!
//! Layers, each importing only the ones below it:
//!
//! - front-ends: [`fast_h1`] (lean HTTP/1), [`proxy`] (Pingora's `HttpProxy`),
//!   [`streams`] (HTTP/2 and HTTP/3 streams; [`quic`] accepts HTTP/3 connections);
//!   [`server`] wires them to listeners and processes;
//! - [`lifecycle`]: what happens around the pipeline for every request (start, checks,
//!   answers, upstream attempts, failure answers, logs and metrics);
//! - [`pipeline`]: site lookup, routes, matchers, handlers, over the protocol-neutral
//!   [`request::HttpRequest`] and the [`context::RequestContext`], compiled once into a
//!   [`route_table`];
//! - handlers and upstreams: files, cache, fastcgi, auth, security, encode, analytics,
//!   [`upstream`] (backend state, load balancing, health, connection pools);
//! - primitives: the HTTP/1 codec [`http1`], placeholders, [`net`].

pub mod analytics;
pub mod auth;
pub mod cache;
pub mod compress;
pub mod context;
pub mod encode;
pub mod fast_h1;
pub mod fastcgi;
pub mod files;
pub mod http1;
pub mod layer4;
pub mod lifecycle;
pub mod matcher;
pub mod metrics;
pub mod net;
pub mod otel;
pub mod pipeline;
pub mod proxy;
pub mod proxy_protocol;
pub mod quic;
pub mod request;
pub mod response_rules;
pub mod rewrite;
pub mod route_table;
pub mod security;
pub mod server;
pub mod sniff;
pub mod streams;
pub mod template;
pub mod templates;
pub mod upstream;

/// The fleet's shared state (`storage redis`), for the admin API and the CLI.
pub use dwaar_fleet;
