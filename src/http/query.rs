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

/// Parses a number of seconds given as text (a query parameter): a positive
/// integer or decimal, at most about 100 years. Returns milliseconds.
pub fn positive_seconds(text: &str) -> Option<u64> {
    const MAX_SECONDS: f64 = 100.0 * 365.25 * 86_400.0;
    let seconds: f64 = text.trim().parse().ok()?;
    (seconds > 0.0 && seconds <= MAX_SECONDS).then(|| (seconds * 1000.0).ceil() as u64)
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
    fn seconds_must_be_positive_numbers() {
        assert_eq!(positive_seconds("60"), Some(60_000));
        assert_eq!(positive_seconds("0.5"), Some(500));
        assert_eq!(positive_seconds("0.0001"), Some(1));
        for bad in ["0", "-1", "abc", "", "NaN", "inf", "1e300"] {
            assert_eq!(positive_seconds(bad), None, "{bad}");
        }
    }
}
