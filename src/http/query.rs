//! Query strings: `name=value` pairs, values percent-decoded strictly (as
//! keys are), unknown names refused so a typo never goes unnoticed.

use super::reply::Reply;
use super::route::{percent_decode, KeyError};

/// The decoded parameters of a request target, by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(&'static str, String)>,
}

impl Params {
    /// Parses the query of `url`, accepting only the names in `allowed`;
    /// each may appear once. Values longer than `max_len` bytes once decoded
    /// are refused.
    pub fn parse(
        url: &str,
        allowed: &[&'static str],
        max_len: usize,
    ) -> Result<Self, Reply<'static>> {
        let mut params = Self::default();
        let Some((_, query)) = url.split_once('?') else {
            return Ok(params);
        };
        let mut decoded = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(&name) = allowed.iter().find(|&&known| known == name) else {
                let accepted = if allowed.is_empty() {
                    "this request takes no query parameters".to_owned()
                } else {
                    format!("this request accepts: {}", allowed.join(", "))
                };
                return Err(Reply::message(
                    400,
                    format!(
                        "Unknown query parameter '{}'; {accepted}.",
                        name.escape_default()
                    ),
                ));
            };
            if params.get(name).is_some() {
                return Err(Reply::message(
                    400,
                    format!("The query parameter '{name}' is given more than once."),
                ));
            }
            percent_decode(raw, &mut decoded, max_len)
                .map_err(|err| bad_value(name, err, max_len))?;
            let value = String::from_utf8(std::mem::take(&mut decoded)).expect("checked UTF-8");
            params.pairs.push((name, value));
        }
        Ok(params)
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, value)| value.as_str())
    }
}

fn bad_value(name: &str, err: KeyError, max_len: usize) -> Reply<'static> {
    let why = match err {
        KeyError::TooLong => format!("is longer than {max_len} bytes"),
        KeyError::BadEscape => "has a malformed percent-escape".into(),
        KeyError::NotUtf8 | KeyError::Empty => "is not valid UTF-8 once percent-decoded".into(),
        KeyError::Nul => "contains a NUL byte (%00)".into(),
    };
    Reply::message(400, format!("The query parameter '{name}' {why}."))
}

/// The longest time to live: 100 years, in seconds.
pub const MAX_TTL_SECONDS: u64 = 3_155_760_000;

/// Parses a time to live given in seconds as text (an integer or a decimal)
/// into milliseconds: from 0.001 (one millisecond, the resolution of expiry
/// times; finer fractions round up) to [`MAX_TTL_SECONDS`]. The error says
/// what is wrong, to follow the name of the parameter ("ttl must be ...").
pub fn ttl_millis(text: &str) -> Result<u64, &'static str> {
    let seconds: f64 = text
        .trim()
        .parse()
        .ok()
        .filter(|seconds: &f64| seconds.is_finite() && *seconds > 0.0)
        .ok_or("must be a number of seconds greater than 0")?;
    if seconds < 0.001 {
        return Err("must be at least 0.001 seconds (expiry times count milliseconds)");
    }
    if seconds > MAX_TTL_SECONDS as f64 {
        return Err("must be at most 3155760000 seconds (100 years)");
    }
    Ok((seconds * 1000.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_decoded_and_checked() {
        let params =
            Params::parse("/api/kv?prefix=a%2Fb&limit=5", &["prefix", "limit"], 100).unwrap();
        assert_eq!(params.get("prefix"), Some("a/b"));
        assert_eq!(params.get("limit"), Some("5"));
        assert_eq!(params.get("after"), None);
        assert!(Params::parse("/x?prefix=a&prefix=b", &["prefix"], 100).is_err());
        assert!(Params::parse("/x?prefx=a", &["prefix"], 100).is_err());
        assert!(Params::parse("/x?prefix=%zz", &["prefix"], 100).is_err());
        assert!(Params::parse("/x?prefix=%ff", &["prefix"], 100).is_err());
        assert!(Params::parse("/x?prefix=abcd", &["prefix"], 3).is_err());
        let empty = Params::parse("/x?keys_only", &["keys_only"], 100).unwrap();
        assert_eq!(empty.get("keys_only"), Some(""));
        assert_eq!(Params::parse("/x", &[], 100).unwrap(), Params::default());
    }

    #[test]
    fn ttls_are_positive_seconds_within_bounds() {
        assert_eq!(ttl_millis("60"), Ok(60_000));
        assert_eq!(ttl_millis("0.5"), Ok(500));
        assert_eq!(ttl_millis("0.001"), Ok(1));
        assert_eq!(ttl_millis("0.0015"), Ok(2));
        assert_eq!(ttl_millis("3155760000"), Ok(3_155_760_000_000));
        for bad in ["0", "-1", "abc", "", "NaN", "inf", "-0.0001"] {
            assert!(
                ttl_millis(bad).unwrap_err().contains("greater than 0"),
                "{bad}"
            );
        }
        assert!(ttl_millis("0.0001").unwrap_err().contains("at least 0.001"));
        for huge in ["3155760001", "1e300"] {
            assert!(ttl_millis(huge).unwrap_err().contains("at most"), "{huge}");
        }
    }
}
