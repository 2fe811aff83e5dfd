//! Checks of a CronJob schedule and time zone before the operator hands them to the API
//! server, so that a mistyped `spec.backup.schedule` is reported on the `QpqCluster` (and
//! only the CronJob is skipped) instead of failing the apply.
//!
//! The grammar is the one Kubernetes accepts (robfig/cron's standard parser): five fields
//! (minute, hour, day of month, month, day of week) of `*`, `?` (day fields), numbers, names
//! (`JAN`–`DEC`, `SUN`–`SAT`), ranges `a-b`, steps `*/n`, `a/n`, `a-b/n` and comma lists; or one
//! of the descriptors `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
//! `@hourly`. `TZ=` prefixes are refused (Kubernetes refuses them with `timeZone`, and
//! `timeZone` says the same thing cleanly).

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// Value of the first name.
    names_from: u32,
    question_mark: bool,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
        question_mark: false,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
        question_mark: false,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 0,
        question_mark: true,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        names_from: 1,
        question_mark: false,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &DAYS,
        names_from: 0,
        question_mark: true,
    },
];

impl Field {
    fn value(&self, text: &str) -> Result<u32, String> {
        let v = match text.parse::<u32>() {
            Ok(n) => n,
            Err(_) => self
                .names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(text))
                .and_then(|i| u32::try_from(i).ok())
                .map(|i| i + self.names_from)
                .ok_or_else(|| format!("{}: {text:?} is not a number or a name", self.name))?,
        };
        if v < self.min || v > self.max {
            return Err(format!(
                "{}: {v} is outside {}-{}",
                self.name, self.min, self.max
            ));
        }
        Ok(v)
    }

    fn check(&self, text: &str) -> Result<(), String> {
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (part, None),
            };
            if let Some(s) = step {
                match s.parse::<u32>() {
                    Ok(n) if n > 0 => {}
                    _ => {
                        return Err(format!(
                            "{}: step {s:?} is not a positive number",
                            self.name
                        ));
                    }
                }
            }
            match range {
                "*" => {}
                "?" if self.question_mark && step.is_none() => {}
                r => match r.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (self.value(a)?, self.value(b)?);
                        if a > b {
                            return Err(format!("{}: range {r:?} runs backwards", self.name));
                        }
                    }
                    None => {
                        self.value(r)?;
                    }
                },
            }
        }
        Ok(())
    }
}

/// Whether `schedule` is a cron schedule a CronJob accepts; the reason if not.
pub fn check_cron(schedule: &str) -> Result<(), String> {
    let s = schedule.trim();
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err("a time zone prefix is not allowed: use spec.backup.timeZone".into());
    }
    if s.starts_with('@') {
        return match s {
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
            | "@hourly" => Ok(()),
            _ => Err(format!("{s:?} is not a known descriptor")),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != FIELDS.len() {
        return Err(format!(
            "{} fields, a cron schedule has 5 (minute hour day-of-month month day-of-week)",
            fields.len()
        ));
    }
    for (f, text) in FIELDS.iter().zip(fields) {
        f.check(text)?;
    }
    Ok(())
}

/// Whether `zone` is an IANA time zone name (from the bundled time zone database, the same
/// names the CronJob controller looks up).
pub fn check_time_zone(zone: &str) -> Result<(), String> {
    jiff::tz::TimeZone::get(zone)
        .map(|_| ())
        .map_err(|_| format!("{zone:?} is not an IANA time zone name"))
}

/// Whether the backup CronJob of `b` would be accepted: its schedule and time zone. `at`
/// names where `b` sits in the object (`spec.backup`) for the message.
pub fn check_backup(b: &crate::crd::BackupSpec, at: &str) -> Result<(), String> {
    check_cron(&b.schedule).map_err(|e| format!("{at}.schedule {:?}: {e}", b.schedule))?;
    match &b.time_zone {
        Some(z) => check_time_zone(z).map_err(|e| format!("{at}.timeZone: {e}")),
        None => Ok(()),
    }
}

/// Whether the restore-drill CronJob of `b` would be accepted: its schedule (if any).
pub fn check_drill(b: &crate::crd::BackupSpec, at: &str) -> Result<(), String> {
    match &b.drill_schedule {
        Some(s) => check_cron(s).map_err(|e| format!("{at}.drillSchedule {s:?}: {e}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_kubernetes_accepts_are_accepted() {
        for s in [
            "0 3 * * *",
            "*/15 * * * *",
            "0 0 1 1 *",
            "5 4 * * SUN",
            "0 22 * * mon-fri",
            "0 0,12 1-15/2 JAN-JUN ?",
            "59 23 31 12 7",
            "@daily",
            "@hourly",
            "  30 2 * * 1  ",
        ] {
            assert_eq!(check_cron(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn typos_are_refused_with_a_reason() {
        for (s, why) in [
            ("0 3 * *", "4 fields"),
            ("0 3 * * * *", "6 fields"),
            ("60 3 * * *", "minute: 60"),
            ("0 24 * * *", "hour: 24"),
            ("0 3 0 * *", "day of month: 0"),
            ("0 3 * 13 *", "month: 13"),
            ("0 3 * * 8", "day of week: 8"),
            ("0 3 * FOO *", "month: \"FOO\""),
            ("*/0 * * * *", "step"),
            ("0 5-3 * * *", "backwards"),
            ("? * * * *", "minute: \"?\""),
            ("@fortnightly", "descriptor"),
            ("TZ=UTC 0 3 * * *", "timeZone"),
            ("daily", "1 fields"),
            ("", "0 fields"),
        ] {
            let e = check_cron(s).expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn time_zones_are_looked_up() {
        assert_eq!(check_time_zone("Europe/Paris"), Ok(()));
        assert_eq!(check_time_zone("UTC"), Ok(()));
        assert!(check_time_zone("Europe/Pariss").is_err());
        assert!(check_time_zone("").is_err());
    }
}
