//! Printing errors for people.

/// An error with its causes ("error sending request: ...: Connection
/// refused"): HTTP client errors alone often do not say what went wrong.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The innermost cause ("Connection refused (os error 111)"): what a person
/// needs when the layers above only say "error sending request".
pub fn root_cause(e: &dyn std::error::Error) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
