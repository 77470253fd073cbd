//! `cachectl`: the command line for operators and CI jobs of a Cairn cache.
//!
//! Each subcommand is a module with its own `Args` and `run`; this file only parses the
//! command line and dispatches, so a new subcommand is a new module plus one enum arm.

mod admin;
mod client;
mod closure;
mod cluster;
mod drv;
mod files;
mod gc;
mod hook;
mod keygen;
mod parts;
mod pin;
mod progress;
mod push;
mod queue;
mod retention;
mod status;
mod token;
mod uploader;

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
                  cache's admin API; `push` uploads store paths and their closures; \
                  `hook` (Nix's post-build-hook) queues built paths and `uploader` \
                  uploads what is queued; `status` reports the health of the cache; \
                  `cluster` forms and changes a cluster; `gc`, `pin` and `retention` \
                  decide what the cache keeps.",
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
    Push(push::Args),
    Hook(hook::Args),
    Uploader(uploader::Args),
    Status(status::Args),
    Cluster(cluster::Args),
    Gc(gc::Args),
    Pin(pin::Args),
    Retention(retention::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A post-build-hook that fails stops Nix's builds: even a mistyped hook
            // command line must not.
            let is_hook = std::env::args().nth(1).as_deref() == Some("hook");
            let _ = e.print();
            return if is_hook || !e.use_stderr() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let result = match cli.command {
        Command::Keygen(args) => keygen::run(args),
        Command::Token(args) => token::run(args),
        Command::Push(args) => push::run(args),
        Command::Hook(args) => {
            hook::run(args);
            Ok(())
        }
        Command::Uploader(args) => uploader::run(args),
        Command::Status(args) => return status::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Pin(args) => pin::run(args),
        Command::Retention(args) => retention::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachectl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
