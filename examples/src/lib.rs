//! Support code for the standalone broker binary (`src/bin/broker.rs`): its configuration and
//! the embedded web client.
#![warn(missing_docs)]

pub mod config;
pub mod web;

/// Compiles and runs the README's Rust examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
