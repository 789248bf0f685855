//! What the routes read from a request: its query parameters, its bearer token, and
//! whether that token grants a role.

use std::sync::atomic::Ordering;

use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};

use super::reply::{text, Body};
use crate::auth::Claims;
use crate::node::Node;

/// The value of the query parameter `name`, percent-decoded; the first if it repeats.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The token of an `Authorization: Bearer` header (the scheme is case-insensitive,
/// RFC 9110 §11.1).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks the request's token for `role` when the node has auth enabled: `Ok(None)`
/// without auth, `Ok(Some(claims))` with a good token, else the 401/403 response. The
/// token comes from `Authorization: Bearer` or, failing that, the `token` query
/// parameter; every authenticated route (`/v1/ws`, `/v1/sse`, `/v1/publish`,
/// `/v1/snapshot`) calls this.
pub fn authorize<B>(
    node: &Node,
    req: &Request<B>,
    role: &str,
) -> Result<Option<Claims>, Box<Response<Body>>> {
    let Some(auth) = &node.auth else {
        return Ok(None);
    };
    let header = bearer(req.headers()).map(str::to_owned);
    let token = header.or_else(|| query_param(req.uri().query(), "token"));
    match auth.check(token.as_deref(), role) {
        Ok(claims) => Ok(Some(claims)),
        Err(refusal) => {
            crate::metrics::global()
                .auth_refused
                .fetch_add(1, Ordering::Relaxed);
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::UNAUTHORIZED);
            let mut resp = text(status, &format!("{}\n", refusal.message));
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Err(Box::new(resp))
        }
    }
}
