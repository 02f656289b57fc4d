//! The shipped examples' commented defaults, for the tests that hold them equal to the code's.

/// The line `key = value` that `example` shows commented out (`#key = value`) in `section`
/// (`""`: before any table), without its trailing comment.
///
/// # Panics
///
/// When the example does not show it: an example that stops documenting a default fails
/// the test, as one that documents another value does.
#[must_use]
#[allow(clippy::panic, reason = "test support: a missing default is the test's failure")]
pub(crate) fn default_line(example: &str, section: &str, key: &str) -> String {
    let mut current = "";
    for line in example.lines() {
        // A table's line may carry a comment after it: `#[[alert.provider]]   # SMTP`.
        let bare = line.trim_start_matches('#').split('#').next().unwrap_or_default().trim();
        if let Some(table) = bare.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            current = table;
        } else if current == section {
            if let Some(value) = line.strip_prefix(&format!("#{key} = ")) {
                // Values here hold no `#`: what follows one is a comment.
                return format!("{key} = {}", value.split('#').next().unwrap_or_default().trim());
            }
        }
    }
    panic!("the example shows no commented default of `{key}` in [{section}]")
}
