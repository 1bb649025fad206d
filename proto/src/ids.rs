//! What a framework, task or agent id on the wire may be: the one rule the allocator, the
//! agent and the SDK check, because ids become file and cgroup names on agents
//! (`<work_dir>/runs/<framework_id>/<task_id>`, `.../containers/<framework_id>/<task_id>`).
//!
//! An id is 1 to [`MAX_ID_LEN`] bytes of printable characters, not `.` or `..`, and has no
//! `/`, `\`, NUL or control character. Mesos asks the same of task ids in its docs and its
//! validation (`common/validation.cpp`), without a length cap; the cap here keeps every path
//! built from two ids below the kernel's 255-byte name limit with room for the agent's own
//! suffixes.

use std::fmt;

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 200;

/// Why an id was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdError {
    /// What the id names: "task id", "framework id", "agent id".
    pub what: &'static str,
    /// The id, shortened to a readable length when long.
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} {:?}: {}; an id is 1 to {MAX_ID_LEN} printable characters without '/', \
             '\\' or control characters, and not \".\" or \"..\"",
            self.what, self.id, self.reason
        )
    }
}

impl std::error::Error for IdError {}

/// Checks `id` against the id rule; `what` names it in the error ("task id", ...).
pub fn check_id(what: &'static str, id: &str) -> Result<(), IdError> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > MAX_ID_LEN {
        Some("it is too long")
    } else if id == "." || id == ".." {
        Some("it names a directory")
    } else if id.contains(['/', '\\']) {
        Some("it contains a path separator")
    } else if id.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(IdError {
            what,
            id: shorten(id, 64),
            reason,
        }),
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with "…" when cut: for echoing
/// strings a peer sent back into errors and logs without echoing all of them.
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_pass() {
        for id in [
            "t1",
            "batch-0",
            "web.1",
            "a:b@c",
            "x".repeat(MAX_ID_LEN).as_str(),
            "ünï",
        ] {
            assert_eq!(check_id("task id", id), Ok(()), "{id}");
        }
    }

    #[test]
    fn ids_that_could_name_another_path_are_refused() {
        for id in [
            "",
            ".",
            "..",
            "../../../x",
            "/abs/path",
            "a/b",
            "a\\b",
            "a\0b",
            "a\nb",
            "\u{7f}",
        ] {
            let e = check_id("task id", id).unwrap_err();
            assert!(e.to_string().starts_with("invalid task id"), "{e}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            check_id("task id", &long).unwrap_err().reason,
            "it is too long"
        );
    }

    #[test]
    fn errors_echo_a_shortened_id() {
        let e = check_id("framework id", &format!("{}/", "é".repeat(1000))).unwrap_err();
        assert!(e.id.len() <= 64 + "…".len(), "{}", e.id.len());
        assert_eq!(shorten("abc", 2), "ab…");
        assert_eq!(shorten("éé", 3), "é…");
    }
}
