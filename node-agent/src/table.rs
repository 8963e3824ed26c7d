//! Plain-text tables that line up with Chinese text (double-width characters) in a terminal,
//! and the result tables the CLI prints.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use unicode_width::UnicodeWidthStr;

use huren_core::rules::{Reason, Verdict};
use huren_core::summary::{Outcome, UnixMillis};

use crate::verify::VerifiedResult;

/// Widest a cell may be before it is cut with "…".
const MAX_CELL_WIDTH: usize = 44;

/// A table of text cells.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn cut(cell: &str) -> String {
    let one_line = cell.replace(['\n', '\r'], " ");
    if one_line.width() <= MAX_CELL_WIDTH {
        return one_line;
    }
    let mut out = String::new();
    for c in one_line.chars() {
        if out.width() + unicode_width::UnicodeWidthChar::width(c).unwrap_or(0) >= MAX_CELL_WIDTH {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row.iter().map(|c| cut(c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Renders with two spaces between columns and a rule under the headers.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.width()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.width());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                s.push_str(cell);
                if i + 1 < widths.len() {
                    s.push_str(&" ".repeat(w - cell.width() + 2));
                }
            }
            s.trim_end().to_owned()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        out.push_str(&line(
            &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
        ));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]");

/// Parses a UTC offset such as "+08:00".
pub fn parse_offset(s: &str) -> Result<UtcOffset, String> {
    huren_core::summary::parse_utc_offset(s)
        .and_then(|seconds| UtcOffset::from_whole_seconds(seconds).ok())
        .ok_or_else(|| format!("{s:?} is not a UTC offset such as +08:00"))
}

/// Formats a time at the given offset, e.g. "2026-11-20 08:30".
pub fn format_time(t: UnixMillis, offset: UtcOffset) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000)
        .ok()
        // `to_offset` panics past year 9999 (a stored year-9999 time at +08:00 is in 10000).
        .and_then(|d| d.checked_to_offset(offset)?.format(TIME_FORMAT).ok())
        .unwrap_or_else(|| format!("{} ms", t.0))
}

/// The result table shown by `query` and `history`: every row has been verified.
pub fn results_table(results: &[VerifiedResult], offset: UtcOffset) -> Table {
    let mut t = Table::new([
        "#",
        "Performed",
        "Item",
        "Result",
        "Reference",
        "Publisher",
        "Summary",
        "Status",
        "Recognition",
    ]);
    for (i, r) in results.iter().enumerate() {
        let s = &r.summary;
        let item = if s.item.display.is_empty() {
            s.item.code.clone()
        } else {
            format!("{} {}", s.item.code, s.item.display)
        };
        let (result, reference) = match &s.outcome {
            Outcome::Lab(l) => {
                let flag = l.flag.hl7_code();
                let mut v = format!("{} {}", l.value, l.unit).trim().to_owned();
                if !flag.is_empty() {
                    v.push_str(&format!(" ({flag})"));
                }
                (v, l.reference_range.clone())
            }
            Outcome::Exam(e) => (
                format!("{} {}: {}", e.modality, e.body_site, e.impression),
                String::new(),
            ),
        };
        t.push(vec![
            (i + 1).to_string(),
            format_time(s.performed_at, offset),
            item,
            result,
            reference,
            s.publisher.to_string(),
            format!("{} v{}", s.id, s.version),
            s.status.name().to_owned(),
            verdict_cell(r.verdict.as_ref()),
        ]);
    }
    t
}

/// Short form of a verdict for a table cell: "recognised 全国HR" or "no: window, direction".
pub fn verdict_cell(v: Option<&Verdict>) -> String {
    match v {
        None => String::new(),
        Some(v) if v.recognised() => format!("recognised {}", v.hr_mark.as_deref().unwrap_or(""))
            .trim_end()
            .to_owned(),
        Some(v) => format!(
            "no: {}",
            v.reasons
                .iter()
                .map(|(r, _)| reason_word(*r))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One word per reason, for narrow table cells; the full sentences come with `reasons`.
pub fn reason_word(r: Reason) -> &'static str {
    match r {
        Reason::NotInCatalogue => "not in catalogue",
        Reason::OutsideValidityWindow => "too old",
        Reason::PublisherNotQualified => "publisher not qualified",
        Reason::Direction => "direction",
        Reason::Voided => "voided",
        Reason::Superseded => "superseded",
        Reason::OutsideScope => "outside scope",
        Reason::PublisherRevoked => "publisher revoked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_with_double_width_text() {
        let mut t = Table::new(["Item", "Value"]);
        t.push(vec!["血红蛋白".into(), "132".into()]);
        t.push(vec!["ALT".into(), "25".into()]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        // "血红蛋白" is 8 columns wide, so the Value column starts at column 10 on every line.
        let value_col = |l: &str| {
            let idx = l.rfind(' ').unwrap() + 1;
            l[..idx].width()
        };
        assert_eq!(value_col(lines[0]), 10);
        assert_eq!(value_col(lines[2]), 10);
        assert_eq!(value_col(lines[3]), 10);
    }

    #[test]
    fn long_cells_are_cut() {
        let long = "很长的影像印象".repeat(20);
        let c = cut(&long);
        assert!(c.width() <= MAX_CELL_WIDTH);
        assert!(c.ends_with('…'));
    }

    #[test]
    fn times_show_at_the_configured_offset() {
        let offset = parse_offset("+08:00").unwrap();
        // 2026-11-20T00:30:00Z is 08:30 in China.
        assert_eq!(
            format_time(UnixMillis(1_795_134_600_000), offset),
            "2026-11-20 08:30"
        );
        assert!(parse_offset("8").is_err());
    }

    /// Whatever a stored time holds, formatting it never panics: the ends of the range and
    /// year 9999 at an offset that carries it into year 10000 are written as milliseconds.
    #[test]
    fn any_stored_time_formats_without_panicking() {
        let east = parse_offset("+08:00").unwrap();
        let west = parse_offset("-12:00").unwrap();
        // 9999-12-31T23:00:00Z
        let late_9999 = UnixMillis(253_402_297_200_000);
        for t in [
            i64::MIN,
            i64::MIN + 1,
            -62_135_596_800_000,
            -1,
            0,
            late_9999.0,
            253_402_300_799_999,
            i64::MAX - 1,
            i64::MAX,
        ] {
            for offset in [east, west, UtcOffset::UTC] {
                let text = format_time(UnixMillis(t), offset);
                assert!(!text.is_empty());
            }
        }
        assert_eq!(format_time(late_9999, UtcOffset::UTC), "9999-12-31 23:00");
        assert_eq!(format_time(late_9999, east), "253402297200000 ms");
        assert_eq!(
            format_time(UnixMillis(i64::MAX), east),
            format!("{} ms", i64::MAX)
        );
    }
}
