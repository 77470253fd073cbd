//! Terminal output of the long-running commands: a progress bar on stderr when it is a
//! terminal (hidden otherwise), and log lines that do not tear the bar.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar log lines must step around, if one is showing.
static SHOWING: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A byte progress bar on stderr if it is a terminal, else a hidden one (which still
/// counts). Its length is set once the work is known.
pub fn bar() -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    *SHOWING.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
    bar
}

/// Forgets the bar: log lines go straight to stderr again.
pub fn clear() {
    *SHOWING.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Log lines to stderr, with the level from `CAIRN_LOG` (tracing's filter syntax) or
/// `default`.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .with_ansi(io::stderr().is_terminal())
        .try_init();
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = SHOWING.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf))?,
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
