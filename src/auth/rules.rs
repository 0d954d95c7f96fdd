//! What a verified token grants: scopes, and the key prefixes they apply
//! to. The most specific (longest) matching prefix decides, as in Consul's
//! ACLs.

use serde::{Deserialize, Serialize};

/// A kind of access a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// GET and HEAD of keys; listing and watching.
    Read,
    /// PUT, DELETE and PATCH of keys; batches.
    Write,
    /// `/api/admin/*` (and `/metrics` unless it is public).
    Admin,
    /// Following this node's log as a replication follower: the stream,
    /// its acknowledgements, and the snapshot a follower starts from.
    Replicate,
}

impl Access {
    /// Whether it is to the whole node, not to keys: the token-wide scopes
    /// decide it, whatever its prefixes say.
    fn is_node_wide(self) -> bool {
        matches!(self, Self::Admin | Self::Replicate)
    }
}

/// A scope named in a token's `scopes` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Grants [`Access::Read`].
    Read,
    /// Grants [`Access::Write`].
    Write,
    /// Grants [`Access::Admin`].
    Admin,
    /// Grants [`Access::Replicate`] (and nothing else: a follower's token
    /// reads no key and writes none through the API).
    Replicate,
    /// Any other name: grants nothing.
    #[serde(other, skip_serializing)]
    Unknown,
}

impl Scope {
    /// Parses a scope name as given on the command line.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            "replicate" => Some(Self::Replicate),
            _ => None,
        }
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope: what an unscoped token gets where that is allowed.
    pub const ALL: Self = Self(0b1111);

    /// The set of the given scopes (unknown names grant nothing).
    pub fn of(scopes: &[Scope]) -> Self {
        Self(
            scopes
                .iter()
                .fold(0, |bits, scope| bits | Self::bit_of(*scope)),
        )
    }

    /// Whether the set grants `access`.
    pub fn grants(self, access: Access) -> bool {
        let scope = match access {
            Access::Read => Scope::Read,
            Access::Write => Scope::Write,
            Access::Admin => Scope::Admin,
            Access::Replicate => Scope::Replicate,
        };
        self.0 & Self::bit_of(scope) != 0
    }

    fn bit_of(scope: Scope) -> u8 {
        match scope {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
            Scope::Replicate => 8,
            Scope::Unknown => 0,
        }
    }
}

/// One entry of a token's `prefixes` claim: a bare prefix (the token's
/// scopes apply under it) or a prefix with scopes of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PrefixRule {
    /// `"sensors/"`: the token's `scopes` apply to keys under it.
    Plain(String),
    /// `{"prefix": "sensors/private/", "scopes": []}`: these scopes, and
    /// only these, apply to keys under it.
    Scoped {
        /// The key prefix.
        prefix: String,
        /// What it grants.
        scopes: Vec<Scope>,
    },
}

/// What a token grants, resolved from its claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Token-wide scopes: admin access, and keys when no prefixes are given.
    scopes: Scopes,
    /// `None`: every key. Otherwise (prefix, scopes), longest prefix first.
    rules: Option<Vec<(Vec<u8>, Scopes)>>,
}

/// Why a valid token may not do something (a 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The token carries no `scopes` claim and unscoped tokens are refused.
    Unscoped,
    /// The scope needed for this access is missing where it is needed.
    Scope(Access),
    /// No prefix of the token covers the key (or the whole of a prefix).
    Prefix,
}

impl Denied {
    /// The message for the client; it names nothing stored.
    pub fn message(self) -> &'static str {
        match self {
            Self::Unscoped => {
                "This token has no scopes claim, and this node refuses unscoped tokens. Use a token from `lucid tokens issue --scope ...`."
            }
            Self::Scope(Access::Read) => "This token does not grant the read scope here.",
            Self::Scope(Access::Write) => "This token does not grant the write scope here.",
            Self::Scope(Access::Admin) => {
                "This token does not grant the admin scope, which this resource needs."
            }
            Self::Scope(Access::Replicate) => {
                "This token does not grant the replicate scope, which this resource needs."
            }
            Self::Prefix => "This token's prefixes do not cover these keys.",
        }
    }
}

impl Grants {
    /// Full access: an unscoped token where `allow_unscoped` is set.
    pub const FULL: Self = Self {
        scopes: Scopes::ALL,
        rules: None,
    };

    /// Resolves a token's `scopes` and `prefixes` claims.
    pub fn new(scopes: &[Scope], prefixes: Option<&[PrefixRule]>) -> Self {
        let token_scopes = Scopes::of(scopes);
        let rules = prefixes.map(|rules| {
            let mut resolved: Vec<(Vec<u8>, Scopes)> = rules
                .iter()
                .map(|rule| match rule {
                    PrefixRule::Plain(prefix) => (prefix.as_bytes().to_vec(), token_scopes),
                    PrefixRule::Scoped { prefix, scopes } => {
                        (prefix.as_bytes().to_vec(), Scopes::of(scopes))
                    }
                })
                .collect();
            // Longest first, so the first match is the most specific. Of two
            // rules for one prefix, the first listed is kept.
            resolved.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
            resolved.dedup_by(|later, earlier| later.0 == earlier.0);
            resolved
        });
        Self {
            scopes: token_scopes,
            rules,
        }
    }

    /// May the holder perform `access` on `key`? `Admin` and `Replicate`
    /// ignore the key.
    pub fn authorize(&self, access: Access, key: &[u8]) -> Result<(), Denied> {
        if access.is_node_wide() {
            return self.check(self.scopes, access);
        }
        self.check(self.governing(key).ok_or(Denied::Prefix)?, access)
    }

    /// May the holder perform `access` on every key that starts with
    /// `prefix` (a listing or a watch)? Yes only if the rule governing the
    /// prefix itself grants it and so does every more specific rule inside.
    pub fn authorize_prefix(&self, access: Access, prefix: &[u8]) -> Result<(), Denied> {
        if access.is_node_wide() {
            return self.check(self.scopes, access);
        }
        self.check(self.governing(prefix).ok_or(Denied::Prefix)?, access)?;
        let inner = self.rules.iter().flatten();
        inner
            .filter(|(rule, _)| rule.len() > prefix.len() && rule.starts_with(prefix))
            .try_for_each(|(_, scopes)| self.check(*scopes, access))
    }

    /// The scopes that apply to `key`: the longest matching rule's.
    fn governing(&self, key: &[u8]) -> Option<Scopes> {
        match &self.rules {
            None => Some(self.scopes),
            Some(rules) => rules
                .iter()
                .find(|(prefix, _)| key.starts_with(prefix))
                .map(|(_, scopes)| *scopes),
        }
    }

    fn check(&self, scopes: Scopes, access: Access) -> Result<(), Denied> {
        if scopes.grants(access) {
            Ok(())
        } else {
            Err(Denied::Scope(access))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(prefix: &str, scopes: &[Scope]) -> PrefixRule {
        PrefixRule::Scoped {
            prefix: prefix.into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn without_prefixes_the_scopes_apply_to_every_key() {
        let grants = Grants::new(&[Scope::Read], None);
        assert_eq!(grants.authorize(Access::Read, b"any/key"), Ok(()));
        assert_eq!(
            grants.authorize(Access::Write, b"any/key"),
            Err(Denied::Scope(Access::Write))
        );
        assert_eq!(
            grants.authorize(Access::Admin, b""),
            Err(Denied::Scope(Access::Admin))
        );
        assert_eq!(Grants::FULL.authorize(Access::Admin, b""), Ok(()));
    }

    #[test]
    fn prefixes_limit_the_keys() {
        let rules = [PrefixRule::Plain("sensors/".into())];
        let grants = Grants::new(&[Scope::Read, Scope::Write], Some(&rules));
        assert_eq!(grants.authorize(Access::Write, b"sensors/t1"), Ok(()));
        assert_eq!(
            grants.authorize(Access::Read, b"sensor"),
            Err(Denied::Prefix)
        );
        assert_eq!(
            grants.authorize(Access::Read, b"wallets/k"),
            Err(Denied::Prefix)
        );
        let nothing = Grants::new(&[Scope::Read], Some(&[]));
        assert_eq!(nothing.authorize(Access::Read, b"a"), Err(Denied::Prefix));
    }

    #[test]
    fn the_most_specific_prefix_wins() {
        let rules = [
            scoped("sensors/private/", &[]),
            PrefixRule::Plain("sensors/".into()),
            scoped("sensors/private/open/", &[Scope::Read]),
        ];
        let grants = Grants::new(&[Scope::Read, Scope::Write], Some(&rules));
        assert_eq!(grants.authorize(Access::Write, b"sensors/a"), Ok(()));
        assert_eq!(
            grants.authorize(Access::Read, b"sensors/private/key"),
            Err(Denied::Scope(Access::Read))
        );
        assert_eq!(
            grants.authorize(Access::Read, b"sensors/private/open/x"),
            Ok(())
        );
        assert_eq!(
            grants.authorize(Access::Write, b"sensors/private/open/x"),
            Err(Denied::Scope(Access::Write))
        );
    }

    #[test]
    fn a_prefix_is_granted_only_if_every_key_under_it_is() {
        let rules = [
            PrefixRule::Plain("sensors/".into()),
            scoped("sensors/private/", &[]),
        ];
        let grants = Grants::new(&[Scope::Read], Some(&rules));
        assert_eq!(
            grants.authorize_prefix(Access::Read, b"sensors/pi-"),
            Ok(())
        );
        assert_eq!(
            grants.authorize_prefix(Access::Read, b"sensors/"),
            Err(Denied::Scope(Access::Read))
        );
        assert_eq!(
            grants.authorize_prefix(Access::Read, b""),
            Err(Denied::Prefix)
        );
        assert_eq!(
            grants.authorize_prefix(Access::Read, b"sensors/private/x"),
            Err(Denied::Scope(Access::Read))
        );
        assert_eq!(Grants::FULL.authorize_prefix(Access::Read, b""), Ok(()));
    }

    #[test]
    fn claims_parse_in_both_forms_and_unknown_scopes_grant_nothing() {
        let rules: Vec<PrefixRule> =
            serde_json::from_str(r#"["a/", {"prefix": "a/b/", "scopes": ["write", "root"]}]"#)
                .unwrap();
        assert_eq!(
            rules,
            [
                PrefixRule::Plain("a/".into()),
                scoped("a/b/", &[Scope::Write, Scope::Unknown])
            ]
        );
        let scopes: Vec<Scope> = serde_json::from_str(r#"["superuser"]"#).unwrap();
        let grants = Grants::new(&scopes, None);
        for access in [Access::Read, Access::Write, Access::Admin] {
            assert_eq!(grants.authorize(access, b"k"), Err(Denied::Scope(access)));
        }
    }

    #[test]
    fn replicate_grants_replication_and_nothing_else() {
        assert_eq!(Scope::parse("replicate"), Some(Scope::Replicate));
        let parsed: Vec<Scope> = serde_json::from_str(r#"["replicate"]"#).unwrap();
        assert_eq!(parsed, [Scope::Replicate]);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), r#"["replicate"]"#);

        let follower = Grants::new(&[Scope::Replicate], None);
        assert_eq!(follower.authorize(Access::Replicate, b""), Ok(()));
        for access in [Access::Read, Access::Write, Access::Admin] {
            assert_eq!(follower.authorize(access, b"k"), Err(Denied::Scope(access)));
            assert_eq!(
                follower.authorize_prefix(access, b""),
                Err(Denied::Scope(access))
            );
        }
        let others = Grants::new(&[Scope::Read, Scope::Write, Scope::Admin], None);
        assert_eq!(
            others.authorize(Access::Replicate, b""),
            Err(Denied::Scope(Access::Replicate))
        );
        assert!(Denied::Scope(Access::Replicate)
            .message()
            .contains("replicate scope"));
        assert_eq!(Grants::FULL.authorize(Access::Replicate, b""), Ok(()));
    }

    #[test]
    fn replication_ignores_the_prefixes_as_admin_does() {
        let rules = [PrefixRule::Plain("sensors/".into())];
        let grants = Grants::new(&[Scope::Replicate], Some(&rules));
        assert_eq!(grants.authorize(Access::Replicate, b"elsewhere"), Ok(()));
        assert_eq!(
            grants.authorize_prefix(Access::Replicate, b"elsewhere/"),
            Ok(())
        );
        assert_eq!(
            grants.authorize(Access::Read, b"sensors/t"),
            Err(Denied::Scope(Access::Read))
        );
        let under_a_rule = [scoped("sensors/", &[Scope::Replicate])];
        let grants = Grants::new(&[Scope::Read], Some(&under_a_rule));
        assert_eq!(
            grants.authorize(Access::Replicate, b"sensors/t"),
            Err(Denied::Scope(Access::Replicate))
        );
    }
}
