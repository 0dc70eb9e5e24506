//! The operator-facing subcommands.

pub mod host;
