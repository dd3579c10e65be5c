//! Progress while a scenario runs: a bar on stderr when it is a terminal
//! (how far through the run, and what has been done so far at what rate),
//! nothing when it is not, so that logs and pipes get only the report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` steps named `what`, hidden off a terminal.
pub fn steps(what: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    // Constant templates: they parse.
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{elapsed}] {bar:30} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A timed run of `duration`: the bar moves with the clock, and says once
/// a second how many requests `done` has counted and their rate.
pub struct Timed {
    bar: ProgressBar,
    done: Arc<AtomicU64>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Timed {
    pub fn start(what: &str, duration: Duration) -> Timed {
        let bar = steps(what, duration.as_secs().max(1));
        let done = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (bar, done) = (bar.clone(), done.clone());
            tokio::spawn(async move {
                let mut last = 0;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let now = done.load(Ordering::Relaxed);
                    bar.inc(1);
                    bar.set_message(format!("{now} done, {}/s", now - last));
                    last = now;
                }
            })
        };
        Timed { bar, done, ticker }
    }

    /// What the load's tasks count their requests with.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
