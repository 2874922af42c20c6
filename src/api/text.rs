//! Rules for free text the merchant sends. Control characters are refused outright: NUL cannot
//! be stored in PostgreSQL text, and CR/LF in a URL or reference ends up in headers and logs.

/// A reference such as an order id: 1..=`max` characters, no control characters.
pub fn single_line(s: &str, max: usize) -> Result<(), String> {
    if s.trim().is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(format!(
            "must be 1 to {max} characters without control characters"
        ));
    }
    Ok(())
}

/// Prose such as a description or a reason: at most `max` characters; line breaks and tabs are
/// allowed, other control characters are not.
pub fn free_text(s: &str, max: usize) -> Result<(), String> {
    if s.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if s.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(
            "must not contain control characters other than line breaks and tabs".to_owned(),
        );
    }
    Ok(())
}

/// An absolute http(s) URL of at most 2048 characters, exactly as it will be stored: no
/// whitespace or control characters (the URL parser would silently drop them).
pub fn http_url(s: &str) -> Result<(), String> {
    let ok = s.len() <= 2048
        && !s.chars().any(|c| c.is_control() || c.is_whitespace())
        && url::Url::parse(s)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if ok {
        Ok(())
    } else {
        Err("must be an absolute http(s) URL of at most 2048 characters without spaces".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_characters_not_bytes() {
        assert!(single_line(&"я".repeat(128), 128).is_ok());
        assert!(single_line(&"я".repeat(129), 128).is_err());
        assert!(free_text(&"ў".repeat(500), 500).is_ok());
    }

    #[test]
    fn refuses_control_characters() {
        assert!(single_line("a\u{0}b", 10).is_err());
        assert!(single_line("a\nb", 10).is_err());
        assert!(single_line("   ", 10).is_err());
        assert!(free_text("line 1\r\nline 2\tend", 50).is_ok());
        assert!(free_text("nul\u{0}", 50).is_err());
        assert!(free_text("esc\u{1b}[31m", 50).is_err());
    }

    #[test]
    fn urls_are_stored_as_given() {
        assert!(http_url("https://shop.example/thanks?o=1").is_ok());
        for bad in [
            "https://shop.example/\r\nSet-Cookie: x=1",
            "https://shop.example/\u{0}x",
            "https://a b",
            "ftp://x.example",
            "/relative",
            "https://",
            "mailto:a@b.c",
        ] {
            assert!(http_url(bad).is_err(), "{bad:?}");
        }
    }
}
