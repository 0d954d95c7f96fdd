//! One module per subcommand; each `run` returns an error whose message
//! tells the user what went wrong and what to do next.

pub mod check;
pub mod compact;
pub mod health;
pub mod init;
pub mod server;
pub mod tokens;

/// The error type of every command: a message for the user.
pub type CommandResult = Result<(), Box<dyn std::error::Error>>;
