//! Terminal output: plain-text tables, money and time formatting, progress bars.
//! Writing to a closed stdout (e.g. piped into `head`) is not an error worth a
//! panic, so all output goes through [`say!`], which ignores write failures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};

/// `println!` that never panics on a closed stdout.
#[macro_export]
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Progress bars appear from this many items on (and only on a terminal).
pub const PROGRESS_FROM: usize = 50;

/// A bar on stderr for `len` items, or a hidden one for short runs. indicatif
/// hides it by itself when stderr is not a terminal.
pub fn progress(len: usize, what: &str) -> ProgressBar {
    if len < PROGRESS_FROM {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// A table of left-aligned columns; cells longer than their column's limit are
/// cut with `…`.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    limits: Vec<usize>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table { headers: headers.to_vec(), limits: vec![usize::MAX; headers.len()], rows: Vec::new() }
    }

    /// Caps the width of column `index`.
    pub fn limit(mut self, index: usize, width: usize) -> Table {
        if let Some(limit) = self.limits.get_mut(index) {
            *limit = width;
        }
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().enumerate().map(|(i, c)| cut(c, self.limits.get(i).copied().unwrap_or(0))).collect())
            .collect();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &cells {
            for (i, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(i) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let line = |row: &[String]| {
            let mut out = String::new();
            for (i, cell) in row.iter().enumerate() {
                let last = i + 1 == row.len();
                out.push_str(cell);
                if !last {
                    let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count()) + 2;
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.trim_end().to_owned()
        };
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        let mut out = line(&headers);
        for row in &cells {
            out.push('\n');
            out.push_str(&line(row));
        }
        out
    }
}

/// `text` cut to `width` characters (with `…`), on one line.
pub fn cut(text: &str, width: usize) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.chars().count() <= width {
        return one_line;
    }
    let mut out: String = one_line.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Minor units as a decimal amount: `1250` → `12.50`.
pub fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        Err(_) => format!("{ms}ms"),
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// A duration for humans: `2m 30s`.
pub fn human(duration: Duration) -> String {
    humantime::format_duration(Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)))
        .to_string()
}

/// Bytes as text: UTF-8 as is with control characters escaped, anything else
/// escaped byte by byte.
pub fn escape_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text
            .chars()
            .flat_map(|c| {
                let escape = c.is_control() || c == '\\';
                let mut out: Vec<char> = Vec::new();
                if escape {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
                out
            })
            .collect(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(1250), "12.50");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(-199), "-1.99");
    }

    #[test]
    fn tables_align_and_cut() {
        let mut table = Table::new(&["A", "LONG HEADER", "C"]).limit(2, 5);
        table.row(vec!["xyz".into(), "1".into(), "abcdefgh".into()]);
        assert_eq!(table.render(), "A    LONG HEADER  C\nxyz  1            abcd…");
    }

    #[test]
    fn bytes_are_escaped() {
        assert_eq!(escape_bytes(b"a\nb"), "a\\nb");
        assert_eq!(escape_bytes(&[0xff, b'a']), "\\xffa");
    }
}
