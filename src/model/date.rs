//! Calendar dates in UTC, as `YYYY-MM-DD`: parsed from configs, printed in findings.

/// `YYYY-MM-DD` as the Unix time of its midnight UTC.
#[must_use]
pub fn parse(s: &str) -> Option<i64> {
    let mut parts = s.trim().splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let month_days = [
        31,
        if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[usize::try_from(m - 1).ok()?] {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400)
}

/// Now, as the time since the Unix epoch (zero on a clock set before 1970): the one place
/// usersync reads the wall clock.
#[must_use]
pub fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Now, as Unix seconds.
#[must_use]
pub fn now() -> i64 {
    i64::try_from(since_epoch().as_secs()).unwrap_or(i64::MAX)
}

/// Now, as unsigned Unix seconds.
#[must_use]
pub fn now_secs() -> u64 {
    since_epoch().as_secs()
}

/// The UTC date of a Unix time, as `YYYY-MM-DD`.
#[must_use]
pub fn format(unix: i64) -> String {
    // Civil from days (Howard Hinnant's algorithm).
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse("1970-01-01"), Some(0));
        assert_eq!(parse("2027-05-01"), Some(1_809_129_600));
        assert_eq!(parse("2024-02-29"), Some(1_709_164_800));
        for bad in ["2023-02-29", "2027-13-01", "27-05-01", "2027-5-1", "soon"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips() {
        for d in ["1970-01-01", "2000-02-29", "2027-05-01", "2099-12-31"] {
            assert_eq!(format(parse(d).unwrap()), d);
        }
        assert_eq!(format(parse("2027-05-01").unwrap() + 86_399), "2027-05-01");
    }
}
