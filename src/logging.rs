//! Log output: simplelog to stderr (journald picks it up under systemd),
//! coloured only when stderr is a terminal.

use std::io::IsTerminal;

use simplelog::{ColorChoice, ConfigBuilder, TermLogger, TerminalMode};

use crate::config::LogLevel;

/// Installs the process-wide logger at `level`.
pub fn init(level: LogLevel) -> Result<(), String> {
    let colours = if std::io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let config = ConfigBuilder::new()
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .build();
    TermLogger::init(level.filter(), config, TerminalMode::Stderr, colours)
        .map_err(|err| format!("cannot start logging: {err}"))
}
