//! Support code for the standalone broker binary (`src/bin/broker.rs`): its configuration.
#![warn(missing_docs)]

pub mod config;
