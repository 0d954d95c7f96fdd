//! `lucid init`: writes the documented sample configuration.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::CommandResult;
use crate::config::{DEFAULT_PATH, ENV_VAR, SAMPLE};

/// Writes the sample config to `path` (default `$LUCID_CONFIG`, else
/// `./lucid.yml`); refuses to replace an existing file unless `force` is set.
pub fn run(path: Option<&Path>, force: bool) -> CommandResult {
    let from_env = std::env::var_os(ENV_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let path = path
        .map(Path::to_path_buf)
        .or(from_env)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    let path = path.as_path();
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|err| match err.kind() {
        ErrorKind::AlreadyExists => format!(
            "{} already exists; use `lucid init --force` to overwrite it",
            path.display()
        ),
        _ => format!("cannot write {}: {err}", path.display()),
    })?;
    file.write_all(SAMPLE.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    println!(
        "Wrote {}. Start the node with: lucid --config {} server",
        path.display(),
        path.display()
    );
    Ok(())
}
