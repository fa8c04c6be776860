//! Event times as the CloudEvents `time` attribute carries them: RFC 3339 date-times, read
//! strictly.
//!
//! CloudEvents 1.0 says `time` "MUST adhere to the format specified in RFC 3339". chrono's own
//! parser is more forgiving than that: it takes a year of five digits (`+12345-…`), a space or a
//! lowercase `t` between date and time, a lowercase `z`, and a leap second `:60`. An event time
//! moves watermarks and decides labels, so freshet reads exactly one spelling of it,
//! [`parse_rfc3339`]:
//!
//! ```text
//! YYYY-MM-DDThh:mm:ss[.fraction](Z|+hh:mm|-hh:mm)
//! ```
//!
//! - four-digit years only (RFC 3339 §5.6 `date-fullyear = 4DIGIT`; no sign, no fifth digit);
//! - an uppercase `T` and `Z`. RFC 3339 §5.6 lets a reader accept lowercase `t` and `z` (ABNF
//!   literals are case-insensitive), but asks writers for uppercase, and many readers of the same
//!   stream refuse lowercase: Go's `time.Parse(time.RFC3339, …)` does, for one. An event one
//!   consumer accepts and another refuses would make their derived state differ, so freshet
//!   accepts what every consumer can read: the spelling RFC 3339 tells producers to write;
//! - seconds 00–59. RFC 3339 allows `:60` only during an actual leap second, none has been
//!   inserted since 2016 and none is scheduled (the 2022 CGPM resolution ends them by 2035), and
//!   chrono would carry one as a nanosecond field past 10⁹ that time arithmetic treats
//!   inconsistently: it is refused;
//! - day-of-month checked against the month and leap years, hours 00–23, minutes 00–59, and an
//!   offset of at most 23:59;
//! - a fraction of at least one digit (any number, as RFC 3339 allows; digits past the
//!   nanosecond are dropped).

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};
use serde::Deserialize;

/// Why a text is not an RFC 3339 date-time, for the dead-letter detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an RFC 3339 date-time (YYYY-MM-DDThh:mm:ss[.fraction]Z or ±hh:mm): {why}")]
pub struct TimeError {
    text: String,
    why: &'static str,
}

/// Parses an RFC 3339 date-time strictly (see the module documentation) and converts it to UTC.
pub fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, TimeError> {
    let error = |why| TimeError {
        text: text.chars().take(64).collect(),
        why,
    };
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = bytes.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let at = |i: usize| bytes.get(i).copied();
    if at(4) != Some(b'-') || digits(0..4).is_none() {
        return Err(error("the year must be four digits followed by '-'"));
    }
    if at(7) != Some(b'-') || at(13) != Some(b':') || at(16) != Some(b':') {
        return Err(error(
            "the separators must be '-' in the date and ':' in the time",
        ));
    }
    match at(10) {
        Some(b'T') => {}
        Some(b't') => return Err(error("the date and time are separated by an uppercase 'T'")),
        _ => return Err(error("the date and time are separated by 'T'")),
    }
    let field = |range| digits(range).ok_or_else(|| error("a field is not two digits"));
    let (year, month, day) = (
        digits(0..4).unwrap_or_default(),
        field(5..7)?,
        field(8..10)?,
    );
    let (hour, minute, second) = (field(11..13)?, field(14..16)?, field(17..19)?);
    if second == 60 {
        return Err(error("a leap second (:60) is not accepted"));
    }
    // Fraction: '.' and at least one digit; nanoseconds from the first nine.
    let mut end = 19;
    let mut nanos = 0u32;
    if at(end) == Some(b'.') {
        let count = bytes[end + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if count == 0 {
            return Err(error("a '.' must be followed by the fraction's digits"));
        }
        let kept = &bytes[end + 1..end + 1 + count.min(9)];
        nanos = kept.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'))
            * 10u32.pow(9 - kept.len() as u32);
        end += 1 + count;
    }
    let offset_seconds = match &bytes[end..] {
        [b'Z'] => 0,
        [b'z'] => return Err(error("UTC is written as an uppercase 'Z'")),
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (field(end + 1..end + 3)?, field(end + 4..end + 6)?);
            if hours > 23 || minutes > 59 {
                return Err(error("the offset must be at most 23:59"));
            }
            let seconds = (hours * 3600 + minutes * 60) as i32;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return Err(error("it must end with 'Z' or an offset +hh:mm / -hh:mm")),
    };
    let date =
        NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(|| error("no such day"))?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)
        .ok_or_else(|| error("no such time of day"))?;
    let offset = FixedOffset::east_opt(offset_seconds).ok_or_else(|| error("no such offset"))?;
    offset
        .from_local_datetime(&date.and_time(time))
        .single()
        .map(|local| local.with_timezone(&Utc))
        .ok_or_else(|| error("out of range"))
}

/// For `#[serde(deserialize_with = "…")]` on an optional `time`: absent or `null` is `None`,
/// anything else must be a string [`parse_rfc3339`] accepts.
pub fn deserialize_option<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    let text: Option<std::borrow::Cow<'de, str>> = Option::deserialize(deserializer)?;
    text.map(|text| parse_rfc3339(&text).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn accepts_rfc_3339_in_every_allowed_form() {
        let cases = [
            ("2026-11-26T12:00:00Z", "2026-11-26T12:00:00Z"),
            ("2026-11-26T12:00:00.5Z", "2026-11-26T12:00:00.500Z"),
            (
                "2026-11-26T12:00:00.123456789Z",
                "2026-11-26T12:00:00.123456789Z",
            ),
            // Digits past the nanosecond are allowed and dropped.
            (
                "2026-11-26T12:00:00.1234567891234Z",
                "2026-11-26T12:00:00.123456789Z",
            ),
            ("2026-11-26T13:30:00+01:30", "2026-11-26T12:00:00Z"),
            ("2026-11-26T07:00:00-05:00", "2026-11-26T12:00:00Z"),
            // RFC 3339 §4.3: -00:00 is UTC with the local offset unknown.
            ("2026-11-26T12:00:00-00:00", "2026-11-26T12:00:00Z"),
            ("2024-02-29T23:59:59Z", "2024-02-29T23:59:59Z"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_rfc3339(text), Ok(utc(expected)), "{text}");
        }
    }

    #[test]
    fn refuses_what_chrono_accepts_but_rfc_3339_does_not() {
        let refused = [
            // Seen accepted before: five-digit years, lowercase 't', a leap second.
            "+12345-01-01T00:00:00Z",
            "12345-01-01T00:00:00Z",
            "2026-11-26t12:00:00Z",
            "2026-12-31T23:59:60Z",
            "2016-12-31T23:59:60Z",
            // The rest of chrono's leniency.
            "2026-11-26T12:00:00z",
            "2026-11-26 12:00:00Z",
            "2026-11-26T12:00:00+0100",
            "2026-11-26T12:00:00+01",
            "-0001-01-01T00:00:00Z",
            // Not date-times at all, or not whole ones.
            "2026-11-26",
            "2026-11-26T12:00Z",
            "2026-11-26T12:00:00",
            "2026-11-26T12:00:00.Z",
            "2026-11-26T12:00:00Z ",
            " 2026-11-26T12:00:00Z",
            "2026-11-26T12:00:00ZZ",
            "2026-11-26T12:00:00+01:00:00",
            "2026-1-26T12:00:00Z",
            "2026-11-26T1:00:00Z",
            "2026-11-26T12:00:00.5+1:00",
            "yesterday",
            "",
            // Out of range fields.
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T12:60:00Z",
            "2026-11-26T12:00:61Z",
            "2026-11-26T12:00:00+24:00",
            "2026-11-26T12:00:00+01:60",
            "2026-11-26T12:00:00.5€",
            "２０２６-11-26T12:00:00Z",
        ];
        for text in refused {
            assert!(parse_rfc3339(text).is_err(), "{text:?} was accepted");
        }
        let lowercase = parse_rfc3339("2026-11-26t12:00:00Z").unwrap_err();
        assert!(
            lowercase.to_string().contains("uppercase 'T'"),
            "{lowercase}"
        );
    }

    #[test]
    fn chrono_alone_would_accept_the_cases_this_parser_exists_for() {
        for text in [
            "+12345-01-01T00:00:00Z",
            "2026-11-26t12:00:00Z",
            "2026-11-26T12:00:00z",
            "2026-11-26 12:00:00Z",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(text.parse::<DateTime<Utc>>().is_ok(), "{text}");
        }
    }

    #[test]
    fn absent_and_null_times_are_none() {
        #[derive(Deserialize)]
        struct Envelope {
            #[serde(default, deserialize_with = "deserialize_option")]
            time: Option<DateTime<Utc>>,
        }
        let read = |json: &str| serde_json::from_str::<Envelope>(json).map(|e| e.time);
        assert_eq!(read("{}").unwrap(), None);
        assert_eq!(read(r#"{"time":null}"#).unwrap(), None);
        assert_eq!(
            read(r#"{"time":"2026-11-26T12:00:00Z"}"#).unwrap(),
            Some(utc("2026-11-26T12:00:00Z"))
        );
        assert!(read(r#"{"time":"2026-11-26t12:00:00Z"}"#).is_err());
        assert!(read(r#"{"time":7}"#).is_err());
    }
}
