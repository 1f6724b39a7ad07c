//! A command's output on stdout. A reader that stops early (`piko ... | head`) ends the output
//! quietly; Rust's `print!` would panic.

use std::io::Write as _;

/// Writes `text` to stdout; a closed pipe is not an error.
pub(crate) fn write(text: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}
