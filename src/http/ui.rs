//! The web console at `/ui`: a few static files (`ui/` in the source tree)
//! compiled into the binary, gzipped at build time (`build.rs`), and served
//! with an `ETag` (so a browser revalidates with a 304), gzip when the
//! client accepts it, and strict security headers: a Content Security
//! Policy that allows this origin's files only (no inline script or style),
//! no framing, no referrer. The files themselves need no token; the API
//! calls the console makes do, like anyone's. `ui.enabled: false` turns it
//! off (404).

use lucid_http::Request;

use super::assets::{Asset, Encoding, ASSETS};
use super::headers::first as header;
use super::reply::Reply;

/// Where the console asks whether it must sign in: `{"authentication":
/// true}` or `false` (the node answers `/api/*` without a token when off).
const AUTH_PATH: &str = "/ui/auth.json";

/// Answers a request for `/ui` or a file under `/ui/`; `url` is its
/// target; `authentication`: whether the API needs tokens.
pub fn handle(request: &Request, url: &str, authentication: bool) -> Reply<'static> {
    let path = url.split_once('?').map_or(url, |(path, _query)| path);
    if path == AUTH_PATH {
        let body = if authentication {
            r#"{"authentication":true}"#
        } else {
            r#"{"authentication":false}"#
        };
        return Reply::json(200, body);
    }
    let Some(asset) = find(path) else {
        return Reply::message(
            404,
            "No such file of the web console: open /ui/ for the console.",
        );
    };
    let encoding = if matches_etag(header(request, "If-None-Match"), asset.etag) {
        Encoding::NotModified
    } else if accepts_gzip(header(request, "Accept-Encoding")) {
        Encoding::Gzip
    } else {
        Encoding::Plain
    };
    Reply::Asset { asset, encoding }
}

/// The asset `path` names: `/ui` and `/ui/` are the page itself.
fn find(path: &str) -> Option<&'static Asset> {
    let name = match path {
        "/ui" | "/ui/" => "index.html",
        _ => path.strip_prefix("/ui/")?,
    };
    ASSETS.iter().find(|asset| asset.name == name)
}

/// Whether an `If-None-Match` value names `etag` (or is `*`).
fn matches_etag(if_none_match: Option<&str>, etag: &str) -> bool {
    if_none_match.is_some_and(|tags| {
        tags.split(',')
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == "*" || tag == etag)
    })
}

/// Whether an `Accept-Encoding` value accepts gzip (named without `q=0`).
fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|codings| {
        codings.split(',').any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_files() {
        assert_eq!(find("/ui").unwrap().name, "index.html");
        assert_eq!(find("/ui/").unwrap().name, "index.html");
        assert_eq!(find("/ui/app.js").unwrap().name, "app.js");
        assert_eq!(find("/ui/app.css").unwrap().name, "app.css");
        assert!(find("/ui/../Cargo.toml").is_none());
        assert!(find("/ui/nothing").is_none());
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        assert!(accepts_gzip(Some("gzip, deflate, br")));
        assert!(accepts_gzip(Some("br;q=1.0, GZIP;q=0.5")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("deflate")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn etags_match_as_lists() {
        assert!(matches_etag(Some(r#""a", "b""#), r#""b""#));
        assert!(matches_etag(Some(r#"W/"b""#), r#""b""#));
        assert!(matches_etag(Some("*"), r#""b""#));
        assert!(!matches_etag(Some(r#""a""#), r#""b""#));
        assert!(!matches_etag(None, r#""b""#));
    }

    #[test]
    fn the_console_is_small() {
        let total: usize = ASSETS.iter().map(|asset| asset.gzipped.len()).sum();
        assert!(total <= 100 * 1024, "{total} bytes gzipped");
    }
}
