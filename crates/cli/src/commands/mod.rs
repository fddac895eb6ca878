//! The admin subcommands, one module per area of the API.

pub mod cluster;
pub mod collection;
pub mod features;
pub mod points;
pub mod search;
