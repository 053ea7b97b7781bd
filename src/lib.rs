//! rbuild: a rootless, daemonless, single-shot container image builder.
//!
//! Data flows one way: [`dockerfile`] → [`plan`] → [`solver`] (with [`snapshot`], [`store`],
//! [`context`], [`source`]) → [`export`].

pub mod cancel;
pub mod cli;
pub mod coarse_clock;
pub mod context;
pub mod csv_fields;
pub mod dockerfile;
pub mod export;
pub mod image;
pub mod inroot;
pub mod plan;
pub mod progress;
pub mod sandbox;
pub mod snapshot;
pub mod solver;
pub mod source;
pub mod store;
pub mod which;
pub mod xattrs;
