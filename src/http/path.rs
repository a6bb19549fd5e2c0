//! The connection manager's path normalization, before routing: `normalize_path` (RFC 3986
//! dot segments and escapes, as the URL canonicalizer Envoy embeds does it),
//! `merge_slashes` and `path_with_escaped_slashes_action`. All work on the path only; the
//! query is carried over as it is.

use http::Uri;
use http::uri::PathAndQuery;

use crate::config::hcm::{EscapedSlashes, PathNormalization};

/// A path the steps refuse: an escaped slash under `Reject`, or a NUL the canonicalizer
/// found. Envoy answers both with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// What the steps made of a request's path.
#[derive(Debug, PartialEq, Eq)]
pub enum Normalized {
    /// Forward the request, its path as it is now.
    Forward,
    /// Redirect the client to this path (`UnescapeAndRedirect` unescaped a slash).
    Redirect(String),
}

/// Applies the steps to the request's URI in place.
pub fn normalize_uri(settings: &PathNormalization, uri: &mut Uri) -> Result<Normalized, Refused> {
    let Some(original) = uri.path_and_query() else {
        return Ok(Normalized::Forward);
    };
    let (Some(normalized), redirect) = normalize(settings, original.as_str())? else {
        return Ok(Normalized::Forward);
    };
    if redirect {
        return Ok(Normalized::Redirect(normalized));
    }
    let path_and_query = PathAndQuery::try_from(normalized).map_err(|_| Refused)?;
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(path_and_query);
    *uri = Uri::from_parts(parts).map_err(|_| Refused)?;
    Ok(Normalized::Forward)
}

/// `path_and_query` after the connection manager's path steps, in Envoy's order (escaped
/// slashes, then normalization, then merging slashes): the new one (`None` when it stays
/// as it is), and whether the client is to be redirected to it.
pub fn normalize(settings: &PathNormalization, path_and_query: &str) -> Result<(Option<String>, bool), Refused> {
    let (path, query) = match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    };
    let mut current = std::borrow::Cow::Borrowed(path);
    let mut redirect = false;
    if settings.escaped_slashes != EscapedSlashes::Keep && has_escaped_slash(&current) {
        match settings.escaped_slashes {
            EscapedSlashes::Reject => return Err(Refused),
            EscapedSlashes::UnescapeAndRedirect => redirect = true,
            EscapedSlashes::Keep | EscapedSlashes::UnescapeAndForward => {}
        }
        current = unescape_slashes(&current).into();
    }
    if settings.normalize {
        current = canonicalize(&current).ok_or(Refused)?.into();
    }
    if settings.merge_slashes && current.contains("//") {
        current = merge_slashes(&current).into();
    }
    let std::borrow::Cow::Owned(mut normalized) = current else {
        return Ok((None, false));
    };
    if normalized == path {
        return Ok((None, false));
    }
    normalized.push_str(query);
    Ok((Some(normalized), redirect))
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// The byte a `%XY` at `at` stands for.
fn escaped_at(bytes: &[u8], at: usize) -> Option<u8> {
    match bytes.get(at..at + 3) {
        Some([b'%', high, low]) => Some(hex_value(*high)? << 4 | hex_value(*low)?),
        _ => None,
    }
}

fn is_escaped_slash(bytes: &[u8], at: usize) -> bool {
    matches!(escaped_at(bytes, at), Some(b'/' | b'\\'))
}

fn has_escaped_slash(path: &str) -> bool {
    let bytes = path.as_bytes();
    (0..bytes.len()).any(|at| is_escaped_slash(bytes, at))
}

fn unescape_slashes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut at = 0;
    while at < bytes.len() {
        if is_escaped_slash(bytes, at) {
            out.push(escaped_at(bytes, at).map_or('/', char::from));
            at += 3;
        } else {
            let next = path[at..].chars().next().expect("at a char boundary");
            out.push(next);
            at += next.len_utf8();
        }
    }
    out
}

/// Collapses runs of `/` into one.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// How the canonicalizer treats a byte in a path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as it is, raw or escaped.
    Pass,
    /// Written escaped (`%XX`) when raw; kept escaped.
    Escape,
    /// Written raw when escaped: the unreserved characters.
    Unescape,
    /// Refused (NUL), raw or escaped.
    Invalid,
}

fn class(byte: u8) -> Class {
    match byte {
        0 => Class::Invalid,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => Class::Unescape,
        0x01..=0x20
        | b'"'
        | b'#'
        | b'%'
        | b'<'
        | b'>'
        | b'?'
        | b'\\'
        | b'^'
        | b'`'
        | b'{'
        | b'|'
        | b'}'
        | 0x7f..=0xff => Class::Escape,
        _ => Class::Pass,
    }
}

/// The length of a dot (`.`, `%2e` or `%2E`) at `at`, 0 if there is none.
fn dot_len(bytes: &[u8], at: usize) -> usize {
    match bytes.get(at) {
        Some(b'.') => 1,
        Some(b'%') if bytes.get(at + 1) == Some(&b'2') && matches!(bytes.get(at + 2), Some(b'e' | b'E')) => 3,
        _ => 0,
    }
}

fn is_slash(byte: Option<&u8>) -> bool {
    matches!(byte, Some(b'/' | b'\\'))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `byte` as `%XX` (upper-case hex).
pub(crate) fn push_escaped(out: &mut Vec<u8>, byte: u8) {
    out.extend_from_slice(&[b'%', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
}

/// Removes the last segment of `out`, which ends with `/`, keeping that segment's leading
/// slash; never above the path's first slash.
fn up_one_segment(out: &mut Vec<u8>) {
    let without_trailing = &out[..out.len() - 1];
    let keep = without_trailing.iter().rposition(|&b| b == b'/').map_or(1, |slash| slash + 1);
    out.truncate(keep.max(1));
}

/// Canonicalizes a path the way the URL canonicalizer Envoy embeds does: `.` and `..`
/// segments (also written `%2e`) resolved, never above the root; `\` made `/`; unreserved
/// characters unescaped; characters a path may not carry raw escaped; other escapes and
/// malformed `%` sequences kept as they are; repeated slashes kept. `None`: a NUL, which
/// Envoy answers with 400.
pub fn canonicalize(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 1);
    if !is_slash(bytes.first()) {
        out.push(b'/');
    }
    // Where in `out` a `%` that began no valid escape sits, to catch escapes that only
    // form once an inner one is decoded ("%%30%30" must not become "%00").
    let mut stray_percent: Option<usize> = None;
    let mut valid = true;
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        let dot = dot_len(bytes, at);
        if dot > 0 {
            if out.last() == Some(&b'/') {
                let after = at + dot;
                if after == bytes.len() || is_slash(bytes.get(after)) {
                    // "." : skip it and its slash.
                    at = after + usize::from(after < bytes.len());
                    continue;
                }
                let second = dot_len(bytes, after);
                let after_second = after + second;
                if second > 0 && (after_second == bytes.len() || is_slash(bytes.get(after_second))) {
                    // "..": up one segment.
                    up_one_segment(&mut out);
                    if stray_percent.is_some_and(|p| p >= out.len()) {
                        stray_percent = None;
                    }
                    at = after_second + usize::from(after_second < bytes.len());
                    continue;
                }
            }
            out.push(b'.');
            at += dot;
            continue;
        }
        match byte {
            b'\\' => out.push(b'/'),
            b'%' => match escaped_at(bytes, at) {
                Some(decoded) => {
                    match class(decoded) {
                        Class::Unescape => {
                            out.push(decoded);
                            if let Some(percent) = stray_percent
                                && percent + 3 >= out.len()
                            {
                                fix_nested_escape(&mut out, percent, bytes.get(at + 3).copied());
                            }
                        }
                        kind => {
                            out.extend_from_slice(&bytes[at..at + 3]);
                            valid &= kind != Class::Invalid;
                        }
                    }
                    at += 3;
                    continue;
                }
                None => {
                    stray_percent = Some(out.len());
                    out.push(b'%');
                }
            },
            _ => match class(byte) {
                Class::Invalid => {
                    push_escaped(&mut out, byte);
                    valid = false;
                }
                Class::Escape => push_escaped(&mut out, byte),
                Class::Pass | Class::Unescape => out.push(byte),
            },
        }
        at += 1;
    }
    // Only ASCII was written raw; everything else went out escaped.
    valid.then(|| String::from_utf8(out).expect("canonical paths are ASCII"))
}

/// After an unescape just behind a stray `%` at `percent`: if `%` and what follows it
/// (with the next input byte, when only one character follows yet) now read as a valid
/// escape, the `%` is written as `%25`, so the output cannot decode to more than the
/// input meant.
fn fix_nested_escape(out: &mut Vec<u8>, percent: usize, next: Option<u8>) {
    let mut probe = out[percent..].to_vec();
    if probe.len() == 2 {
        match next {
            Some(next) if next < 0x80 => probe.push(next),
            _ => return,
        }
    }
    if escaped_at(&probe, 0).is_some() {
        out.splice(percent + 1..percent + 1, *b"25");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(path: &str) -> String {
        canonicalize(path).unwrap_or_else(|| "(refused)".to_owned())
    }

    #[test]
    fn dot_segments_resolve_and_never_climb_above_the_root() {
        assert_eq!(canon("/a/./b/../c"), "/a/c");
        assert_eq!(canon("/a/b/.."), "/a/");
        assert_eq!(canon("/a/b/."), "/a/b/");
        assert_eq!(canon("/../../x"), "/x");
        assert_eq!(canon("/a/%2e%2E/b"), "/b");
        assert_eq!(canon("/a/.%2e/b"), "/b");
        assert_eq!(canon("/a/..b/c"), "/a/..b/c");
        assert_eq!(canon("/a/b./c"), "/a/b./c");
        assert_eq!(canon("/a\\..\\b"), "/b");
    }

    #[test]
    fn escapes_are_unescaped_kept_or_added_by_character() {
        assert_eq!(canon("/%41%62%7e%2D"), "/Ab~-");
        assert_eq!(canon("/a%2fb%2Fc"), "/a%2fb%2Fc");
        assert_eq!(canon("/a b\"<>^`{|}"), "/a%20b%22%3C%3E%5E%60%7B%7C%7D");
        assert_eq!(canon("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(canon("/!$&'()*+,;=:@[]"), "/!$&'()*+,;=:@[]");
        assert_eq!(canon("/100%"), "/100%");
        assert_eq!(canon("/%zz"), "/%zz");
        assert_eq!(canon("/a//b"), "/a//b");
        assert_eq!(canon("a"), "/a");
    }

    #[test]
    fn escapes_hidden_in_escapes_stay_escapes() {
        assert_eq!(canon("/%%30%30"), "/%2500");
        assert_eq!(canon("/%%300"), "/%2500");
        assert_eq!(canon("/%%41"), "/%A");
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(canonicalize("/a%00b"), None);
    }

    #[test]
    fn the_steps_apply_in_envoys_order_and_leave_the_query() {
        let all = PathNormalization { normalize: true, merge_slashes: true, escaped_slashes: EscapedSlashes::Keep };
        assert_eq!(normalize(&all, "/a//./b/../c?x=/../y"), Ok((Some("/a/c?x=/../y".to_owned()), false)));
        assert_eq!(normalize(&all, "/a/b?q"), Ok((None, false)));
        let forward = PathNormalization { escaped_slashes: EscapedSlashes::UnescapeAndForward, ..all };
        assert_eq!(normalize(&forward, "/a%2F..%2fb%5cc"), Ok((Some("/b/c".to_owned()), false)));
        let redirect = PathNormalization { escaped_slashes: EscapedSlashes::UnescapeAndRedirect, ..all };
        assert_eq!(normalize(&redirect, "/a%2Fb?q"), Ok((Some("/a/b?q".to_owned()), true)));
        assert_eq!(normalize(&redirect, "/a/./b"), Ok((Some("/a/b".to_owned()), false)), "no escaped slash: forwarded");
        let reject = PathNormalization { escaped_slashes: EscapedSlashes::Reject, ..all };
        assert_eq!(normalize(&reject, "/a%2fb"), Err(Refused));
        assert_eq!(normalize(&all, "/%00"), Err(Refused));
    }
}
