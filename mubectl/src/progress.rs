//! Progress for operations people wait on (`delete --wait`, many objects
//! at once): a bar on stderr when it is a terminal, nothing otherwise, so
//! that scripts and pipes see only the results on stdout.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` steps, shown only when stderr is a terminal and
/// there is something to wait for (`total` > 1, or `waiting`).
pub fn bar(total: u64, waiting: bool) -> ProgressBar {
    if total <= 1 && !waiting {
        return ProgressBar::hidden();
    }
    // `stderr()` hides itself when stderr is not a terminal.
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    // The template is a constant: it parses.
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
