//! `lucid tokens issue`: prints a token signed with the configuration's
//! secret.

use std::path::Path;

use super::{note, CommandResult};
use crate::auth::{LucidClaims, PrefixRule, Tokens};
use crate::cli::IssueArgs;
use crate::config::Config;

/// Prints a token granting what `args` asks for.
pub fn issue(config_path: Option<&Path>, args: IssueArgs) -> CommandResult {
    let (config, source) = Config::load(config_path)?;
    let auth = &config.authentication;
    if auth.secret_key.is_empty() {
        return Err(format!(
            "authentication.secret_key is not set in {source}; generate a config with one \
             with `lucid init`, or set it (at least 32 random bytes)"
        )
        .into());
    }
    if args.scope.is_empty() && args.rule.is_empty() {
        return Err(
            "a token must grant something: give --scope read, write or admin (or replicate, \
             for a follower)"
                .into(),
        );
    }
    let has_prefixes = !args.prefix.is_empty() || !args.rule.is_empty();
    let prefixes = args.prefix.into_iter().map(PrefixRule::Plain);
    let claims = LucidClaims {
        scopes: Some(args.scope),
        prefixes: has_prefixes.then(|| prefixes.chain(args.rule).collect()),
    };
    let token = Tokens::new(auth).issue(claims, args.expires, args.subject.as_deref())?;
    if !auth.enabled {
        note(format_args!(
            "note: authentication.enabled is false in {source}: the node does not ask for tokens"
        ));
    }
    say!("{token}")?;
    Ok(())
}
