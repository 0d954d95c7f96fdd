//! Request targets: which resource a URL names, and decoding of keys.

/// Path prefix of the key-value resource.
const KV_PREFIX: &str = "/api/kv/";

/// The resource a request targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'u> {
    /// `/api/kv/{key}`, with the key still percent-encoded.
    Kv {
        /// Everything after `/api/kv/`, up to the query string.
        raw_key: &'u str,
    },
    /// `/api/kv`: listing keys by prefix.
    List,
    /// `/api/batch`: atomic batches of writes.
    Batch,
    /// `/api/admin/stats`: store size and compaction figures.
    AdminStats,
    /// `/api/admin/compact`: run a compaction now.
    AdminCompact,
    /// `/api/admin/export`: every key as JSON Lines.
    AdminExport,
    /// `/api/admin/snapshot`: a point-in-time image of the store.
    AdminSnapshot,
    /// `/api/admin/import`: keys from JSON Lines.
    AdminImport,
    /// `/api/admin/replication`: the node's role, epoch and followers.
    AdminReplication,
    /// `/api/admin/promote`: a follower becomes a primary.
    AdminPromote,
    /// `/api/replication/stream`: the log, for a follower.
    ReplicationStream,
    /// `/api/replication/ack`: a follower's confirmation.
    ReplicationAck,
    /// `/api/admin/digest`: the integrity digest of the keys under a prefix.
    AdminDigest,
    /// `/api/admin/mqtt`: the MQTT bridge's status.
    AdminMqtt,
    /// `/health`: is the node serving?
    Health,
    /// `/metrics`: Prometheus metrics.
    Metrics,
    /// `/api/watch`: live changes (Server-Sent Events or WebSocket).
    Watch,
    /// `/ui` and the files under `/ui/`: the web console.
    Ui,
    /// Nothing here.
    Unknown,
}

/// Maps a request target (path and optional query) to a route.
pub fn route(url: &str) -> Route<'_> {
    let path = url.split_once('?').map_or(url, |(path, _query)| path);
    if let Some(raw_key) = path.strip_prefix(KV_PREFIX) {
        return Route::Kv { raw_key };
    }
    match path {
        "/api/kv" => Route::List,
        "/api/batch" => Route::Batch,
        "/api/admin/stats" => Route::AdminStats,
        "/api/admin/compact" => Route::AdminCompact,
        "/api/admin/export" => Route::AdminExport,
        "/api/admin/snapshot" => Route::AdminSnapshot,
        "/api/admin/import" => Route::AdminImport,
        "/api/admin/replication" => Route::AdminReplication,
        "/api/admin/promote" => Route::AdminPromote,
        "/api/replication/stream" => Route::ReplicationStream,
        "/api/replication/ack" => Route::ReplicationAck,
        "/api/admin/digest" => Route::AdminDigest,
        "/api/admin/mqtt" => Route::AdminMqtt,
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        "/api/watch" => Route::Watch,
        "/ui" => Route::Ui,
        _ if path.starts_with("/ui/") => Route::Ui,
        _ => Route::Unknown,
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Nothing after `/api/kv/`.
    Empty,
    /// Longer than the configured limit once decoded.
    TooLong,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
    /// The decoded key contains a NUL byte.
    Nul,
}

/// Percent-decodes `raw` once into `out` (cleared first) and checks the
/// result: non-empty, at most `max_len` bytes, valid UTF-8 without NUL (which
/// too many tools take for the end of a string). `/` stays as is,
/// so `sensors/pi-1/temp` and `sensors%2Fpi-1%2Ftemp` name the same key.
///
/// Decoding is strict: a malformed escape is an error rather than being
/// passed through, so one key has exactly one spelling on the wire.
pub fn decode_key(raw: &str, out: &mut Vec<u8>, max_len: usize) -> Result<(), KeyError> {
    percent_decode(raw, out, max_len)?;
    if out.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(())
}

/// Percent-decodes `raw` once into `out` (cleared first), strictly as
/// [`decode_key`] does, but allowing an empty result. `+` stays `+`.
pub fn percent_decode(raw: &str, out: &mut Vec<u8>, max_len: usize) -> Result<(), KeyError> {
    out.clear();
    let bytes = raw.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte == b'%' {
            let high = bytes.get(at + 1).and_then(|&b| hex_value(b));
            let low = bytes.get(at + 2).and_then(|&b| hex_value(b));
            let (Some(high), Some(low)) = (high, low) else {
                return Err(KeyError::BadEscape);
            };
            out.push(high << 4 | low);
            at += 3;
        } else {
            out.push(byte);
            at += 1;
        }
        if out.len() > max_len {
            return Err(KeyError::TooLong);
        }
    }
    std::str::from_utf8(out).map_err(|_| KeyError::NotUtf8)?;
    if out.contains(&0) {
        return Err(KeyError::Nul);
    }
    Ok(())
}

/// `text` percent-encoded for a query string: every byte but letters,
/// digits, `-._~` and `/` escaped.
pub fn percent_encode(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(char::from(byte))
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &str, max_len: usize) -> Result<String, KeyError> {
        let mut out = Vec::new();
        decode_key(raw, &mut out, max_len).map(|()| String::from_utf8(out).unwrap())
    }

    #[test]
    fn routes() {
        assert_eq!(route("/api/kv/a"), Route::Kv { raw_key: "a" });
        assert_eq!(route("/api/kv/a/b?x=1"), Route::Kv { raw_key: "a/b" });
        assert_eq!(route("/api/kv/"), Route::Kv { raw_key: "" });
        assert_eq!(route("/api/kv"), Route::List);
        assert_eq!(route("/api/kv?prefix=a"), Route::List);
        assert_eq!(route("/api/batch"), Route::Batch);
        assert_eq!(route("/"), Route::Unknown);
        assert_eq!(route("/api/kvx/a"), Route::Unknown);
        assert_eq!(route("/api/admin/stats"), Route::AdminStats);
        assert_eq!(route("/api/admin/compact?x"), Route::AdminCompact);
        assert_eq!(route("/api/admin/export?prefix=a"), Route::AdminExport);
        assert_eq!(route("/api/admin/snapshot"), Route::AdminSnapshot);
        assert_eq!(route("/api/admin/import"), Route::AdminImport);
        assert_eq!(route("/api/admin/digest?prefix=a"), Route::AdminDigest);
        assert_eq!(route("/api/admin/other"), Route::Unknown);
        assert_eq!(route("/health"), Route::Health);
        assert_eq!(route("/metrics?x=1"), Route::Metrics);
        assert_eq!(route("/api/watch?prefix=a"), Route::Watch);
        assert_eq!(route("/api/watch/x"), Route::Unknown);
        assert_eq!(route("/ui"), Route::Ui);
        assert_eq!(route("/ui/app.js?v=1"), Route::Ui);
        assert_eq!(route("/uix"), Route::Unknown);
    }

    #[test]
    fn keys_are_decoded_once() {
        assert_eq!(
            decoded("sensors/pi-1/temp", 100).unwrap(),
            "sensors/pi-1/temp"
        );
        assert_eq!(decoded("sensors%2Fpi-1", 100).unwrap(), "sensors/pi-1");
        assert_eq!(decoded("a%2541", 100).unwrap(), "a%41");
        assert_eq!(decoded("caf%C3%A9", 100).unwrap(), "café");
        assert_eq!(decoded("a+b", 100).unwrap(), "a+b");
    }

    #[test]
    fn encoding_then_decoding_gives_the_text_back() {
        let text = "a b/ç&=%+?#";
        let encoded = percent_encode(text);
        assert_eq!(encoded, "a%20b/%C3%A7%26%3D%25%2B%3F%23");
        assert_eq!(decoded(&encoded, 100).unwrap(), text);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(decoded("", 100), Err(KeyError::Empty));
        assert_eq!(decoded("%zz", 100), Err(KeyError::BadEscape));
        assert_eq!(decoded("abc%4", 100), Err(KeyError::BadEscape));
        assert_eq!(decoded("abc%", 100), Err(KeyError::BadEscape));
        assert_eq!(decoded("%ff", 100), Err(KeyError::NotUtf8));
        assert_eq!(decoded("a%00b", 100), Err(KeyError::Nul));
        assert_eq!(decoded("a\0b", 100), Err(KeyError::Nul));
        assert_eq!(decoded("abcd", 3), Err(KeyError::TooLong));
        assert_eq!(decoded("%41%42%43", 3).unwrap(), "ABC");
        assert_eq!(decoded("%41%42%43%44", 3), Err(KeyError::TooLong));
    }
}
