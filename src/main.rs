//! The `lucid` binary: parses the command line and hands over to a command.

use std::process::ExitCode;

use argh::TopLevelCommand;
use lucid::commands::{is_broken_pipe, note, print_line};
use lucid::{cli, commands};

/// Exit status when stdout was closed under us: what a shell reports for a
/// process ended by SIGPIPE (128 + 13), as most Unix tools end then.
const BROKEN_PIPE_STATUS: u8 = 141;

fn main() -> ExitCode {
    let args = match parse_args::<cli::Args>() {
        Ok(args) => args,
        Err(status) => return status,
    };
    let config = args.config.as_deref();
    let result = match args.command {
        cli::Command::Init(init) => commands::init::run(config, &init),
        cli::Command::Server(_) => commands::server::run(config),
        cli::Command::Check(check) => commands::check::run(config, check.repair),
        cli::Command::Compact(compact) => commands::compact::run(config, compact),
        cli::Command::Export(export) => commands::export::run(config, export),
        cli::Command::Import(import) => commands::import::run(config, import),
        cli::Command::Health(health) => commands::health::run(config, health.url.as_deref()),
        cli::Command::Promote(promote) => commands::promote::run(config, promote),
        cli::Command::Snapshot(snapshot) => match snapshot.command {
            cli::SnapshotCommand::Save(save) => commands::snapshot::save(config, save),
            cli::SnapshotCommand::Verify(verify) => commands::snapshot::verify(config, verify),
            cli::SnapshotCommand::Restore(restore) => commands::snapshot::restore(config, restore),
        },
        cli::Command::Tokens(tokens) => match tokens.command {
            cli::TokensCommand::Issue(issue) => commands::tokens::issue(config, issue),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(err.as_ref()) => ExitCode::from(BROKEN_PIPE_STATUS),
        Err(err) => {
            note(format_args!("lucid: error: {err}"));
            ExitCode::FAILURE
        }
    }
}

/// `argh::from_env`, but printing `--help` and usage errors without
/// panicking on a closed stdout or stderr; `Err` is the status to exit with.
fn parse_args<T: TopLevelCommand>() -> Result<T, ExitCode> {
    let strings: Vec<String> = std::env::args_os()
        .map(|arg| {
            arg.into_string().map_err(|arg| {
                note(format_args!(
                    "lucid: error: not UTF-8: {}",
                    arg.to_string_lossy()
                ));
                ExitCode::FAILURE
            })
        })
        .collect::<Result<_, _>>()?;
    let words: Vec<&str> = strings.iter().skip(1).map(String::as_str).collect();
    T::from_args(&["lucid"], &words).map_err(|early_exit| match early_exit.status {
        Ok(()) => match print_line(format_args!("{}", early_exit.output)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(BROKEN_PIPE_STATUS),
        },
        Err(()) => {
            note(format_args!(
                "{}\nRun lucid --help for more information.",
                early_exit.output
            ));
            ExitCode::FAILURE
        }
    })
}
