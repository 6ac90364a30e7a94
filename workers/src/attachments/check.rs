//! What a file really is: the content type sniffed from its bytes, checked
//! against what the client declared and an allow-list, and a safe name.

/// Content types accepted, with their category.
pub const ALLOWED: &[(&str, &str)] = &[
    ("image/png", "image"),
    ("image/jpeg", "image"),
    ("image/gif", "image"),
    ("image/webp", "image"),
    ("application/pdf", "document"),
    ("text/plain", "document"),
    ("text/csv", "document"),
    ("application/zip", "document"),
    ("application/msword", "document"),
    ("application/vnd.ms-excel", "document"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "document"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "document"),
    ("application/vnd.openxmlformats-officedocument.presentationml.presentation", "document"),
];

/// Types with no magic number, accepted when the bytes are UTF-8 text.
const TEXT: &[&str] = &["text/plain", "text/csv"];

/// A stable reason to refuse a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub reason: String,
}

fn reject(code: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection { code, reason: reason.into() }
}

/// `image/jpg` and friends, lower case, parameters dropped.
pub fn normalize(mime: &str) -> String {
    let m = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match m.as_str() {
        "image/jpg" | "image/pjpeg" => "image/jpeg".into(),
        "application/x-pdf" => "application/pdf".into(),
        _ => m,
    }
}

pub fn category(mime: &str) -> Option<&'static str> {
    ALLOWED.iter().find(|(m, _)| *m == mime).map(|(_, c)| *c)
}

/// Checks a file from its first bytes (`head`, at least a few KiB when the
/// file is that large) and its total size. Returns the detected type and
/// its category.
pub fn inspect(head: &[u8], size: u64, declared: &str) -> Result<(String, &'static str), Rejection> {
    if size == 0 {
        return Err(reject("empty_file", "the file is empty"));
    }
    let declared = normalize(declared);
    let detected = match infer::get(head) {
        Some(t) => normalize(t.mime_type()),
        None if TEXT.contains(&declared.as_str()) && std::str::from_utf8(text_prefix(head)).is_ok() => declared.clone(),
        None => return Err(reject("unknown_type", "the content type cannot be recognised from the bytes")),
    };
    // Office documents are zip files; a declared one that sniffs as a plain
    // zip is accepted as declared only when infer recognised nothing finer.
    let same = detected == declared
        || (detected == "application/zip" && declared.starts_with("application/vnd.openxmlformats"));
    if !same {
        return Err(reject("content_mismatch", format!("declared {declared} but the bytes are {detected}")));
    }
    match category(&declared) {
        Some(c) => Ok((declared, c)),
        None => Err(reject("type_not_allowed", format!("{declared} files are not accepted"))),
    }
}

/// The head without a possibly cut multi-byte character at its end.
fn text_prefix(head: &[u8]) -> &[u8] {
    match std::str::from_utf8(head) {
        Ok(_) => head,
        Err(e) if e.error_len().is_none() => &head[..e.valid_up_to()],
        Err(_) => head,
    }
}

/// The last path component of a client's file name, with characters that
/// are unsafe in file names removed, at most 200 bytes; never empty.
pub fn sanitize(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut clean = sanitize_filename::sanitize(base).trim().trim_start_matches('.').to_string();
    while clean.len() > 200 {
        clean.pop();
    }
    if clean.is_empty() { "file".into() } else { clean }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    /// The first bytes of an x86-64 ELF executable.
    fn elf() -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0\x01\0\0\0".to_vec();
        v.resize(128, 0);
        v
    }

    #[test]
    fn accepts_what_it_is() {
        assert_eq!(inspect(PNG, 100, "image/png").unwrap(), ("image/png".into(), "image"));
        assert_eq!(inspect(PNG, 100, "image/PNG; charset=x").unwrap().0, "image/png");
        assert_eq!(inspect(b"%PDF-1.7\n", 100, "application/pdf").unwrap().1, "document");
        assert_eq!(inspect("a,b\n1,2".as_bytes(), 7, "text/csv").unwrap().0, "text/csv");
    }

    #[test]
    fn refuses_what_it_is_not() {
        assert_eq!(inspect(&elf(), 100, "image/png").unwrap_err().code, "content_mismatch");
        assert_eq!(inspect(&elf(), 100, "application/x-executable").unwrap_err().code, "type_not_allowed");
        assert_eq!(inspect(b"", 0, "image/png").unwrap_err().code, "empty_file");
        assert_eq!(inspect(&[0xff, 0xfe, 0x00, 0x01], 4, "text/plain").unwrap_err().code, "unknown_type");
        assert_eq!(inspect(b"plain words", 11, "image/png").unwrap_err().code, "unknown_type");
    }

    #[test]
    fn sanitizes_names() {
        assert_eq!(sanitize("../../etc/passwd"), "passwd");
        assert_eq!(sanitize("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(sanitize("ok name.png"), "ok name.png");
        assert_eq!(sanitize("../"), "file");
        assert_eq!(sanitize(".hidden"), "hidden");
        assert!(sanitize(&"a".repeat(500)).len() <= 200);
        assert_eq!(sanitize("a\u{0}b<c>.txt"), "abc.txt");
    }
}
