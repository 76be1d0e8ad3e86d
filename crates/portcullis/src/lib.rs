//! The Portcullis gateway: sources of configuration, the published snapshot, listeners
//! and TLS, the request handler, the upstream pool, metrics, and the CLI's commands.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod controller;
pub mod direct;
pub mod echo;
pub mod exchange;
pub mod h1;
pub mod handler;
pub mod limits;
pub mod lines;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod report;
pub mod server;
pub mod source;
pub mod state;
pub mod status;
pub mod sticky;
pub mod text;
pub mod tls;
