//! `lucid init`: writes the documented sample configuration.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::CommandResult;
use crate::config::{DEFAULT_PATH, ENV_VAR, SAMPLE};
use crate::store::crypt::Cipher;

/// The sample's `encryption` settings, turned on by `--encrypt`.
const ENCRYPTION_OFF: &str = "  enabled: false\n  key_file: ./lucid.key\n";

/// Writes the sample config to `path` (default `$LUCID_CONFIG`, else
/// `./lucid.yml`); refuses to replace an existing file unless `force` is set.
/// With `encrypt`, also creates a key file beside it and enables encryption.
pub fn run(path: Option<&Path>, force: bool, encrypt: bool) -> CommandResult {
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
    let mut text = SAMPLE.to_string();
    if encrypt {
        let key_file = path.with_file_name("lucid.key");
        Cipher::create_key_file(&key_file)?;
        let enabled = format!("  enabled: true\n  key_file: {}\n", key_file.display());
        text = text.replacen(ENCRYPTION_OFF, &enabled, 1);
        println!(
            "Created the encryption key {} (mode 0600). Keep a copy somewhere safe: without it the data cannot be read.",
            key_file.display()
        );
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    println!(
        "Wrote {}. Start the node with: lucid --config {} server",
        path.display(),
        path.display()
    );
    Ok(())
}
