//! Access control lists in the spirit of Mesos' (`--acls`): rules that allow principals an
//! action on some objects. When authentication is on, what no rule allows is denied.
//!
//! The file (TOML):
//!
//! ```toml
//! [[allow]]
//! principals = ["ops"]                      # who; "*" any authenticated principal, "team-*" a prefix
//! actions = ["set_quota", "update_weights"] # what
//! objects = ["*"]                           # on what (roles, users, ...); "*" when omitted
//!
//! [[allow]]
//! principals = ["batch"]
//! actions = ["register_frameworks"]
//! objects = ["batch", "default"]            # roles it may subscribe with
//! ```
//!
//! The object of each action: a role for `register_frameworks`, `reserve`, `unreserve`,
//! `set_quota` and `update_weights`; the user a task runs as for `run_tasks`; the agent's
//! principal for `register_agents`; an agent id for `drain_agents`; the principal of the
//! framework acted on for `teardown_frameworks`, `view_frameworks`, `view_tasks`,
//! `view_sandboxes` and `profile_tasks`.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// Something a principal may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Register (and re-register) as an agent.
    RegisterAgents,
    /// Subscribe a framework with a role.
    RegisterFrameworks,
    /// Launch tasks that run as a user.
    RunTasks,
    /// Reserve resources for a role.
    Reserve,
    /// Undo reservations of a role.
    Unreserve,
    /// Set a role's quota.
    SetQuota,
    /// Set a role's weight.
    UpdateWeights,
    /// Drain, deactivate or reactivate an agent.
    DrainAgents,
    /// Tear down a framework.
    TeardownFrameworks,
    /// See frameworks (state, lists, the operator watch stream).
    ViewFrameworks,
    /// See tasks and their usage.
    ViewTasks,
    /// Read task sandboxes.
    ViewSandboxes,
    /// Profile running tasks (an agent's `/profile`).
    ProfileTasks,
}

impl Action {
    /// Every action, for documentation and validation.
    pub const ALL: [Self; 13] = [
        Self::RegisterAgents,
        Self::RegisterFrameworks,
        Self::RunTasks,
        Self::Reserve,
        Self::Unreserve,
        Self::SetQuota,
        Self::UpdateWeights,
        Self::DrainAgents,
        Self::TeardownFrameworks,
        Self::ViewFrameworks,
        Self::ViewTasks,
        Self::ViewSandboxes,
        Self::ProfileTasks,
    ];

    /// The action's name in ACL files.
    pub fn name(self) -> &'static str {
        match self {
            Self::RegisterAgents => "register_agents",
            Self::RegisterFrameworks => "register_frameworks",
            Self::RunTasks => "run_tasks",
            Self::Reserve => "reserve",
            Self::Unreserve => "unreserve",
            Self::SetQuota => "set_quota",
            Self::UpdateWeights => "update_weights",
            Self::DrainAgents => "drain_agents",
            Self::TeardownFrameworks => "teardown_frameworks",
            Self::ViewFrameworks => "view_frameworks",
            Self::ViewTasks => "view_tasks",
            Self::ViewSandboxes => "view_sandboxes",
            Self::ProfileTasks => "profile_tasks",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rule: these principals may do these actions on these objects.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Who: names, `*` (any authenticated principal) or a prefix ending in `*`.
    pub principals: Vec<String>,
    /// What.
    pub actions: Vec<Action>,
    /// On what: names, `*` or prefixes ending in `*`; any when omitted.
    #[serde(default = "any")]
    pub objects: Vec<String>,
}

fn any() -> Vec<String> {
    vec!["*".to_owned()]
}

/// The rules of an ACL file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acls {
    /// The rules; an action is allowed when any rule allows it.
    #[serde(default)]
    pub allow: Vec<Rule>,
}

/// Why an ACL file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("cannot read the ACL file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid ACL file.
    #[error("the ACL file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        reason: String,
    },
}

impl Acls {
    /// Parses ACLs from TOML; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, AclError> {
        let acls: Self = toml::from_str(text).map_err(|e| AclError::Invalid {
            path: origin.to_owned(),
            reason: e.to_string().trim().to_owned(),
        })?;
        for rule in &acls.allow {
            if rule.principals.is_empty() || rule.actions.is_empty() || rule.objects.is_empty() {
                return Err(AclError::Invalid {
                    path: origin.to_owned(),
                    reason: "every [[allow]] rule needs principals, actions and (if given) \
                             objects that are not empty"
                        .to_owned(),
                });
            }
        }
        Ok(acls)
    }

    /// Loads an ACL file.
    pub fn load(path: &Path) -> Result<Self, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// ACLs that allow `principals` every action on everything (what `strata local` and
    /// `strata certs init` start from).
    pub fn allow_all(principals: &[&str]) -> Self {
        Self {
            allow: vec![Rule {
                principals: principals.iter().map(|p| (*p).to_owned()).collect(),
                actions: Action::ALL.to_vec(),
                objects: any(),
            }],
        }
    }

    /// Whether a rule allows `principal` to do `action` on `object`.
    pub fn allows(&self, principal: &str, action: Action, object: &str) -> bool {
        self.allow.iter().any(|rule| {
            rule.actions.contains(&action)
                && rule.principals.iter().any(|p| matches(p, principal))
                && rule.objects.iter().any(|o| matches(o, object))
        })
    }
}

/// `pattern` is `*`, a prefix ending in `*`, or an exact name.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The decision-maker of one server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Authentication is off: every caller may do everything (`strata local` on loopback,
    /// or `--insecure`).
    #[default]
    Open,
    /// Authentication is on: a caller must be authenticated, and an ACL rule must allow it.
    Enforced(Acls),
}

/// An action refused: who, what, on what, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The caller presented no credentials.
    #[error(
        "authentication required to {action}: present a client certificate signed by the \
         cluster's CA, or a bearer token (strata --token, STRATA_TOKEN; HTTP Basic with the \
         principal and its token on the Mesos API)"
    )]
    Unauthenticated {
        /// What it tried.
        action: Action,
    },
    /// No rule allows it.
    #[error(
        "principal {principal:?} may not {action} {object:?}: no rule of the ACL file allows it; \
         an operator can add one ([[allow]] principals = [{principal:?}], actions = [\"{action}\"])"
    )]
    Forbidden {
        /// Who.
        principal: String,
        /// What.
        action: Action,
        /// On what.
        object: String,
    },
}

impl Policy {
    /// Whether authentication is on.
    pub fn enforced(&self) -> bool {
        matches!(self, Self::Enforced(_))
    }

    /// Decides whether `principal` (none: unauthenticated) may do `action` on `object`.
    pub fn check(
        &self,
        principal: Option<&str>,
        action: Action,
        object: &str,
    ) -> Result<(), Denied> {
        let Self::Enforced(acls) = self else {
            return Ok(());
        };
        let Some(principal) = principal else {
            return Err(Denied::Unauthenticated { action });
        };
        if acls.allows(principal, action, object) {
            Ok(())
        } else {
            Err(Denied::Forbidden {
                principal: principal.to_owned(),
                action,
                object: strata_short(object),
            })
        }
    }
}

/// An object echoed in an error, cut to a readable length.
fn strata_short(s: &str) -> String {
    if s.len() <= 128 {
        return s.to_owned();
    }
    let mut end = 128;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[allow]]
principals = ["ops"]
actions = ["set_quota", "update_weights", "view_frameworks"]

[[allow]]
principals = ["team-*"]
actions = ["register_frameworks"]
objects = ["batch", "web-*"]
"#;

    #[test]
    fn rules_allow_what_they_name_and_nothing_else() {
        let acls = Acls::parse(FILE, "acls.toml").unwrap();
        assert!(acls.allows("ops", Action::SetQuota, "anything"));
        assert!(!acls.allows("ops", Action::Reserve, "anything"));
        assert!(!acls.allows("opsx", Action::SetQuota, "r"));
        assert!(acls.allows("team-a", Action::RegisterFrameworks, "batch"));
        assert!(acls.allows("team-a", Action::RegisterFrameworks, "web-1"));
        assert!(!acls.allows("team-a", Action::RegisterFrameworks, "prod"));
        assert!(!acls.allows("team", Action::RegisterFrameworks, "batch"));
    }

    #[test]
    fn an_open_policy_allows_everything_and_an_enforced_one_denies_by_default() {
        assert_eq!(Policy::Open.check(None, Action::SetQuota, "r"), Ok(()));
        let policy = Policy::Enforced(Acls::parse(FILE, "acls.toml").unwrap());
        let e = policy.check(None, Action::SetQuota, "r").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("authentication required to set_quota"),
            "{e}"
        );
        assert_eq!(policy.check(Some("ops"), Action::SetQuota, "r"), Ok(()));
        let e = policy
            .check(Some("eve"), Action::TeardownFrameworks, "ops")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("principal \"eve\" may not teardown_frameworks \"ops\""),
            "{e}"
        );
        let empty = Policy::Enforced(Acls::default());
        assert!(empty.check(Some("ops"), Action::ViewTasks, "x").is_err());
    }

    #[test]
    fn invalid_files_are_refused_with_the_reason() {
        let e = Acls::parse(
            "[[allow]]\nprincipals = [\"a\"]\nactions = [\"fly\"]\n",
            "f",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant `fly`"), "{e}");
        let e =
            Acls::parse("[[allow]]\nprincipals = []\nactions = [\"reserve\"]\n", "f").unwrap_err();
        assert!(e.to_string().contains("needs principals"), "{e}");
        let e = Acls::parse("[[deny]]\n", "f").unwrap_err();
        assert!(e.to_string().contains("unknown field `deny`"), "{e}");
    }

    #[test]
    fn allow_all_grants_every_action() {
        let acls = Acls::allow_all(&["admin"]);
        for action in Action::ALL {
            assert!(acls.allows("admin", action, "x"), "{action}");
            assert!(!acls.allows("other", action, "x"), "{action}");
        }
    }
}
