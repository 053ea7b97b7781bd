//! The `rbuild` command.

fn main() {
    std::process::exit(rbuild::cli::main_with_args(std::env::args_os().collect()));
}
