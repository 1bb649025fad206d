//! The commands' output on stdout.
//!
//! A reader that stops early (`strata frameworks --json | head -1`) closes the pipe; Rust
//! ignores SIGPIPE, so the next write fails with EPIPE, on which `print!` panics. The commands
//! print with [`out!`] and [`outln!`] instead: a closed stdout becomes the error
//! [`StdoutClosed`], which ends the command through the usual `?` path, and `main` then exits
//! quietly with status 0, as if the whole output had been read.

use std::fmt;
use std::io;

/// Like `print!`, but returns an `anyhow::Result`, [`StdoutClosed`] when the reader has gone.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write_stdout(::std::format_args!($($arg)*))
    };
}

/// Like `println!`, but returns an `anyhow::Result`, [`StdoutClosed`] when the reader has gone.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::write_stdout(::std::format_args!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// Stdout was closed by its reader: the command stops, and `strata` exits quietly with status 0.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `args` to stdout and flushes it (what [`out!`] and [`outln!`] call).
pub fn write_stdout(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    write_to(&mut io::stdout().lock(), args)
}

fn write_to(out: &mut impl io::Write, args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("cannot write to stdout"),
        })
}

/// Whether `error` is, or was caused by, a closed stdout.
pub fn is_stdout_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<StdoutClosed>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone.
    struct ClosedPipe;

    impl io::Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_told_apart_from_other_write_errors() {
        let err = write_to(&mut ClosedPipe, format_args!("a table\n")).expect_err("closed");
        assert!(is_stdout_closed(&err), "{err:#}");
        assert!(is_stdout_closed(&err.context("printing the agents")));

        let full = io::Error::from(io::ErrorKind::StorageFull);
        let err = write_to(
            &mut io::Cursor::new(&mut [0u8; 2][..]),
            format_args!("too long"),
        )
        .expect_err("no room");
        assert!(!is_stdout_closed(&err), "{err:#}");
        assert!(
            format!("{err:#}").contains("cannot write to stdout"),
            "{err:#}"
        );
        assert!(!is_stdout_closed(&anyhow::Error::new(full)));

        let mut text = Vec::new();
        write_to(&mut text, format_args!("{}\n", 42)).expect("written");
        assert_eq!(text, b"42\n");
    }
}
