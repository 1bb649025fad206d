//! Short ages in tables (`12s`, `3m`, `2h`, `4d`). Durations on the command line are read and
//! printed by `strata_common::parse`.

/// A compact age: `45s`, `3m`, `2h`, `4d` (`-` for an unknown or future time).
pub fn format_age(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use strata_common::parse::format_duration;

    #[test]
    fn ages_and_durations_are_compact() {
        assert_eq!(format_age(0.4), "0s");
        assert_eq!(format_age(59.0), "59s");
        assert_eq!(format_age(61.0), "1m");
        assert_eq!(format_age(7300.0), "2h");
        assert_eq!(format_age(3.0 * 86400.0), "3d");
        assert_eq!(format_age(-5.0), "-");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }
}
