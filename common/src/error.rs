//! Errors as people read them: the whole chain on one line, or the short cause.

use std::error::Error as StdError;

/// An error and its sources, joined with ": ", each message once (a source whose text is
/// already in the line is skipped).
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// A short description of `err` for people: the innermost I/O error's kind when there is one
/// that says it all (`connection refused`), otherwise the innermost message, tidied.
pub fn short(err: &(dyn StdError + 'static)) -> String {
    let mut innermost: &(dyn StdError + 'static) = err;
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return short_io(io);
        }
        innermost = e;
        current = e.source();
    }
    tidy(&innermost.to_string())
}

/// An I/O error's kind for the network failures people recognise, else its message.
pub fn short_io(io: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match io.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
        | AddrNotAvailable | TimedOut | BrokenPipe | HostUnreachable | NetworkUnreachable
        | NetworkDown => io.kind().to_string(),
        _ => tidy(&io.to_string()),
    }
}

/// Lower-cases the first letter and drops an ` (os error N)` suffix.
pub fn tidy(message: &str) -> String {
    let message = match message.find(" (os error") {
        Some(i) => &message[..i],
        None => message,
    };
    let mut chars = message.trim().chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach the allocator")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_joins_sources_without_repeats() {
        let e = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(chain(&e), "cannot reach the allocator: connection refused");
        let same = Outer(std::io::Error::other("cannot reach the allocator"));
        assert_eq!(chain(&same), "cannot reach the allocator");
    }

    #[test]
    fn the_short_form_is_the_io_kind_or_the_tidied_innermost_message() {
        let e = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(short(&e), "connection refused");
        let e = Outer(std::io::Error::from_raw_os_error(2));
        assert_eq!(short(&e), "no such file or directory");
        assert_eq!(tidy("Permission denied (os error 13)"), "permission denied");
    }
}
