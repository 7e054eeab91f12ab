//! Support code for the binaries: the standalone broker's configuration and embedded web
//! client (`src/bin/broker.rs`), and the load generator (`src/bin/loadgen.rs`).
#![warn(missing_docs)]

pub mod config;
pub mod loadgen;
pub mod web;

/// Compiles and runs the README's Rust examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
