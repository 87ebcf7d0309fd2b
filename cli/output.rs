//! Writing results to stdout without panicking: a closed pipe (`cnnc build |
//! head -1`) ends the program quietly, any other write error (a full disk) is
//! reported as an error.

use std::io::Write;
use std::process::ExitCode;

/// Why writing to stdout failed.
#[derive(Debug)]
pub enum StdoutError {
    /// The reader went away (`| head -1`): stop quietly, with success.
    Closed,
    /// Any other write error, e.g. `> /dev/full`.
    Failed(std::io::Error),
}

/// Writes `text` to stdout and flushes.
pub fn try_write_stdout(text: &str) -> Result<(), StdoutError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutError::Closed),
        Err(err) => Err(StdoutError::Failed(err)),
    }
}

/// Writes `text` to stdout and returns the exit code to use: success (also
/// when the reader closed the pipe), or 1 with a message on stderr for any
/// other write error.
pub fn write_stdout(text: &str) -> ExitCode {
    match try_write_stdout(text) {
        Ok(()) | Err(StdoutError::Closed) => ExitCode::SUCCESS,
        Err(StdoutError::Failed(err)) => {
            eprintln!("error: cannot write the output: {err}");
            ExitCode::from(1)
        }
    }
}
