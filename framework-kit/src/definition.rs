//! What the frameworks' definitions (jobs, apps) share: names that become parts of task ids,
//! TOML or JSON text, durations as `"90s"` or seconds.

use serde::de::DeserializeOwned;

/// Why `id` cannot name a job or an app, if it cannot: 1 to `max` bytes of lower-case letters,
/// digits and `-`, not starting or ending with `-` (never `.`, which separates the parts of the
/// frameworks' task ids).
pub fn check_name(id: &str, max: usize) -> Result<(), &'static str> {
    if id.is_empty() {
        Err("it is empty")
    } else if id.len() > max {
        Err("it is too long")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Err("it holds a character other than a-z, 0-9 and '-'")
    } else if id.starts_with('-') || id.ends_with('-') {
        Err("it starts or ends with '-'")
    } else {
        Ok(())
    }
}

/// A definition from JSON (text starting with `{`) or TOML; the error names the format.
pub fn parse_text<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("json: {e}"))
    } else {
        toml::from_str(text).map_err(|e| format!("toml: {}", e.to_string().trim_end()))
    }
}

/// Durations as `"90s"`, `"5m"`, `"1h"` (strata_common's parser) or whole seconds.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum Raw {
        Text(String),
        Seconds(u64),
    }

    pub fn parse<'de, D: Deserializer<'de>>(raw: Raw) -> Result<Duration, D::Error> {
        match raw {
            Raw::Seconds(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => strata_common::parse::duration(&t).map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse::<D>(Raw::deserialize(d)?)
    }

    pub fn format_duration(d: Duration) -> String {
        if d.subsec_millis() != 0 {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs())
        }
    }

    pub use Raw as RawDuration;
}

pub mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::duration::RawDuration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::duration::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<RawDuration>::deserialize(d)? {
            None => Ok(None),
            Some(raw) => super::duration::parse::<D>(raw).map(Some),
        }
    }
}
