//! The headings of `bench/results/HISTORY.md`, to link a row without a current figure
//! to its last one there.

use std::path::Path;

use anyhow::Context;

/// Each heading of the page (outside code blocks) with its anchor and the date of
/// the section it stands in.
pub struct Headings(Vec<Heading>);

struct Heading {
    text: String,
    anchor: String,
    /// The first `YYYY-MM-DD` of the heading itself or of the level-2 heading above it.
    date: Option<String>,
}

impl Headings {
    /// Reads the headings of the Markdown file at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Headings> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Headings::of(&text))
    }

    /// The headings of `markdown`.
    pub fn of(markdown: &str) -> Headings {
        let mut out = Vec::new();
        let mut fenced = false;
        let mut section_date = None;
        for line in markdown.lines() {
            if line.starts_with("```") {
                fenced = !fenced;
                continue;
            }
            let level = line.chars().take_while(|c| *c == '#').count();
            if fenced || level == 0 || !line[level..].starts_with(' ') {
                continue;
            }
            let text = line[level..].trim().to_owned();
            let own = date_in(&text);
            if level <= 2 {
                section_date = own.clone();
            }
            let anchor = unique(&out, slug(&text));
            out.push(Heading {
                date: own.or_else(|| section_date.clone()),
                text,
                anchor,
            });
        }
        Headings(out)
    }

    /// The anchor and section date of the first heading that reads `text`.
    pub fn find(&self, text: &str) -> Option<(&str, Option<&str>)> {
        self.0
            .iter()
            .find(|h| h.text == text)
            .map(|h| (h.anchor.as_str(), h.date.as_deref()))
    }
}

/// A heading's anchor as Markdown renderers make it: lower case, spaces to hyphens,
/// punctuation dropped.
fn slug(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// `slug`, or `slug-1`, `slug-2`, … when an earlier heading has it.
fn unique(before: &[Heading], slug: String) -> String {
    let taken = |s: &str| before.iter().any(|h| h.anchor == s);
    if !taken(&slug) {
        return slug;
    }
    (1..)
        .map(|n| format!("{slug}-{n}"))
        .find(|s| !taken(s))
        .expect("some suffix is free")
}

/// The first `YYYY-MM-DD` in `s`.
fn date_in(s: &str) -> Option<String> {
    let b = s.as_bytes();
    (0..b.len().saturating_sub(9)).find_map(|i| {
        let w = &b[i..i + 10];
        let digits = |r: std::ops::Range<usize>| w[r].iter().all(u8::is_ascii_digit);
        (digits(0..4) && w[4] == b'-' && digits(5..7) && w[7] == b'-' && digits(8..10))
            .then(|| s[i..i + 10].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_and_dates_follow_the_sections() {
        let h = Headings::of(
            "# History, 2026-12-01 to 2026-12-02\n\
             ## 2026-12-02 02:42–03:04 UTC, quiet machine\n\
             ### latency\n\
             ```sh\n# not a heading\n```\n\
             ### Target 2: Redis ingest, ≥ 900k msgs/s (met)\n\
             ## Earlier runs\n\
             ## latency\n",
        );
        assert_eq!(h.find("latency"), Some(("latency", Some("2026-12-02"))));
        assert_eq!(
            h.find("Target 2: Redis ingest, ≥ 900k msgs/s (met)"),
            Some(("target-2-redis-ingest--900k-msgss-met", Some("2026-12-02")))
        );
        assert_eq!(h.find("Earlier runs"), Some(("earlier-runs", None)));
        assert!(h.find("not a heading").is_none());
        // The second `latency` gets its own anchor.
        assert_eq!(h.0.last().map(|x| x.anchor.as_str()), Some("latency-1"));
    }
}
