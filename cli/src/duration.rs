//! Durations on the command line (`500ms`, `5s`, `2m`, `1h`, or plain seconds such as `1.5`)
//! and short ages in tables (`12s`, `3m`, `2h`, `4d`).

use std::time::Duration;

/// Parses `500ms`, `5s`, `2m`, `1h` or plain (possibly fractional) seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid =
        || format!("invalid duration {text:?}: use e.g. 500ms, 5s, 2m, 1h or plain seconds");
    let (number, unit_seconds) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| invalid())?;
    if !value.is_finite() || value < 0.0 {
        return Err(invalid());
    }
    Duration::try_from_secs_f64(value * unit_seconds).map_err(|_| invalid())
}

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

/// A duration as people write it on the command line: `500ms`, `5s`, `1.5s`, `2m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_plain_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_garbage_with_advice() {
        for bad in ["", "s", "-1s", "5x", "ten", "inf"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("use e.g. 500ms"), "{err}");
        }
    }

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
