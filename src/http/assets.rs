//! The web console's files as compiled into the binary (`ui/` in the
//! source tree, gzipped at build time by `build.rs`), and the security
//! headers every one of them is served with. A leaf: the handler
//! (`super::ui`) picks a file, `super::reply` writes it out.

/// One file of the console.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    /// Its name under `/ui/`.
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its `ETag` (quoted), a hash of its bytes.
    pub etag: &'static str,
    /// Its bytes.
    pub plain: &'static [u8],
    /// Its bytes, gzipped.
    pub gzipped: &'static [u8],
}

/// Every file of the console, made by `build.rs`.
pub static ASSETS: &[Asset] = include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// How an asset is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As is.
    Plain,
    /// Gzipped (`Content-Encoding: gzip`).
    Gzip,
    /// Not at all: `304 Not Modified`, the client's copy is current.
    NotModified,
}

/// Headers on every reply of the console's files. The policy allows
/// scripts, styles and API calls from this origin only, images from
/// values shown through `blob:` URLs, and nothing else; no inline code.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self'; img-src 'self' blob: data:; \
         object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    // Revalidate every time (a 304 when unchanged): a new binary may
    // bring new files under the same names.
    ("Cache-Control", "no-cache"),
];
