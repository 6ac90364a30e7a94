//! Timestamps on the wire: ISO 8601 in UTC with milliseconds, as JavaScript's
//! `Date.toJSON()` prints them (the NestJS front end parses these).

use mongodb::bson::DateTime;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats a BSON date the way `Date.prototype.toJSON` does.
pub fn iso(dt: DateTime) -> String {
    let ms = dt.timestamp_millis();
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let t = t.replace_nanosecond((ms.rem_euclid(1000) as u32) * 1_000_000).unwrap_or(t);
    let s = t.format(&Rfc3339).unwrap_or_default();
    // Rfc3339 prints fractional seconds only when non-zero; make it always 3 digits.
    match s.find('.') {
        Some(dot) => format!("{}.{:03}Z", &s[..dot], ms.rem_euclid(1000)),
        None => format!("{}.000Z", s.trim_end_matches('Z')),
    }
}

/// Converts a NATS timestamp (the stream's receive time of a command) to BSON.
pub fn from_offset(t: OffsetDateTime) -> DateTime {
    DateTime::from_millis((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_has_millis_and_z() {
        assert_eq!(iso(DateTime::from_millis(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(DateTime::from_millis(1_700_000_000_123)), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso(DateTime::from_millis(1_700_000_000_007)), "2023-11-14T22:13:20.007Z");
    }
}
