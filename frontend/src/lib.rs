//! The front end: the public REST API over an HTTP/1.1 server of our own.

pub mod cache;
pub mod http;
