//! `multipart/related` framing (RFC 2387) for WADO-RS answers, and the
//! boundary of STOW-RS requests.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// A boundary no stored byte sequence is likely to contain: a fixed
/// prefix, the process id, a counter and the time.
pub(super) fn new_boundary() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "imageserver-{:x}-{:x}-{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `Content-Type` of a whole answer whose parts are of `part_type`.
pub(super) fn content_type(boundary: &str, part_type: &str) -> String {
    format!("multipart/related; type=\"{part_type}\"; boundary={boundary}")
}

/// The delimiter and headers that open a part.
pub(super) fn part_header(boundary: &str, content_type: &str, length: Option<u64>) -> Bytes {
    let mut text = format!("--{boundary}\r\nContent-Type: {content_type}\r\n");
    if let Some(length) = length {
        text.push_str(&format!("Content-Length: {length}\r\n"));
    }
    text.push_str("\r\n");
    Bytes::from(text)
}

/// What ends a part's body (before the next part header or the close).
pub(super) const PART_END: &[u8] = b"\r\n";

/// The close delimiter.
pub(super) fn close(boundary: &str) -> Bytes {
    Bytes::from(format!("--{boundary}--\r\n"))
}

/// The boundary and part type of a request's `multipart/related`
/// `Content-Type`, if it is one.
pub(super) fn parse_content_type(value: &str) -> Option<(String, Option<String>)> {
    let mut params = value.split(';');
    let media = params.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/related") {
        return None;
    }
    let (mut boundary, mut part_type) = (None, None);
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match name.trim().to_ascii_lowercase().as_str() {
            "boundary" => boundary = Some(value),
            "type" => part_type = Some(value),
            _ => {}
        }
    }
    Some((boundary?, part_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_parse() {
        assert_eq!(
            parse_content_type("multipart/related; type=\"application/dicom\"; boundary=abc"),
            Some(("abc".to_string(), Some("application/dicom".to_string())))
        );
        assert_eq!(
            parse_content_type("Multipart/Related;boundary=\"x y\""),
            Some(("x y".to_string(), None))
        );
        assert_eq!(parse_content_type("multipart/related; type=a"), None);
        assert_eq!(parse_content_type("application/dicom"), None);
        let boundary = new_boundary();
        assert_ne!(boundary, new_boundary());
        assert!(content_type(&boundary, "application/dicom").contains(&boundary));
    }
}
