//! Days and microseconds since the Unix epoch → calendar fields, within Python's `datetime`
//! range (years 1-9999).

pub const DAY_US: i128 = 86_400_000_000;
const FIRST_DAY: i128 = -719_162; // 0001-01-01
const LAST_DAY: i128 = 2_932_896; // 9999-12-31

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Date {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clock {
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub micro: u32,
}

/// Days since 1970-01-01 in the proleptic Gregorian calendar; None outside years 1-9999.
pub fn date_from_days(days: i128) -> Option<Date> {
    if !(FIRST_DAY..=LAST_DAY).contains(&days) {
        return None;
    }
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    Some(Date { year, month, day })
}

/// µs since the epoch → date and time of day; None outside years 1-9999.
pub fn datetime_from_micros(micros: i128) -> Option<(Date, Clock)> {
    let days = micros.div_euclid(DAY_US);
    Some((date_from_days(days)?, clock(micros - days * DAY_US)))
}

/// µs within a day (0 ≤ µs < 24 h) → time of day.
pub fn clock(micros: i128) -> Clock {
    let seconds = micros / 1_000_000;
    Clock {
        hour: (seconds / 3600) as u8,
        minute: (seconds / 60 % 60) as u8,
        second: (seconds % 60) as u8,
        micro: (micros % 1_000_000) as u32,
    }
}
