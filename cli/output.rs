//! Writing results to stdout without panicking: a closed pipe (`cnnc build |
//! head -1`) ends the program quietly, any other write error (a full disk) is
//! reported as an error.

use std::io::Write;
use std::process::ExitCode;

/// Writes `text` to stdout and flushes. Returns the exit code to use:
/// success (also when the reader closed the pipe), or 1 with a message on
/// stderr for any other write error.
pub fn write_stdout(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: cannot write the output: {err}");
            ExitCode::from(1)
        }
    }
}
