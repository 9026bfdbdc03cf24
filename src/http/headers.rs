//! Request headers the routes read, parsed once into types.

use std::convert::Infallible;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
};

/// `If-None-Match`: the entity tags a client already holds (RFC 9110 §13.1.2).
#[derive(Debug, Default)]
pub struct IfNoneMatch {
    /// `*`: any current representation.
    any: bool,
    /// The tags, quoted, with any weak prefix `W/` removed.
    tags: Vec<String>,
}

impl IfNoneMatch {
    /// Every `If-None-Match` header of a request, comma-separated lists included; unreadable
    /// values are ignored.
    pub fn parse(headers: &HeaderMap) -> IfNoneMatch {
        let mut out = IfNoneMatch::default();
        for tag in headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
        {
            if tag == "*" {
                out.any = true;
            } else {
                out.tags
                    .push(tag.strip_prefix("W/").unwrap_or(tag).to_owned());
            }
        }
        out
    }

    /// Whether the client holds `etag` (a quoted strong tag), so the answer is a 304. The
    /// comparison is weak, as the RFC asks for this header: `W/"x"` matches `"x"`.
    pub fn matches(&self, etag: &str) -> bool {
        self.any || self.tags.iter().any(|t| t == etag)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(IfNoneMatch::parse(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::IfNoneMatch;

    fn with(values: &[&str]) -> IfNoneMatch {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        }
        IfNoneMatch::parse(&h)
    }

    #[test]
    fn matches_weakly_across_lists_and_headers() {
        assert!(with(&["\"a\""]).matches("\"a\""));
        assert!(with(&["W/\"a\""]).matches("\"a\""));
        assert!(with(&["\"x\", W/\"a\""]).matches("\"a\""));
        assert!(with(&["\"x\"", "\"a\""]).matches("\"a\""));
        assert!(with(&["*"]).matches("\"a\""));
        assert!(!with(&["\"x\""]).matches("\"a\""));
        assert!(!with(&[]).matches("\"a\""));
    }
}
