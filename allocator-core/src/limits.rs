//! Bounds on what a framework or an agent may send, so that no single call can make the
//! allocator hold or send without limit. Each is far above what real frameworks use (Mesos
//! frameworks launch tens of tasks per ACCEPT; names are a few words).

use prost::Message;
use strata_proto::{FrameworkInfo, TaskInfo, ids::shorten};

/// The most tasks one ACCEPT may launch.
pub const MAX_TASKS_PER_ACCEPT: usize = 1000;

/// The most operations one ACCEPT may hold.
pub const MAX_OPERATIONS_PER_ACCEPT: usize = 1000;

/// The most offer ids one ACCEPT or DECLINE may name.
pub const MAX_OFFERS_PER_CALL: usize = 1000;

/// The largest task, encoded (command, environment, labels, resources together).
pub const MAX_TASK_BYTES: usize = 256 * 1024;

/// The longest framework name, user, hostname or principal, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The most roles one framework may subscribe with.
pub const MAX_ROLES_PER_FRAMEWORK: usize = 64;

/// The most errors one rejection message lists; the rest are counted.
pub const MAX_ERRORS_LISTED: usize = 5;

/// The longest one listed error, in bytes.
pub const MAX_ERROR_LEN: usize = 256;

/// The most task names one error lists; the rest are counted.
pub const MAX_NAMES_LISTED: usize = 10;

/// `errors` joined into one message of bounded length: the first [`MAX_ERRORS_LISTED`], each
/// cut to [`MAX_ERROR_LEN`], and how many more there were.
pub fn join_errors(errors: &[String]) -> String {
    let mut message = errors
        .iter()
        .take(MAX_ERRORS_LISTED)
        .map(|e| shorten(e, MAX_ERROR_LEN))
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > MAX_ERRORS_LISTED {
        message.push_str(&format!(
            "; and {} more errors",
            errors.len() - MAX_ERRORS_LISTED
        ));
    }
    message
}

/// What is wrong with a task's size, if anything.
pub fn check_task_size(task: &TaskInfo) -> Option<String> {
    let len = task.encoded_len();
    (len > MAX_TASK_BYTES).then(|| {
        format!(
            "task {:?} is {len} bytes encoded, more than the {MAX_TASK_BYTES} allowed: keep \
             large data out of the command and environment (fetch it in the sandbox)",
            shorten(&task.task_id, 64)
        )
    })
}

/// What is wrong with a framework's description, if anything: a field too long, too many
/// roles.
pub fn check_framework_info(info: &FrameworkInfo) -> Option<String> {
    for (field, value) in [
        ("name", &info.name),
        ("user", &info.user),
        ("hostname", &info.hostname),
    ] {
        if value.len() > MAX_NAME_LEN {
            return Some(format!(
                "the framework's {field} is {} bytes, more than the {MAX_NAME_LEN} allowed",
                value.len()
            ));
        }
    }
    if info.roles.len() > MAX_ROLES_PER_FRAMEWORK {
        return Some(format!(
            "the framework subscribes with {} roles, more than the {MAX_ROLES_PER_FRAMEWORK} \
             allowed",
            info.roles.len()
        ));
    }
    if info.offer_filters.len() > MAX_ROLES_PER_FRAMEWORK {
        return Some(format!(
            "the framework has offer filters for {} roles, more than the \
             {MAX_ROLES_PER_FRAMEWORK} allowed",
            info.offer_filters.len()
        ));
    }
    for (role, min) in &info.offer_filters {
        let role = shorten(role, 64);
        if min.quantities.len() > MAX_MIN_ALLOCATABLE_SETS {
            return Some(format!(
                "the offer filter of role {role:?} has {} sets of quantities, more than the \
                 {MAX_MIN_ALLOCATABLE_SETS} allowed",
                min.quantities.len()
            ));
        }
        for set in &min.quantities {
            if set.quantities.len() > MAX_MIN_ALLOCATABLE_SETS {
                return Some(format!(
                    "an offer filter of role {role:?} names {} resources, more than the \
                     {MAX_MIN_ALLOCATABLE_SETS} allowed",
                    set.quantities.len()
                ));
            }
            if let Some((name, value)) = set
                .quantities
                .iter()
                .find(|(n, v)| n.len() > MAX_NAME_LEN || !v.is_finite() || **v < 0.0)
            {
                return Some(format!(
                    "the offer filter of role {role:?} asks {:?} = {value}: give resource names \
                     with non-negative numbers",
                    shorten(name, 64)
                ));
            }
        }
    }
    None
}

/// The most sets of quantities in one role's offer filter, and names in one set.
pub const MAX_MIN_ALLOCATABLE_SETS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_message_is_bounded_however_many_errors() {
        let errors: Vec<String> = (0..10_000)
            .map(|i| format!("{i}: {}", "x".repeat(5000)))
            .collect();
        let message = join_errors(&errors);
        assert!(
            message.len() < MAX_ERRORS_LISTED * (MAX_ERROR_LEN + 10) + 64,
            "{}",
            message.len()
        );
        assert!(message.ends_with("; and 9995 more errors"), "{message}");
        assert_eq!(join_errors(&["a".to_owned(), "b".to_owned()]), "a; b");
    }

    #[test]
    fn oversized_tasks_and_framework_fields_are_named() {
        let mut t = TaskInfo {
            task_id: "t".into(),
            ..TaskInfo::default()
        };
        assert_eq!(check_task_size(&t), None);
        t.name = "n".repeat(MAX_TASK_BYTES);
        assert!(
            check_task_size(&t)
                .unwrap()
                .contains("more than the 262144 allowed")
        );
        let mut info = FrameworkInfo::default();
        assert_eq!(check_framework_info(&info), None);
        info.name = "x".repeat(5 * 1024 * 1024);
        assert!(
            check_framework_info(&info)
                .unwrap()
                .starts_with("the framework's name is 5242880 bytes")
        );
        info.name.clear();
        info.roles = vec!["r".into(); MAX_ROLES_PER_FRAMEWORK + 1];
        assert!(check_framework_info(&info).unwrap().contains("65 roles"));
    }
}
