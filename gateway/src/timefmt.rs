//! Times as people read them: RFC 3339 in UTC, to the second. One function, so the
//! gateway's messages, the portal, the audit verifier and `hersectl` all agree, and none
//! of them can be crashed by a time out of range.

/// The latest time humantime can format: 9999-12-31T23:59:59Z, in Unix microseconds.
const MAX_MICROS: i64 = 253_402_300_799_000_000;

/// Unix microseconds as an RFC 3339 time (seconds precision, UTC). Times before 1970
/// or after 9999 are clamped: humantime would panic past 9999, and times come from
/// databases and recordings that may have been tampered with.
pub fn rfc3339(micros: i64) -> String {
    humantime::format_rfc3339_seconds(clamped(micros)).to_string()
}

/// The same to the microsecond, for machine readers (syslog).
pub fn rfc3339_micros(micros: i64) -> String {
    humantime::format_rfc3339_micros(clamped(micros)).to_string()
}

fn clamped(micros: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros.clamp(0, MAX_MICROS) as u64)
}

#[cfg(test)]
mod tests {
    use super::{rfc3339, rfc3339_micros};

    #[test]
    fn times_are_rfc3339_utc_seconds_and_out_of_range_ones_are_clamped() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_999_999), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MIN), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_micros(1_700_000_000_000_001), "2023-11-14T22:13:20.000001Z");
        assert_eq!(rfc3339_micros(i64::MAX), "9999-12-31T23:59:59.000000Z");
    }
}
