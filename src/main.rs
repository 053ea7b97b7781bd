//! The `rbuild` command.

fn main() {}
