//! One module per subcommand; each `run` returns an error whose message
//! tells the user what went wrong and what to do next.
//!
//! Commands print with `say!` instead of `println!`: when stdout is a
//! pipe that was closed early (`lucid check | head -1`), `println!` panics,
//! while `say!` returns the broken pipe as an error, which `main` ends on
//! quietly.

use std::fmt;
use std::io::{self, Write};

/// `println!` that returns an `io::Result` instead of panicking when stdout
/// cannot be written (a closed pipe).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::commands::print_line(format_args!($($arg)*))
    };
}

pub mod check;
pub mod compact;
pub mod export;
pub mod health;
pub mod import;
pub mod init;
pub mod promote;
pub mod remote;
pub mod server;
pub mod snapshot;
pub mod tokens;

/// The error type of every command: a message for the user.
pub type CommandResult = Result<(), Box<dyn std::error::Error>>;

/// Writes `line` and a newline to stdout (what `say!` expands to).
pub fn print_line(line: fmt::Arguments) -> io::Result<()> {
    writeln!(io::stdout().lock(), "{line}")
}

/// Writes `line` and a newline to stderr; if stderr cannot be written
/// either, there is nowhere left to say it, and nothing else to do.
pub fn note(line: fmt::Arguments) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Whether a command failed only because its stdout was closed (the reader
/// of a pipe went away): then there is nobody left to tell anything.
pub fn is_broken_pipe(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<io::Error>()
        .is_some_and(|err| err.kind() == io::ErrorKind::BrokenPipe)
}
