//! Durations as the original Mube (a Go program) wrote them: `500ms`, `5s`, `1m30s`.

use std::time::Duration;

/// Parses a Go-style duration. `humantime` accepts Go's unit spellings and
/// concatenated forms such as `1m30s`; a bare `0` is accepted as Go does.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} ({e}); use forms like 500ms, 5s, 1m30s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert!(parse("soon").is_err());
        assert!(parse("").is_err());
        assert!(parse("5").is_err());
    }
}
