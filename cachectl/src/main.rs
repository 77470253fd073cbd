//! `cachectl`: the command line for operators and CI jobs of a Cairn cache.
//!
//! Each subcommand is a module with its own `Args` and `run`; this file only parses the
//! command line and dispatches, so a new subcommand is a new module plus one enum arm.

mod files;
mod keygen;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cachectl",
    version,
    about = "Command line for the Cairn Nix binary cache",
    long_about = "Command line for the Cairn Nix binary cache.\n\n\
                  `keygen` creates the ed25519 signing keys the cache signs narinfos \
                  with; `token` creates, lists and revokes access tokens through the \
                  cache's admin API.",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Keygen(keygen::Args),
    Token(token::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(args) => keygen::run(args),
        Command::Token(args) => token::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachectl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
