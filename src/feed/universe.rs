//! The symbol universe: which instruments a feed knows, with their start price,
//! volatility and how often each one ticks.
//!
//! A universe is read from a small CSV file with the header
//! `symbol,class,price,volatility,activity`; blank lines and lines starting with `#`
//! are ignored. The bundled universe (`feeds/universe.csv`) is compiled into the binary.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::Serialize;

use crate::tick::{valid_symbol, Symbol};

/// The header line every universe file starts with (after comments).
const HEADER: [&str; 5] = ["symbol", "class", "price", "volatility", "activity"];

/// Highest accepted annualised volatility (500%); guards against `25` meant as 25%.
const MAX_VOLATILITY: f64 = 5.0;

/// Where the bundled universe comes from, as named in error messages.
const BUNDLED_ORIGIN: &str = "feeds/universe.csv (bundled)";

/// Where text given to [`Universe::parse`] comes from, as named in error messages.
const TEXT_ORIGIN: &str = "<universe text>";

/// The kind of market an instrument trades in; decides its tick size, spread and lot size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetClass {
    /// A stock or exchange-traded fund, quoted in cents, traded in round lots of 100.
    Equity,
    /// A currency pair such as `EUR/USD`, quoted to 1/10 pip (1/1000 for JPY quotes).
    Fx,
    /// A crypto pair such as `BTC-USD`, quoted in cents.
    Crypto,
}

impl AssetClass {
    /// The name used in universe files: `equity`, `fx` or `crypto`.
    pub fn as_str(self) -> &'static str {
        match self {
            AssetClass::Equity => "equity",
            AssetClass::Fx => "fx",
            AssetClass::Crypto => "crypto",
        }
    }

    /// Number of decimals prices of `symbol` are quoted with (the tick is `10^-decimals`).
    ///
    /// Equity and crypto: 2. FX: 5, or 3 when the quote currency is JPY (`USD/JPY`).
    pub fn price_decimals(self, symbol: &str) -> u32 {
        match self {
            AssetClass::Equity | AssetClass::Crypto => 2,
            AssetClass::Fx if quote_is_jpy(symbol) => 3,
            AssetClass::Fx => 5,
        }
    }

    /// The minimum price increment of `symbol` in this class: equity 0.01, FX 0.00001
    /// (0.001 when the quote currency is JPY), crypto 0.01.
    pub fn tick_size(self, symbol: &str) -> f64 {
        1.0 / 10f64.powi(self.price_decimals(symbol) as i32)
    }
}

/// Whether an FX pair such as `USD/JPY` is quoted in yen.
fn quote_is_jpy(symbol: &str) -> bool {
    symbol
        .rsplit_once('/')
        .map(|(_, quote)| quote == "JPY")
        .unwrap_or(false)
}

impl fmt::Display for AssetClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AssetClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "equity" => Ok(AssetClass::Equity),
            "fx" => Ok(AssetClass::Fx),
            "crypto" => Ok(AssetClass::Crypto),
            _ => Err(format!(
                "unknown asset class {s:?} (expected equity, fx or crypto)"
            )),
        }
    }
}

/// One tradable symbol of a universe and the parameters its synthetic walk starts from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Instrument {
    /// The symbol, e.g. `AAPL`, `EUR/USD`, `BTC-USD`.
    pub symbol: Symbol,
    /// The market it trades in.
    pub class: AssetClass,
    /// Start price.
    pub price: f64,
    /// Annualised volatility, e.g. 0.25 for 25% a year.
    pub volatility: f64,
    /// Relative weight of how often this symbol ticks.
    pub activity: f64,
}

impl Instrument {
    /// The minimum price increment, see [`AssetClass::tick_size`].
    pub fn tick_size(&self) -> f64 {
        self.class.tick_size(&self.symbol)
    }

    /// Decimals of a quoted price, see [`AssetClass::price_decimals`].
    pub fn price_decimals(&self) -> u32 {
        self.class.price_decimals(&self.symbol)
    }
}

/// Why a universe could not be read or selected. Messages name the file and line.
#[derive(Debug, thiserror::Error)]
pub enum UniverseError {
    /// The file could not be read.
    #[error("{path}: cannot read universe: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The first non-comment line is not the expected header.
    #[error("{origin}:{line}: expected header `symbol,class,price,volatility,activity`, found `{found}`")]
    Header {
        /// The file.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// The line as read.
        found: String,
    },
    /// A line does not have exactly five comma-separated columns.
    #[error("{origin}:{line}: expected 5 columns (symbol,class,price,volatility,activity), found {found}")]
    Columns {
        /// The file.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// How many columns the line has.
        found: usize,
    },
    /// A numeric column is not a finite number.
    #[error("{origin}:{line}: {column} `{value}` is not a number")]
    Number {
        /// The file.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// The column name.
        column: &'static str,
        /// The text found.
        value: String,
    },
    /// The class column is not `equity`, `fx` or `crypto`.
    #[error("{origin}:{line}: class `{value}` is not one of equity, fx, crypto")]
    Class {
        /// The file.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// The text found.
        value: String,
    },
    /// The symbol does not match `^[A-Z0-9][A-Z0-9._:/-]{0,31}$`.
    #[error(
        "{origin}:{line}: invalid symbol `{symbol}` (must match ^[A-Z0-9][A-Z0-9._:/-]{{0,31}}$)"
    )]
    Symbol {
        /// The file.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// The symbol found.
        symbol: String,
    },
    /// The symbol already appeared on an earlier line.
    #[error("{origin}:{line}: duplicate symbol `{symbol}` (first on line {first_line})")]
    Duplicate {
        /// The file.
        origin: String,
        /// 1-based line number of the repeat.
        line: usize,
        /// The symbol.
        symbol: String,
        /// 1-based line number of its first appearance.
        first_line: usize,
    },
    /// Price, volatility or activity is zero or negative.
    #[error("{origin}:{line}: {column} must be greater than 0, found {value}")]
    NotPositive {
        /// The file.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// The column name.
        column: &'static str,
        /// The value found.
        value: f64,
    },
    /// Volatility is implausibly large (more than 5, i.e. 500% a year).
    #[error("{origin}:{line}: volatility {value} is above {MAX_VOLATILITY}; write it as a fraction (0.25 for 25%/year)")]
    Volatility {
        /// The file.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// The value found.
        value: f64,
    },
    /// The file (or the selection) holds no instruments.
    #[error("{origin}: universe has no instruments")]
    Empty {
        /// The file, or what was selected.
        origin: String,
    },
    /// [`Universe::filter`] was asked for symbols the universe does not hold.
    #[error("unknown symbol(s) not in the universe: {}", .symbols.join(", "))]
    Unknown {
        /// The symbols not found, in the order asked.
        symbols: Vec<String>,
    },
}

/// An ordered, non-empty set of instruments with unique symbols.
#[derive(Clone, Debug)]
pub struct Universe {
    instruments: Vec<Instrument>,
    index: HashMap<Symbol, usize>,
}

impl Universe {
    /// Every symbol with how its book's prices are written (its tick size's decimals).
    pub fn book_specs(&self) -> impl Iterator<Item = (Symbol, crate::book::Spec)> + '_ {
        self.instruments.iter().map(|i| {
            let spec = crate::book::Spec::new(i.price_decimals() as u8);
            (i.symbol.clone(), spec)
        })
    }

    /// The universe bundled with the binary (`feeds/universe.csv`).
    pub fn bundled() -> Universe {
        Self::parse_from(include_str!("../../feeds/universe.csv"), BUNDLED_ORIGIN)
            .expect("the bundled feeds/universe.csv is valid (checked by tests)")
    }

    /// Reads a universe CSV file.
    pub fn load(path: &Path) -> Result<Universe, UniverseError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UniverseError::Io {
            path: origin.clone(),
            source,
        })?;
        Self::parse_from(&text, &origin)
    }

    /// Parses universe CSV text; errors name the input `<universe text>`.
    pub fn parse(text: &str) -> Result<Universe, UniverseError> {
        Self::parse_from(text, TEXT_ORIGIN)
    }

    fn parse_from(text: &str, origin: &str) -> Result<Universe, UniverseError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut instruments = Vec::new();
        let mut index: HashMap<Symbol, usize> = HashMap::new();
        let mut first_line: Vec<usize> = Vec::new();
        let mut header_seen = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split(',').map(str::trim).collect();
            if !header_seen {
                let is_header = fields.len() == HEADER.len()
                    && fields
                        .iter()
                        .zip(HEADER)
                        .all(|(f, h)| f.eq_ignore_ascii_case(h));
                if !is_header {
                    return Err(UniverseError::Header {
                        origin: origin.to_string(),
                        line,
                        found: trimmed.to_string(),
                    });
                }
                header_seen = true;
                continue;
            }
            let instrument = parse_row(&fields, origin, line)?;
            if let Some(&at) = index.get(&instrument.symbol) {
                return Err(UniverseError::Duplicate {
                    origin: origin.to_string(),
                    line,
                    symbol: instrument.symbol.to_string(),
                    first_line: first_line[at],
                });
            }
            index.insert(instrument.symbol.clone(), instruments.len());
            first_line.push(line);
            instruments.push(instrument);
        }
        if instruments.is_empty() {
            return Err(UniverseError::Empty {
                origin: origin.to_string(),
            });
        }
        Ok(Universe { instruments, index })
    }

    /// All instruments, in file order.
    pub fn instruments(&self) -> &[Instrument] {
        &self.instruments
    }

    /// All symbols, in file order.
    pub fn symbols(&self) -> impl Iterator<Item = &Symbol> {
        self.instruments.iter().map(|i| &i.symbol)
    }

    /// The instrument named `symbol`, if the universe holds it.
    pub fn get(&self, symbol: &str) -> Option<&Instrument> {
        self.index.get(symbol).map(|&i| &self.instruments[i])
    }

    /// Number of instruments.
    pub fn len(&self) -> usize {
        self.instruments.len()
    }

    /// Whether the universe has no instruments (never true for a parsed universe).
    pub fn is_empty(&self) -> bool {
        self.instruments.is_empty()
    }

    /// The sub-universe of `symbols`, in the order given (repeats ignored).
    ///
    /// Fails with [`UniverseError::Unknown`] naming every symbol not held, or
    /// [`UniverseError::Empty`] when `symbols` is empty.
    pub fn filter(&self, symbols: &[String]) -> Result<Universe, UniverseError> {
        let mut unknown = Vec::new();
        let mut instruments = Vec::with_capacity(symbols.len());
        let mut index = HashMap::with_capacity(symbols.len());
        for s in symbols {
            match self.get(s) {
                Some(inst) => {
                    if !index.contains_key(s.as_str()) {
                        index.insert(inst.symbol.clone(), instruments.len());
                        instruments.push(inst.clone());
                    }
                }
                None => unknown.push(s.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(UniverseError::Unknown { symbols: unknown });
        }
        if instruments.is_empty() {
            return Err(UniverseError::Empty {
                origin: "the selected symbols".to_string(),
            });
        }
        Ok(Universe { instruments, index })
    }
}

/// Parses one data row (already split and trimmed).
fn parse_row(fields: &[&str], origin: &str, line: usize) -> Result<Instrument, UniverseError> {
    let [symbol, class, price, volatility, activity] = fields else {
        return Err(UniverseError::Columns {
            origin: origin.to_string(),
            line,
            found: fields.len(),
        });
    };
    if !valid_symbol(symbol) {
        return Err(UniverseError::Symbol {
            origin: origin.to_string(),
            line,
            symbol: symbol.to_string(),
        });
    }
    let class = class.parse().map_err(|_| UniverseError::Class {
        origin: origin.to_string(),
        line,
        value: class.to_string(),
    })?;
    let price = positive(price, "price", origin, line)?;
    let volatility = positive(volatility, "volatility", origin, line)?;
    if volatility > MAX_VOLATILITY {
        return Err(UniverseError::Volatility {
            origin: origin.to_string(),
            line,
            value: volatility,
        });
    }
    let activity = positive(activity, "activity", origin, line)?;
    Ok(Instrument {
        symbol: Symbol::from(*symbol),
        class,
        price,
        volatility,
        activity,
    })
}

/// Parses a finite number that must be greater than zero.
fn positive(
    text: &str,
    column: &'static str,
    origin: &str,
    line: usize,
) -> Result<f64, UniverseError> {
    let value: f64 = text
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| UniverseError::Number {
            origin: origin.to_string(),
            line,
            column,
            value: text.to_string(),
        })?;
    if value <= 0.0 {
        return Err(UniverseError::NotPositive {
            origin: origin.to_string(),
            line,
            column,
            value,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "# comment\nsymbol,class,price,volatility,activity\n";

    fn err(body: &str) -> UniverseError {
        Universe::parse(&format!("{HEAD}{body}")).unwrap_err()
    }

    /// The line and column count of a [`UniverseError::Columns`].
    fn columns(e: &UniverseError) -> Option<(usize, usize)> {
        match e {
            UniverseError::Columns { line, found, .. } => Some((*line, *found)),
            _ => None,
        }
    }

    /// The line and column name of a [`UniverseError::Number`].
    fn number(e: &UniverseError) -> Option<(usize, &'static str)> {
        match e {
            UniverseError::Number { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }

    #[test]
    fn bundled_universe_is_large_and_valid() {
        let u = Universe::bundled();
        assert!(u.len() >= 500, "only {} instruments", u.len());
        assert!(!u.is_empty());
        for s in u.symbols() {
            assert!(valid_symbol(s), "{s}");
        }
        let mut seen = std::collections::HashSet::new();
        assert!(
            u.symbols().all(|s| seen.insert(s.clone())),
            "duplicate symbol"
        );
        let count = |c| u.instruments().iter().filter(|i| i.class == c).count();
        assert!(count(AssetClass::Equity) >= 450);
        assert!(count(AssetClass::Fx) >= 8);
        assert!(count(AssetClass::Crypto) >= 8);
        for name in [
            "AAPL", "MSFT", "NVDA", "TSLA", "SPY", "BRK.B", "EUR/USD", "USD/JPY", "BTC-USD",
            "ETH-USD",
        ] {
            assert!(u.get(name).is_some(), "{name} missing");
        }
        assert_eq!(u.get("EUR/USD").unwrap().class, AssetClass::Fx);
        assert_eq!(u.get("BTC-USD").unwrap().class, AssetClass::Crypto);
        assert!(u.get("NOPE").is_none());
        for i in u.instruments() {
            assert!(
                i.price > 0.0 && i.volatility > 0.0 && i.activity > 0.0,
                "{i:?}"
            );
            // Start prices sit far above one tick so the walk has room.
            assert!(i.price > 100.0 * i.tick_size(), "{i:?}");
        }
    }

    #[test]
    fn tick_sizes() {
        assert_eq!(AssetClass::Equity.tick_size("AAPL"), 0.01);
        assert_eq!(AssetClass::Crypto.tick_size("BTC-USD"), 0.01);
        assert_eq!(AssetClass::Fx.tick_size("EUR/USD"), 0.00001);
        assert_eq!(AssetClass::Fx.tick_size("USD/JPY"), 0.001);
        assert_eq!(AssetClass::Fx.tick_size("JPY/USD"), 0.00001);
        let u = Universe::bundled();
        assert_eq!(u.get("GBP/JPY").unwrap().tick_size(), 0.001);
        assert_eq!(u.get("EUR/GBP").unwrap().price_decimals(), 5);
    }

    #[test]
    fn parses_comments_blank_lines_and_spaces() {
        let u = Universe::parse(
            "\u{feff}# universe\n\nsymbol,class,price,volatility,activity\r\n\
             AAPL, equity, 189.10, 0.25, 50\r\n# fx\nEUR/USD,FX,1.085,0.07,20\n",
        )
        .unwrap();
        assert_eq!(u.len(), 2);
        let e = u.get("EUR/USD").unwrap();
        assert_eq!(
            (e.class, e.price, e.volatility, e.activity),
            (AssetClass::Fx, 1.085, 0.07, 20.0)
        );
        assert_eq!(
            u.symbols().map(|s| &**s).collect::<Vec<_>>(),
            ["AAPL", "EUR/USD"]
        );
    }

    #[test]
    fn column_count_error_has_line() {
        let e = err("AAPL,equity,1,0.2,1\nMSFT,equity,1,0.2\n");
        assert_eq!(columns(&e), Some((4, 4)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "<universe text>:4: expected 5 columns (symbol,class,price,volatility,activity), found 4"
        );
        let e = err("AAPL,equity,1,0.2,1,extra\n");
        assert_eq!(columns(&e), Some((3, 6)), "{e:?}");
    }

    #[test]
    fn number_error_has_line_and_column() {
        let e = err("AAPL,equity,1x,0.2,1\n");
        assert_eq!(number(&e), Some((3, "price")), "{e:?}");
        assert_eq!(
            e.to_string(),
            "<universe text>:3: price `1x` is not a number"
        );
        let e = err("AAPL,equity,1,0.2,NaN\n");
        assert_eq!(number(&e), Some((3, "activity")), "{e:?}");
        let e = err("AAPL,equity,1,inf,1\n");
        assert_eq!(number(&e), Some((3, "volatility")), "{e:?}");
    }

    #[test]
    fn bad_symbol_error_has_line() {
        let e = err("AAPL,equity,1,0.2,1\naapl,equity,1,0.2,1\n");
        assert!(matches!(e, UniverseError::Symbol { line: 4, .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("<universe text>:4: invalid symbol `aapl`"),
            "{e}"
        );
        let e = err(",equity,1,0.2,1\n");
        assert!(matches!(e, UniverseError::Symbol { line: 3, .. }), "{e:?}");
    }

    #[test]
    fn bad_class_error_has_line() {
        let e = err("AAPL,bond,1,0.2,1\n");
        assert!(matches!(e, UniverseError::Class { line: 3, .. }), "{e:?}");
        assert!(e.to_string().contains(":3: class `bond`"), "{e}");
    }

    #[test]
    fn duplicate_error_names_both_lines() {
        let e = err("AAPL,equity,1,0.2,1\n\nMSFT,equity,1,0.2,1\nAAPL,equity,2,0.2,1\n");
        assert!(
            matches!(e, UniverseError::Duplicate { line: 6, first_line: 3, ref symbol, .. } if symbol == "AAPL"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "<universe text>:6: duplicate symbol `AAPL` (first on line 3)"
        );
    }

    #[test]
    fn non_positive_errors_have_line_and_column() {
        for (row, column) in [
            ("A,equity,0,0.2,1", "price"),
            ("A,equity,-3,0.2,1", "price"),
            ("A,equity,1,0,1", "volatility"),
            ("A,equity,1,-0.2,1", "volatility"),
            ("A,equity,1,0.2,0", "activity"),
        ] {
            let e = err(&format!("B,equity,1,0.2,1\n{row}\n"));
            assert!(
                matches!(e, UniverseError::NotPositive { line: 4, column: c, .. } if c == column),
                "{row}: {e:?}"
            );
            assert!(
                e.to_string()
                    .contains(&format!(":4: {column} must be greater than 0")),
                "{e}"
            );
        }
        let e = err("A,equity,1,25,1\n");
        assert!(
            matches!(e, UniverseError::Volatility { line: 3, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn empty_and_header_errors() {
        let e = Universe::parse(HEAD).unwrap_err();
        assert!(matches!(e, UniverseError::Empty { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "<universe text>: universe has no instruments"
        );
        let e = Universe::parse("").unwrap_err();
        assert!(matches!(e, UniverseError::Empty { .. }), "{e:?}");
        let e = Universe::parse("# hi\nAAPL,equity,1,0.2,1\n").unwrap_err();
        assert!(matches!(e, UniverseError::Header { line: 2, .. }), "{e:?}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("tickstream-universe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.csv");
        std::fs::write(
            &path,
            format!("{HEAD}AAPL,equity,1,0.2,1\nMSFT,equity,1,0.2,x\n"),
        )
        .unwrap();
        let e = Universe::load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:4: activity `x` is not a number", path.display())
        );
        std::fs::write(&path, format!("{HEAD}AAPL,equity,1,0.2,1\n")).unwrap();
        assert_eq!(Universe::load(&path).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Universe::load(&path).unwrap_err();
        assert!(matches!(e, UniverseError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot read universe"), "{e}");
    }

    #[test]
    fn filter_selects_and_reports_unknown() {
        let u = Universe::bundled();
        let want = ["TSLA", "EUR/USD", "TSLA", "BTC-USD"].map(String::from);
        let sub = u.filter(&want).unwrap();
        assert_eq!(
            sub.symbols().map(|s| &**s).collect::<Vec<_>>(),
            ["TSLA", "EUR/USD", "BTC-USD"]
        );
        assert_eq!(sub.get("EUR/USD"), u.get("EUR/USD"));
        assert!(sub.get("AAPL").is_none());
        let e = u
            .filter(&["AAPL".into(), "NOPE".into(), "ZZZ".into()])
            .unwrap_err();
        assert!(
            matches!(e, UniverseError::Unknown { ref symbols } if symbols == &["NOPE", "ZZZ"]),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "unknown symbol(s) not in the universe: NOPE, ZZZ"
        );
        assert!(matches!(
            u.filter(&[]).unwrap_err(),
            UniverseError::Empty { .. }
        ));
    }
}
