//! A cron expression read in an IANA time zone: the instants it fires at.
//!
//! Daylight saving time follows croner's rules (the Open Cron Pattern Specification): a
//! wall-clock time that a spring-forward gap skips fires at the first instant after the gap; a
//! time that a fall-back fold repeats fires once, at its earlier instance; patterns with a
//! wildcard or step in the hour fire at each real instant that matches.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A schedule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The expression does not parse.
    #[error(
        "invalid cron expression {cron:?}: {reason}; use 5 fields: minute hour day-of-month month day-of-week"
    )]
    Cron {
        /// The expression.
        cron: String,
        /// The parser's words.
        reason: String,
    },
    /// The zone is not in the tz database.
    #[error("unknown time zone {zone:?}: use an IANA name like UTC or Europe/Berlin ({reason})")]
    Zone {
        /// The zone.
        zone: String,
        /// Why.
        reason: String,
    },
}

/// A parsed cron expression in its zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    zone: TimeZone,
}

impl Schedule {
    /// Parses a 5-field expression (seconds and years are not allowed) in `zone`.
    pub fn new(cron: &str, zone: &str) -> Result<Self, ScheduleError> {
        if cron.len() > 256 {
            return Err(ScheduleError::Cron {
                cron: strata_proto::ids::shorten(cron, 64),
                reason: "it is too long".into(),
            });
        }
        let parsed = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|e| ScheduleError::Cron {
                cron: cron.to_owned(),
                reason: e.to_string(),
            })?;
        let tz = TimeZone::get(zone).map_err(|e| ScheduleError::Zone {
            zone: strata_proto::ids::shorten(zone, 64),
            reason: e.to_string(),
        })?;
        Ok(Self {
            cron: parsed,
            zone: tz,
        })
    }

    /// The first instant strictly after `after` that the schedule fires at; `None` when there
    /// is none within croner's search limit (a pattern like `0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let zoned = after.to_zoned(self.zone.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn fires(schedule: &Schedule, from: &str, to: &str) -> Vec<String> {
        let end = at(to);
        let mut out = Vec::new();
        let mut t = at(from);
        while let Some(next) = schedule.next_after(t) {
            if next > end {
                break;
            }
            out.push(next.to_string());
            t = next;
        }
        out
    }

    #[test]
    fn every_minute_in_utc() {
        let s = Schedule::new("* * * * *", "UTC").unwrap();
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", "2026-01-01T00:03:00Z"),
            [
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:02:00Z",
                "2026-01-01T00:03:00Z"
            ]
        );
        // Strictly after: mid-minute goes to the next minute.
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:30Z")),
            Some(at("2026-01-01T00:01:00Z"))
        );
    }

    #[test]
    fn a_daily_time_in_the_spring_forward_gap_fires_right_after_the_gap() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
        let s = Schedule::new("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&s, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z"),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT, the first instant after the gap
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ]
        );
    }

    #[test]
    fn a_daily_time_in_the_fall_back_fold_fires_once() {
        // New York, 2026-11-01: 02:00 EDT goes back to 01:00 EST; 01:30 happens twice.
        let s = Schedule::new("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&s, "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z"),
            [
                "2026-10-31T05:30:00Z", // 01:30 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT, the earlier of the two
                "2026-11-02T06:30:00Z", // 01:30 EST
            ]
        );
    }

    #[test]
    fn hourly_across_the_fall_back_fold_fires_every_real_hour() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET. An hourly job runs at
        // each real hour, 25 of them that day.
        let s = Schedule::new("0 * * * *", "Europe/Berlin").unwrap();
        let day = fires(&s, "2026-10-24T21:59:00Z", "2026-10-25T22:59:00Z");
        assert_eq!(day.len(), 25, "{day:?}");
        let mut t = at("2026-10-24T21:59:00Z");
        let ts: Vec<Timestamp> = std::iter::from_fn(|| {
            t = s.next_after(t)?;
            (t <= at("2026-10-25T22:59:00Z")).then_some(t)
        })
        .collect();
        assert!(
            ts.windows(2)
                .all(|w| w[1].duration_since(w[0]).as_secs() == 3600),
            "{day:?}"
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        assert!(matches!(
            Schedule::new("* * * *", "UTC"),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(matches!(
            Schedule::new("0 * * * * *", "UTC"),
            Err(ScheduleError::Cron { .. })
        ));
        assert!(matches!(
            Schedule::new("* * * * *", "Nowhere/Else"),
            Err(ScheduleError::Zone { .. })
        ));
        assert!(Schedule::new("0 9 * * MON-FRI", "Asia/Tokyo").is_ok());
    }
}
