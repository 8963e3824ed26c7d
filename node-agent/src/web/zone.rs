//! Times on pages, in the configured time zone (Asia/Shanghai by default).

use huren_core::summary::UnixMillis;
use jiff::tz::TimeZone;

/// The time zone pages show times in.
pub struct Zone(TimeZone);

impl Zone {
    /// An IANA time zone name, e.g. "Asia/Shanghai" (the bundled database, so it works on a
    /// host without tzdata).
    pub fn named(name: &str) -> Result<Self, String> {
        TimeZone::get(name)
            .map(Zone)
            .map_err(|e| format!("time_zone {name:?} is not a known IANA time zone: {e}"))
    }

    fn zoned(&self, t: UnixMillis) -> Option<jiff::ZonedDateTime> {
        jiff::Timestamp::from_millisecond(t.0)
            .ok()
            .map(|ts| ts.to_zoned_datetime(self.0.clone()))
    }

    /// "2026-11-20 08:30"; a time out of range is shown as milliseconds.
    pub fn minute(&self, t: UnixMillis) -> String {
        self.zoned(t)
            .map(|z| z.strftime("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| format!("{} ms", t.0))
    }

    /// "2026-11-20".
    pub fn day(&self, t: UnixMillis) -> String {
        self.zoned(t)
            .map(|z| z.strftime("%Y-%m-%d").to_string())
            .unwrap_or_else(|| format!("{} ms", t.0))
    }

    /// Midnight starting the day `date` ("2026-11-20") in this zone.
    pub fn parse_day(&self, date: &str) -> Option<UnixMillis> {
        let d: jiff::civil::Date = date.trim().parse().ok()?;
        let z = d.to_zoned_datetime(self.0.clone()).ok()?;
        Some(UnixMillis(z.timestamp().as_millisecond()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shanghai_is_utc_plus_eight() {
        let z = Zone::named("Asia/Shanghai").unwrap();
        assert_eq!(z.minute(UnixMillis(1_795_134_600_000)), "2026-11-20 08:30");
        assert_eq!(z.day(UnixMillis(1_795_134_600_000)), "2026-11-20");
        assert_eq!(
            z.parse_day("2026-11-20"),
            Some(UnixMillis(1_795_104_000_000))
        );
        assert_eq!(z.parse_day("yesterday"), None);
        assert_eq!(z.minute(UnixMillis(i64::MAX)), format!("{} ms", i64::MAX));
        assert!(Zone::named("Mars/Olympus").is_err());
    }
}
