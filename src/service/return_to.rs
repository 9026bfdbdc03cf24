//! Where a sign-in may send the browser back to: a path of this server, after the browser's
//! own normalisation (an open redirect otherwise).

/// The longest `return_to` kept: a URL of this server that a sign-in brings the user back to
/// is short; a longer one is refused rather than stored.
pub const MAX_RETURN_TO: usize = 2048;

/// A `return_to` is followed only to a path of this server. It is resolved against our public
/// URL as a browser resolves a link (the `url` crate implements the WHATWG URL standard that
/// browsers follow: `.` and `..` segments, `%2e` for a dot, default ports), must land on our
/// origin with no userinfo, and comes back as the path and query alone. That path starts with
/// exactly one `/`, never followed by `/` or `\` (which a browser reads as the start of
/// another host's address), so every browser resolves the `Location` it becomes to our origin.
/// `None`: refused.
pub fn safe_return_to(return_to: &str, public_url: &str) -> Option<String> {
    // Browsers drop tabs and newlines anywhere in a URL (`/\t/evil` is `//evil`) and read `\`
    // as `/`: any control character or backslash refuses it, before trimming or parsing could
    // make them disappear unseen.
    if return_to.len() > MAX_RETURN_TO || return_to.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    let r = return_to.trim();
    // A path, or an absolute http(s) URL with an authority. Anything else (`evil.example`,
    // `http:evil.example`, `javascript:…`) is not a way anyone writes a link to this server.
    let lower = r.get(..8).unwrap_or(r).to_ascii_lowercase();
    if !(r.starts_with('/') || lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let ours = openidconnect::url::Url::parse(public_url).ok()?;
    let theirs = ours.join(r).ok()?;
    if theirs.origin() != ours.origin()
        || !theirs.username().is_empty()
        || theirs.password().is_some()
    {
        return None;
    }
    // After normalisation: `http://us//evil`, `/.//evil` and `/%2e%2e//evil` are all `//evil`
    // here. An encoded `/` or `\` first is refused too: browsers keep it encoded, but a page
    // or proxy that decodes the path before redirecting again would not.
    let path = theirs.path();
    let after_slash = path.strip_prefix('/')?;
    let head = after_slash
        .get(..3)
        .unwrap_or(after_slash)
        .to_ascii_lowercase();
    if after_slash.starts_with('/') || head == "%2f" || head == "%5c" {
        return None;
    }
    let mut out = path.to_owned();
    if let Some(q) = theirs.query() {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_on_our_origin() {
        let ours = "https://atelier.example.org";
        // (return_to, the Location it becomes)
        let followed = [
            ("/projects/7?x=1", "/projects/7?x=1"),
            ("https://atelier.example.org/a?b=c", "/a?b=c"),
            ("https://ATELIER.example.org:443/a", "/a"),
            ("HTTPS://atelier.example.org", "/"),
            ("  /padded  ", "/padded"),
            ("/a/./b/../c", "/a/c"),
            ("/a/%2e%2E/c", "/c"),
            ("/../../etc", "/etc"),
            ("/%2e/x", "/x"),
            ("/a//b", "/a//b"),
            ("/caf\u{e9} ok", "/caf%C3%A9%20ok"),
            ("/x#frag", "/x"),
            ("/x?next=//evil.example", "/x?next=//evil.example"),
        ];
        for (given, location) in followed {
            assert_eq!(
                safe_return_to(given, ours).as_deref(),
                Some(location),
                "{given:?}"
            );
            // What it becomes is followed as it is.
            assert_eq!(
                safe_return_to(location, ours).as_deref(),
                Some(location),
                "{location:?}"
            );
        }
        let refused = [
            // Another host, however spelled.
            "//evil.example/x",
            "///evil.example",
            "https://evil.example/",
            "https://atelier.example.org.evil.example/",
            "https://atelier.example.org@evil.example/",
            "http:evil.example",
            "https:evil.example",
            "http:/evil.example",
            "javascript:alert(1)",
            "data:text/html,x",
            "evil.example",
            "?x=1",
            // Our origin, then a path a browser reads as another host's.
            "https://atelier.example.org//evil.example/phish",
            "https://atelier.example.org/.//evil.example",
            "/.//evil.example",
            "/./..//evil.example",
            "/a/..//evil.example",
            "/%2e%2e//evil.example",
            "/%2E./%2e//evil.example",
            "https://atelier.example.org/%2e%2e//evil.example",
            // Encoded slashes and backslashes first.
            "/%2F%2Fevil.example",
            "/%2fevil.example",
            "/%5Cevil.example",
            "/%5c%5cevil.example",
            // Backslashes, tabs and newlines, which browsers drop or read as `/`.
            "/\\evil.example",
            "\\\\evil.example",
            "https://atelier.example.org\\@evil.example/",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "\t//evil.example",
            "/ok\n",
            "/ok\u{0}",
            // Our host, but not our origin, or with userinfo.
            "http://atelier.example.org/",
            "https://atelier.example.org:8443/",
            "wss://atelier.example.org/",
            "https://user@atelier.example.org/",
            "https://user:pw@atelier.example.org/",
            "https://:pw@atelier.example.org/",
            "",
            "   ",
        ];
        for bad in refused {
            assert_eq!(safe_return_to(bad, ours), None, "{bad:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_RETURN_TO));
        assert_eq!(safe_return_to(&long, ours), None);
        // Under a public URL with a path, every path of the origin is still ours.
        assert_eq!(
            safe_return_to("/graphql", "https://school.example/atelier/").as_deref(),
            Some("/graphql")
        );
    }
}
