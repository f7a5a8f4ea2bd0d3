//! Go's reference-time layouts (`2006-01-02 15:04:05`), as Caddy's log `time_format`
//! takes them: parsed once when the config loads ([`Layout::parse`], which also tells
//! a layout from a typo), then written for each record ([`Layout::write`]).
//!
//! The elements are Go's: `2006` `06` `01` `1` `Jan` `January` `02` `2` `_2` `002`
//! `15` `03` `3` `04` `4` `05` `5` `PM` `pm` `Mon` `Monday` `MST`, the offsets `-0700`
//! `-07:00` `-07` `-070000` `-07:00:00` and their `Z` forms (`Z` for UTC), and
//! fractions of a second after `.` or `,` (`000` keeps trailing zeros, `999` drops
//! them). Everything else is written as it stands.

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Elem {
    Text(String),
    Year4,
    Year2,
    Month2,
    Month1,
    MonthShort,
    MonthLong,
    Day2,
    Day1,
    DaySpace,
    YearDay3,
    Hour24,
    Hour12Two,
    Hour12,
    Minute2,
    Minute1,
    Second2,
    Second1,
    AmPm {
        upper: bool,
    },
    WeekdayShort,
    WeekdayLong,
    ZoneName,
    /// `-0700` and friends: `z` writes `Z` for UTC; `colon` between parts; `minutes`,
    /// `seconds`: which parts are written.
    Offset {
        z: bool,
        colon: bool,
        minutes: bool,
        seconds: bool,
    },
    /// `.000` (`trim` false) or `.999` (`trim` true) with `digits` digits after `sep`.
    Fraction {
        sep: char,
        digits: usize,
        trim: bool,
    },
}

/// A parsed layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout(Vec<Elem>);

/// A moment to write: Unix seconds and nanoseconds, the zone's offset from UTC in
/// seconds and, when known, its abbreviation.
#[derive(Debug, Clone, Copy)]
pub struct Moment<'a> {
    pub unix: i64,
    pub nanos: u32,
    pub offset: i32,
    pub zone: Option<&'a str>,
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// The elements, longest first where one is a prefix of another.
const TOKENS: &[(&str, Elem)] = &[
    ("January", Elem::MonthLong),
    ("Jan", Elem::MonthShort),
    ("Monday", Elem::WeekdayLong),
    ("Mon", Elem::WeekdayShort),
    ("MST", Elem::ZoneName),
    ("2006", Elem::Year4),
    ("002", Elem::YearDay3),
    ("01", Elem::Month2),
    ("02", Elem::Day2),
    ("03", Elem::Hour12Two),
    ("04", Elem::Minute2),
    ("05", Elem::Second2),
    ("06", Elem::Year2),
    ("_2", Elem::DaySpace),
    ("15", Elem::Hour24),
    ("1", Elem::Month1),
    ("2", Elem::Day1),
    ("3", Elem::Hour12),
    ("4", Elem::Minute1),
    ("5", Elem::Second1),
    ("PM", Elem::AmPm { upper: true }),
    ("pm", Elem::AmPm { upper: false }),
];

fn offset(z: bool, colon: bool, minutes: bool, seconds: bool) -> Elem {
    Elem::Offset {
        z,
        colon,
        minutes,
        seconds,
    }
}

impl Layout {
    /// Parses `text`; `None` when it holds no element at all (a misspelt format name
    /// rather than a layout).
    pub fn parse(text: &str) -> Option<Layout> {
        let mut out: Vec<Elem> = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        let mut any = false;
        while let Some(c) = rest.chars().next() {
            if let Some((len, e)) = Self::element_at(rest) {
                if !lit.is_empty() {
                    out.push(Elem::Text(std::mem::take(&mut lit)));
                }
                out.push(e);
                any = true;
                rest = &rest[len..];
            } else {
                lit.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !lit.is_empty() {
            out.push(Elem::Text(lit));
        }
        any.then_some(Layout(out))
    }

    /// The element `s` starts with, and its length.
    fn element_at(s: &str) -> Option<(usize, Elem)> {
        // Offsets first: `-07...` and `Z07...`.
        for (prefix, z) in [("-07", false), ("Z07", true)] {
            if let Some(tail) = s.strip_prefix(prefix) {
                let forms = [
                    (":00:00", offset(z, true, true, true)),
                    ("0000", offset(z, false, true, true)),
                    (":00", offset(z, true, true, false)),
                    ("00", offset(z, false, true, false)),
                    ("", offset(z, false, false, false)),
                ];
                for (more, e) in forms {
                    if tail.starts_with(more) {
                        return Some((prefix.len() + more.len(), e));
                    }
                }
            }
        }
        // Fractions: `.000`, `,999`, followed by no further digit.
        let b = s.as_bytes();
        if (b[0] == b'.' || b[0] == b',') && b.len() > 1 && (b[1] == b'0' || b[1] == b'9') {
            let digit = b[1];
            let n = b[1..].iter().take_while(|&&c| c == digit).count();
            if !b.get(1 + n).is_some_and(u8::is_ascii_digit) {
                return Some((
                    1 + n,
                    Elem::Fraction {
                        sep: b[0] as char,
                        digits: n.min(9),
                        trim: digit == b'9',
                    },
                ));
            }
        }
        TOKENS
            .iter()
            .find(|(t, _)| s.starts_with(t))
            .map(|(t, e)| (t.len(), e.clone()))
    }

    /// Appends `m` written in this layout.
    pub fn write(&self, m: Moment<'_>, out: &mut String) {
        let local = m.unix + i64::from(m.offset);
        let days = local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (secs / 3600, secs % 3600 / 60, secs % 60);
        let weekday = (days + 4).rem_euclid(7) as usize;
        let yday = days - days_from_civil(year, 1, 1) + 1;
        let h12 = if hour % 12 == 0 { 12 } else { hour % 12 };
        for e in &self.0 {
            let _ = match e {
                Elem::Text(t) => write!(out, "{t}"),
                Elem::Year4 => write!(out, "{year:04}"),
                Elem::Year2 => write!(out, "{:02}", year.rem_euclid(100)),
                Elem::Month2 => write!(out, "{month:02}"),
                Elem::Month1 => write!(out, "{month}"),
                Elem::MonthShort => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
                Elem::MonthLong => write!(out, "{}", MONTHS[month as usize - 1]),
                Elem::Day2 => write!(out, "{day:02}"),
                Elem::Day1 => write!(out, "{day}"),
                Elem::DaySpace => write!(out, "{day:>2}"),
                Elem::YearDay3 => write!(out, "{yday:03}"),
                Elem::Hour24 => write!(out, "{hour:02}"),
                Elem::Hour12Two => write!(out, "{h12:02}"),
                Elem::Hour12 => write!(out, "{h12}"),
                Elem::Minute2 => write!(out, "{minute:02}"),
                Elem::Minute1 => write!(out, "{minute}"),
                Elem::Second2 => write!(out, "{second:02}"),
                Elem::Second1 => write!(out, "{second}"),
                Elem::AmPm { upper } => match (hour < 12, upper) {
                    (true, true) => write!(out, "AM"),
                    (true, false) => write!(out, "am"),
                    (false, true) => write!(out, "PM"),
                    (false, false) => write!(out, "pm"),
                },
                Elem::WeekdayShort => write!(out, "{}", &WEEKDAYS[weekday][..3]),
                Elem::WeekdayLong => write!(out, "{}", WEEKDAYS[weekday]),
                Elem::ZoneName => match m.zone {
                    Some(z) => write!(out, "{z}"),
                    None if m.offset == 0 => write!(out, "UTC"),
                    // Go writes the offset when a zone has no abbreviation.
                    None => {
                        write_offset(out, m.offset, false, false, true, false);
                        Ok(())
                    }
                },
                Elem::Offset {
                    z,
                    colon,
                    minutes,
                    seconds,
                } => {
                    write_offset(out, m.offset, *z, *colon, *minutes, *seconds);
                    Ok(())
                }
                Elem::Fraction { sep, digits, trim } => {
                    let all = format!("{:09}", m.nanos);
                    let mut d = &all[..*digits];
                    if *trim {
                        d = d.trim_end_matches('0');
                    }
                    if d.is_empty() {
                        Ok(())
                    } else {
                        write!(out, "{sep}{d}")
                    }
                }
            };
        }
    }
}

fn write_offset(out: &mut String, off: i32, z: bool, colon: bool, minutes: bool, seconds: bool) {
    if z && off == 0 {
        out.push('Z');
        return;
    }
    let sign = if off < 0 { '-' } else { '+' };
    let a = off.unsigned_abs();
    let _ = write!(out, "{sign}{:02}", a / 3600);
    let sep = if colon { ":" } else { "" };
    if minutes {
        let _ = write!(out, "{sep}{:02}", a % 3600 / 60);
    }
    if seconds {
        let _ = write!(out, "{sep}{:02}", a % 60);
    }
}

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(layout: &str, m: Moment<'_>) -> String {
        let mut s = String::new();
        Layout::parse(layout).expect("a layout").write(m, &mut s);
        s
    }

    // 2026-12-05 02:51:39.120 UTC, a Saturday, day 339 of the year.
    const UTC: Moment<'static> = Moment {
        unix: 1_796_439_099,
        nanos: 120_000_000,
        offset: 0,
        zone: None,
    };

    #[test]
    fn writes_go_elements() {
        assert_eq!(show("2006-01-02 15:04:05", UTC), "2026-12-05 02:51:39");
        assert_eq!(
            show("Mon Jan _2 3:4:5 PM MST 06 002", UTC),
            "Sat Dec  5 2:51:39 AM UTC 26 339"
        );
        assert_eq!(show("Monday, January 2", UTC), "Saturday, December 5");
        assert_eq!(show("15:04:05.000", UTC), "02:51:39.120");
        assert_eq!(show("15:04:05.999", UTC), "02:51:39.12");
        assert_eq!(show("15:04:05,000000", UTC), "02:51:39,120000");
        assert_eq!(
            show("2006-01-02T15:04:05Z07:00", UTC),
            "2026-12-05T02:51:39Z"
        );
        assert_eq!(
            show("02/Jan/2006:15:04:05 -0700", UTC),
            "05/Dec/2026:02:51:39 +0000"
        );
    }

    #[test]
    fn writes_local_offsets() {
        let ist = Moment {
            offset: 5 * 3600 + 1800,
            zone: Some("IST"),
            ..UTC
        };
        assert_eq!(
            show("2006-01-02 15:04 MST -07:00 Z0700 -07", ist),
            "2026-12-05 08:21 IST +05:30 +0530 +05"
        );
        let west = Moment {
            offset: -8 * 3600,
            zone: None,
            unix: UTC.unix - 3 * 3600,
            ..UTC
        };
        // Across midnight backwards: the 4th, and the offset for a zone without a name.
        assert_eq!(show("Jan 2 15 MST", west), "Dec 4 15 -0800");
    }

    #[test]
    fn tells_layouts_from_typos() {
        assert!(Layout::parse("rfc").is_none());
        assert!(Layout::parse("unix").is_none());
        assert!(Layout::parse("2006").is_some());
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 59, 365, 11_016, 20_792, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
    }
}
