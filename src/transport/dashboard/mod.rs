//! The live dashboard at `/`: a page, its scripts (the page's modules: the watchlist,
//! the candle chart, the order book's ladder, the latency histograms; and the worker's
//! that holds its WebSockets) and its style sheet, compiled into the binary so that a
//! node serves them without a build step, a CDN or files beside it.
//!
//! Every asset is answered with its content type, an `ETag` computed at compile time and
//! `Cache-Control: no-cache`: browsers keep a copy and revalidate it, so a new build is
//! picked up on the next load and an unchanged one costs a `304`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use hyper::{Response, StatusCode};

use super::reply::Body;

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: u64,
}

const fn asset(body: &'static [u8], content_type: &'static str) -> Asset {
    Asset {
        body,
        content_type,
        etag: fnv1a(body),
    }
}

/// FNV-1a, 64 bits: enough to tell one build's file from another's.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

static INDEX: Asset = asset(include_bytes!("index.html"), "text/html; charset=utf-8");
static APP_JS: Asset = asset(include_bytes!("app.js"), "text/javascript; charset=utf-8");
static CHART_JS: Asset = asset(include_bytes!("chart.js"), "text/javascript; charset=utf-8");
static BOOK_JS: Asset = asset(include_bytes!("book.js"), "text/javascript; charset=utf-8");
static LATENCY_JS: Asset = asset(
    include_bytes!("latency.js"),
    "text/javascript; charset=utf-8",
);
static FEED_JS: Asset = asset(include_bytes!("feed.js"), "text/javascript; charset=utf-8");
static STYLE_CSS: Asset = asset(include_bytes!("style.css"), "text/css; charset=utf-8");

/// What the page may load: only its own files (its worker too), and WebSocket/fetch to
/// its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; worker-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The dashboard's answer for `path` (`/`, `/index.html` or `/assets/…`), or `None`
/// when the path is not one of its files.
pub fn serve(path: &str, headers: &HeaderMap) -> Option<Response<Body>> {
    let a = match path {
        "/" | "/index.html" => &INDEX,
        "/assets/app.js" => &APP_JS,
        "/assets/chart.js" => &CHART_JS,
        "/assets/book.js" => &BOOK_JS,
        "/assets/latency.js" => &LATENCY_JS,
        "/assets/feed.js" => &FEED_JS,
        "/assets/style.css" => &STYLE_CSS,
        _ => return None,
    };
    let etag = format!("\"{:016x}\"", a.etag);
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()))
    } else {
        Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, a.content_type)
            .body(Full::new(Bytes::from_static(a.body)))
    }
    .unwrap_or_default();
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if std::ptr::eq(a, &INDEX) {
        h.insert("content-security-policy", HeaderValue::from_static(CSP));
        h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_has_its_type_and_unknown_paths_are_not_ours() {
        let none = HeaderMap::new();
        for (path, ty) in [
            ("/", "text/html; charset=utf-8"),
            ("/assets/app.js", "text/javascript; charset=utf-8"),
            ("/assets/chart.js", "text/javascript; charset=utf-8"),
            ("/assets/book.js", "text/javascript; charset=utf-8"),
            ("/assets/latency.js", "text/javascript; charset=utf-8"),
            ("/assets/feed.js", "text/javascript; charset=utf-8"),
            ("/assets/style.css", "text/css; charset=utf-8"),
        ] {
            let r = serve(path, &none).expect(path);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[CONTENT_TYPE], ty);
            assert_eq!(r.headers()[CACHE_CONTROL], "no-cache");
        }
        assert!(serve("/assets/missing.js", &none).is_none());
        assert!(serve("/v1/sse", &none).is_none());
    }

    #[test]
    fn a_matching_etag_is_not_modified_and_a_stale_one_gets_the_file() {
        let first = serve("/assets/app.js", &HeaderMap::new()).unwrap();
        let etag = first.headers()[ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, etag.clone());
        let again = serve("/assets/app.js", &h).unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[ETAG], etag);
        h.insert(
            IF_NONE_MATCH,
            HeaderValue::from_static("\"0000000000000000\""),
        );
        assert_eq!(
            serve("/assets/app.js", &h).unwrap().status(),
            StatusCode::OK
        );
    }
}
