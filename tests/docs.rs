//! The reference pages of `docs/` against the binary they describe:
//!
//! - `docs/configuration.md` lists every option of every command, each with the
//!   environment variable and default that `--help` gives, and no option the command
//!   does not have; every TOML key of `serve` is one its config file accepts.
//! - `docs/metrics.md` names every metric family a running node exposes on `/metrics`,
//!   with its labels, and no metric it does not expose.
//! - `scripts/screenshot`'s browser script pictures a live dashboard.
//! - Every relative link between the README and the docs pages leads to a file and a
//!   heading; every test and bench scenario the README's "What happens when…" table
//!   names exists.
//!
//! The examples on these pages are run by `tests/readme.rs`, like the README's.

#[path = "common/redis.rs"]
mod env;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const CONFIGURATION: &str = include_str!("../docs/configuration.md");
const METRICS: &str = include_str!("../docs/metrics.md");

// ---------------------------------------------------------------------------------
// What the binary says

/// One option as `--help` lists it.
#[derive(Debug, Default)]
struct HelpOption {
    /// The environment variable it is also read from.
    env: Option<String>,
    /// Its default, when `--help` gives it as one word.
    default: Option<String>,
}

/// `tickstream ARGS --help`.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tickstream"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "tickstream {args:?} --help");
    String::from_utf8(out.stdout).unwrap()
}

/// The long options of a `--help` text (but `--help` itself), each with the text that
/// describes it.
fn help_texts(help: &str) -> BTreeMap<String, String> {
    let mut options = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indented = line.len() > trimmed.len();
        if !indented && !trimmed.is_empty() {
            // "Examples:" and the like: the options are over.
            options.extend(current.take());
            continue;
        }
        if trimmed.starts_with('-') {
            options.extend(current.take());
            let flag = trimmed
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .expect("a long option")
                .to_owned();
            current = Some((flag, trimmed.to_owned()));
        } else if let Some((_, text)) = current.as_mut() {
            text.push(' ');
            text.push_str(trimmed);
        }
    }
    options.extend(current);
    options.remove("--help");
    options
}

/// What follows `marker` in `text`, up to the first of `ends`.
fn after<'a>(text: &'a str, marker: &str, ends: &[char]) -> Option<&'a str> {
    let rest = &text[text.find(marker)? + marker.len()..];
    Some(rest.split(ends).next().unwrap_or(rest).trim())
}

/// The options of `tickstream ARGS` with their environment and default.
fn help_options(args: &[&str]) -> BTreeMap<String, HelpOption> {
    help_texts(&help(args))
        .into_iter()
        .map(|(flag, text)| {
            let env = after(&text, "[env: ", &['=', ']']).map(str::to_owned);
            // `[default: X]` from clap, else the description's "Default: X" when X is
            // one word (possibly followed by a remark in parentheses).
            let default = after(&text, "[default: ", &[']'])
                .or_else(|| {
                    after(&text, "Default: ", &['[']).map(|d| d.split(" (").next().unwrap())
                })
                .filter(|d| !d.contains(char::is_whitespace))
                .map(str::to_owned);
            (flag, HelpOption { env, default })
        })
        .collect()
}

#[test]
fn help_is_read_with_its_environment_and_one_word_defaults() {
    let serve = help_options(&["serve"]);
    assert_eq!(serve["--listen"].default.as_deref(), Some("127.0.0.1:8080"));
    assert_eq!(serve["--listen"].env.as_deref(), Some("TICKSTREAM_LISTEN"));
    // A variable that may hold a password shows its name only.
    assert_eq!(serve["--redis"].env.as_deref(), Some("TICKSTREAM_REDIS"));
    assert_eq!(serve["--node"].default, None, "several words: not compared");
    let record = help_options(&["feed", "record"]);
    assert_eq!(record["--backoff-base"].default.as_deref(), Some("500ms"));
    assert!(record.contains_key("--out"), "-o, --out");
    assert_eq!(record["--duration"].env, None);
}

// ---------------------------------------------------------------------------------
// What the page says

/// One row of an options table.
#[derive(Debug)]
struct Row {
    env: Option<String>,
    toml: Option<String>,
    default: String,
}

/// The rows of the options table in the section of `docs/configuration.md` whose
/// heading names `` `tickstream CMD` ``, by long flag. `with_toml`: the table has a
/// TOML key column after the environment.
fn doc_rows(cmd: &str, with_toml: bool) -> BTreeMap<String, Row> {
    let heading = format!("`tickstream {cmd}`");
    let mut in_fence = false;
    let section: Vec<&str> = CONFIGURATION
        .lines()
        .skip_while(|l| !(l.starts_with('#') && l.contains(&heading)))
        .skip(1)
        .take_while(|l| {
            in_fence ^= l.starts_with("```");
            in_fence || !l.starts_with('#')
        })
        .collect();
    assert!(
        !section.is_empty(),
        "a section {heading} in configuration.md"
    );
    let mut rows = BTreeMap::new();
    for line in section.iter().filter(|l| l.starts_with("| `-")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let code = |cell: &str| Some(cell.trim_matches('`').to_owned()).filter(|c| c != "–");
        let flag = cells[0]
            .split(", ")
            .map(|f| f.trim_matches('`'))
            .find(|f| f.starts_with("--"))
            .unwrap_or_else(|| panic!("a long flag in {line}"));
        let row = Row {
            env: code(cells[1]),
            toml: if with_toml { code(cells[2]) } else { None },
            default: cells[if with_toml { 3 } else { 2 }].to_owned(),
        };
        assert!(rows.insert(flag.to_owned(), row).is_none(), "{flag} twice");
    }
    rows
}

/// The page's table for `cmd` and the binary's `--help` name the same options, with the
/// same environment variables and defaults.
fn page_matches_help(cmd: &str, with_toml: bool) -> BTreeMap<String, Row> {
    let args: Vec<&str> = cmd.split(' ').collect();
    let help = help_options(&args);
    let rows = doc_rows(cmd, with_toml);
    let have: BTreeSet<&String> = help.keys().collect();
    let documented: BTreeSet<&String> = rows.keys().collect();
    let missing: Vec<_> = have.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&have).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "`tickstream {cmd}` in docs/configuration.md: missing {missing:?}, \
         not options of the command {extra:?}"
    );
    for (flag, row) in &rows {
        let h = &help[flag];
        assert_eq!(row.env, h.env, "environment of `{cmd} {flag}`");
        if let Some(d) = &h.default {
            let words: Vec<&str> = row
                .default
                .split(|c: char| c.is_whitespace() || "`(),".contains(c))
                .collect();
            assert!(
                words.contains(&d.as_str()),
                "default of `{cmd} {flag}`: --help says {d}, the page {:?}",
                row.default
            );
        }
    }
    rows
}

#[test]
fn every_serve_option_is_on_the_configuration_page_with_its_environment_and_default() {
    let rows = page_matches_help("serve", true);
    assert!(
        rows.len() > 40,
        "the serve table was read ({} rows)",
        rows.len()
    );
}

#[test]
fn every_option_of_the_other_commands_is_on_the_configuration_page() {
    for cmd in [
        "subscribe",
        "feed synth",
        "feed replay",
        "feed record",
        "token",
    ] {
        let rows = page_matches_help(cmd, false);
        assert!(rows.len() >= 7, "`{cmd}` table read ({} rows)", rows.len());
    }
}

/// What `tickstream serve --config FILE` says of a file holding `text`: it must refuse
/// it, and says why on stderr.
fn serve_refuses_config(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tickstream.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickstream"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TICKSTREAM_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{text:?} is refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each TOML key of the page is a flag's name with `_`, and one the config file takes:
/// given a value of no option's type (a table), the node refuses the value at its line,
/// not the key.
#[test]
fn every_toml_key_on_the_configuration_page_is_one_the_config_file_takes() {
    let unknown = serve_refuses_config("no_such_option = 1\n");
    assert!(
        unknown.contains("unknown option `no_such_option`"),
        "an unknown key is named: {unknown}"
    );
    for (flag, row) in doc_rows("serve", true) {
        let Some(key) = row.toml else {
            assert_eq!(flag, "--config", "only --config has no TOML key");
            continue;
        };
        assert_eq!(key, flag[2..].replace('-', "_"), "TOML key of {flag}");
        let said = serve_refuses_config(&format!("{key} = {{}}\n"));
        assert!(
            !said.contains("unknown option") && said.contains("TOML parse error at line 1"),
            "{key}: {said}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Metrics

/// Label names and the values seen for each.
type Labels = BTreeMap<String, BTreeSet<String>>;

/// The names a user queries for each family of an exposition (`name_total` for a
/// counter, `name_info` for an info, the family's name otherwise), with the label names
/// and the label values its samples carry (`le` of histogram buckets left out).
fn exposed_metrics(text: &str) -> BTreeMap<String, Labels> {
    let mut families: BTreeMap<String, Labels> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            let queried = match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_owned(),
            };
            families.insert(queried, BTreeMap::new());
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, _)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap();
        let family = families
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .cloned()
            .unwrap_or_else(|| panic!("a sample of no family: {line}"));
        let labels = families.get_mut(&family).unwrap();
        let inner = series[name.len()..]
            .trim_start_matches('{')
            .trim_end_matches('}');
        for pair in inner.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').expect("label=\"value\"");
            if k != "le" {
                let values = labels.entry(k.to_owned()).or_default();
                values.insert(v.trim_matches('"').to_owned());
            }
        }
    }
    families
}

/// The metrics the page documents: each bullet that starts with a metric's name, with
/// the label names in its braces and the bullet's text.
fn documented_metrics() -> BTreeMap<String, (BTreeSet<String>, String)> {
    let mut out = BTreeMap::new();
    for line in METRICS.lines() {
        let Some(rest) = line.strip_prefix("- `tickstream_") else {
            continue;
        };
        let spec = format!("tickstream_{}", rest.split('`').next().unwrap());
        let (name, labels) = match spec.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}').split(',').map(str::to_owned)),
            None => (spec.as_str(), "".split(',').map(str::to_owned)),
        };
        let labels = labels.filter(|l| !l.is_empty()).collect();
        assert!(
            out.insert(name.to_owned(), (labels, line.to_owned()))
                .is_none(),
            "{name} twice in docs/metrics.md"
        );
    }
    out
}

/// Every `tickstream_…` name written anywhere on the page.
fn named_metrics() -> BTreeSet<String> {
    METRICS
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tickstream_"))
        .map(str::to_owned)
        .collect()
}

/// `GET /metrics` of a `tickstream serve` started for it.
fn scrape_a_node() -> String {
    let logs = tempfile::tempdir().unwrap();
    let node = env::Proc::serve("docs", &[], logs.path());
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{}/metrics", node.port))
        .output()
        .expect("curl runs (scripts/test installs it)");
    assert!(out.status.success(), "GET /metrics");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_metrics_page_names_every_metric_a_node_exposes_and_no_other() {
    let exposed = exposed_metrics(&scrape_a_node());
    assert!(exposed.len() > 15, "the exposition was read: {exposed:?}");
    let documented = documented_metrics();
    let have: BTreeSet<&String> = exposed.keys().collect();
    let listed: BTreeSet<&String> = documented.keys().collect();
    let missing: Vec<_> = have.difference(&listed).collect();
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    let unknown: Vec<String> = named_metrics()
        .into_iter()
        .filter(|n| !exposed.contains_key(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/metrics.md names metrics that do not exist: {unknown:?}"
    );
    for (name, (labels, line)) in &documented {
        let samples = &exposed[name];
        let names: BTreeSet<String> = samples.keys().cloned().collect();
        assert_eq!(&names, labels, "the labels of {name}");
        // Named values (not codes or versions) are listed in the bullet.
        for value in samples.values().flatten() {
            if !value.bytes().any(|b| b.is_ascii_digit()) {
                assert!(
                    line.contains(&format!("`{value}`")),
                    "{name}: `{value}` in {line}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The dashboard picture

/// Width and height of a PNG file.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

/// `scripts/screenshot` builds the release binary and runs `tests/browser/screenshot.js`
/// against an idle node; here the browser script runs against this build's node.
#[test]
fn the_screenshot_script_pictures_a_live_dashboard() {
    let script = env::repo_path("scripts/screenshot");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(syntax.success(), "scripts/screenshot parses");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists()
            && env::repo_path("tests/browser/node_modules/playwright-core").exists(),
        "Chromium and playwright-core: run scripts/test (or scripts/screenshot) once"
    );
    let dir = tempfile::tempdir().unwrap();
    let node = env::Proc::serve("node-1", &[], dir.path());
    let picture = dir.path().join("dashboard.png");
    let out = Command::new("node")
        .arg(env::repo_path("tests/browser/screenshot.js"))
        .arg(format!("http://127.0.0.1:{}/", node.port))
        .arg(&picture)
        .arg("1")
        .output()
        .expect("node runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The page was live: every row had a price and the bar a latency.
    assert!(
        said.starts_with("latency p50 ") && said.contains(" ms"),
        "{said}"
    );
    assert_eq!(png_size(&std::fs::read(&picture).unwrap()), (1280, 890));
}

// ---------------------------------------------------------------------------------
// Links between the pages

/// The pages that link to each other.
const PAGES: &[&str] = &[
    "README.md",
    "docs/client.md",
    "docs/cluster.md",
    "docs/configuration.md",
    "docs/dashboard.md",
    "docs/feeds.md",
    "docs/metrics.md",
    "docs/protocol.md",
    "docs/security.md",
];

/// The anchor a heading gets: lower case, spaces as `-`, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside fenced blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_fence = false;
    text.lines()
        .filter(|l| {
            in_fence ^= l.starts_with("```");
            !in_fence && l.starts_with('#')
        })
        .map(slug)
        .collect()
}

/// The relative link targets of a page's text: `](target)`.
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|t| !t.contains("://"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_heading_gets_the_anchor_a_markdown_viewer_gives_it() {
    assert_eq!(slug("## `tickstream feed synth`"), "tickstream-feed-synth");
    assert_eq!(
        slug("## 8. The bus between nodes (Redis)"),
        "8-the-bus-between-nodes-redis"
    );
    assert_eq!(slug("### What happens when…"), "what-happens-when");
}

/// Every relative link of the README and the docs pages names a file that exists, and
/// a heading of it when it names one.
#[test]
fn every_link_between_the_pages_leads_somewhere() {
    let mut checked = 0;
    for page in PAGES {
        let path = env::repo_path(page);
        let text = std::fs::read_to_string(&path).unwrap();
        for link in relative_links(&text) {
            let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            assert!(target.exists(), "{page}: {link} leads nowhere");
            if !anchor.is_empty() {
                let headings = anchors(&std::fs::read_to_string(&target).unwrap());
                assert!(
                    headings.contains(anchor),
                    "{page}: no heading #{anchor} in {file}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "the links were found ({checked})");
}

// ---------------------------------------------------------------------------------
// The README's operations table

/// The third column of the README's "What happens when…" table: what shows each row.
fn operations_evidence() -> Vec<String> {
    let readme = std::fs::read_to_string(env::repo_path("README.md")).unwrap();
    readme
        .lines()
        .skip_while(|l| !l.starts_with("### What happens when"))
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| row.trim_matches('|').split('|').nth(2).unwrap().to_owned())
        .collect()
}

/// Every row of "What happens when…" names tests that exist (`binary::test`, or a
/// whole test binary) or a bench scenario that exists.
#[test]
fn the_operations_table_names_tests_and_scenarios_that_exist() {
    let rows = operations_evidence();
    assert!(rows.len() >= 4, "the table was read: {rows:?}");
    for cell in rows {
        let names: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        assert!(!names.is_empty(), "a row names what shows it: {cell}");
        for name in names {
            if let Some(scenario) = name.strip_prefix("tickstream-bench ") {
                let ok = Command::new(env!("CARGO_BIN_EXE_tickstream-bench"))
                    .args([scenario, "--help"])
                    .output()
                    .unwrap()
                    .status
                    .success();
                assert!(ok, "`{name}` is a scenario of tickstream-bench");
                continue;
            }
            let (binary, test) = name.split_once("::").unwrap_or((name, ""));
            let file = env::repo_path(&format!("tests/{binary}.rs"));
            let source = std::fs::read_to_string(&file)
                .unwrap_or_else(|_| panic!("`{name}`: no tests/{binary}.rs"));
            assert!(
                test.is_empty() || source.contains(&format!("fn {test}(")),
                "`{name}`: no test {test} in tests/{binary}.rs"
            );
        }
    }
}
