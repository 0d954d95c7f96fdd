//! The `lucid` binary: parses the command line and hands over to a command.

use std::process::ExitCode;

use lucid::{cli, commands};

fn main() -> ExitCode {
    let args: cli::Args = argh::from_env();
    let config = args.config.as_deref();
    let result = match args.command {
        cli::Command::Init(init) => commands::init::run(config, &init),
        cli::Command::Server(_) => commands::server::run(config),
        cli::Command::Check(check) => commands::check::run(config, check.repair),
        cli::Command::Compact(compact) => {
            commands::compact::run(config, compact.new_key_file.as_deref())
        }
        cli::Command::Health(health) => commands::health::run(config, health.url.as_deref()),
        cli::Command::Tokens(tokens) => match tokens.command {
            cli::TokensCommand::Issue(issue) => commands::tokens::issue(config, issue),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lucid: error: {err}");
            ExitCode::FAILURE
        }
    }
}
