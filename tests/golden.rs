#![allow(clippy::unwrap_used)]
//! Pins the Rust assignment function (`cohort::routing::cohort`) to the checked-in golden
//! table `tests/golden/vectors.tsv`, which the offline Python reference
//! `scripts/cohort_assign.py` generates (`--generate`) and re-checks (`--check`).
//!
//! Every row is recomputed here: `variant_seed` and `unit` must give bit-for-bit the table's
//! `u` values (Python `repr()`, which `str::parse::<f64>` reads back exactly) and `assign`
//! must pick the table's winner.

use std::collections::BTreeSet;
use std::path::PathBuf;

use cohort::routing::cohort::{assign, unit, variant_seed};

const COLUMNS: [&str; 6] = ["salt", "variants", "key_hex", "key_display", "winner", "u"];

/// One data row of the golden table.
struct Row {
    line: usize,
    salt: String,
    /// The `variants` column as written, e.g. `stable=95,canary=5`.
    variants_text: String,
    variants: Vec<(String, f64)>,
    key: Vec<u8>,
    key_display: String,
    winner: String,
    u: Vec<f64>,
}

impl Row {
    fn weights(&self) -> Vec<f64> {
        self.variants.iter().map(|(_, w)| *w).collect()
    }
}

fn table_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/vectors.tsv")
}

fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err(format!("odd-length hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("bad hex at offset {i} in {s:?}"))
        })
        .collect()
}

fn parse_row(line: usize, text: &str) -> Result<Row, String> {
    let fields: Vec<&str> = text.split('\t').collect();
    let [salt, variants_text, key_hex, key_display, winner, u] = fields[..] else {
        return Err(format!(
            "expected 6 tab-separated fields, got {}",
            fields.len()
        ));
    };
    let variants = variants_text
        .split(',')
        .map(|item| {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| format!("variant {item:?} is not NAME=WEIGHT"))?;
            let weight = weight
                .parse::<f64>()
                .map_err(|e| format!("weight {weight:?}: {e}"))?;
            Ok((name.to_owned(), weight))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let u = u
        .split(',')
        .map(|x| x.parse::<f64>().map_err(|e| format!("u {x:?}: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    if u.len() != variants.len() {
        return Err(format!(
            "{} variants but {} u values",
            variants.len(),
            u.len()
        ));
    }
    Ok(Row {
        line,
        salt: salt.to_owned(),
        variants_text: variants_text.to_owned(),
        variants,
        key: decode_hex(key_hex)?,
        key_display: key_display.to_owned(),
        winner: winner.to_owned(),
        u,
    })
}

/// The data rows of the golden table; panics on a missing header or a malformed row.
fn golden_rows() -> Vec<Row> {
    let path = table_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.starts_with('#'));
    let header = lines.next().map(|(_, l)| l.split('\t').collect::<Vec<_>>());
    assert_eq!(
        header.as_deref(),
        Some(&COLUMNS[..]),
        "{}: the first line after the # comments must be the header",
        path.display()
    );
    lines
        .map(|(n, l)| parse_row(n, l).unwrap_or_else(|e| panic!("{}:{n}: {e}", path.display())))
        .collect()
}

fn rust_winner(row: &Row) -> Option<&str> {
    let seeds: Vec<u64> = row
        .variants
        .iter()
        .map(|(name, _)| variant_seed(&row.salt, name))
        .collect();
    assign(&row.key, &seeds, &row.weights()).map(|i| row.variants[i].0.as_str())
}

#[test]
fn every_golden_row_matches_the_rust_assignment() {
    let rows = golden_rows();
    let mut failures = Vec::new();
    for row in &rows {
        let at = format!(
            "line {} (salt {:?}, {}, key {})",
            row.line, row.salt, row.variants_text, row.key_display
        );
        for ((name, _), &want) in row.variants.iter().zip(&row.u) {
            let got = unit(&row.key, variant_seed(&row.salt, name));
            if got.to_bits() != want.to_bits() {
                failures.push(format!("{at}: u[{name}] is {got:?}, table has {want:?}"));
            }
        }
        let winner = rust_winner(row);
        if winner != Some(row.winner.as_str()) {
            failures.push(format!(
                "{at}: winner is {winner:?}, table has {}",
                row.winner
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden rows disagree with the Rust implementation:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn the_golden_table_has_at_least_60_rows() {
    let n = golden_rows().len();
    assert!(n >= 60, "the golden table has only {n} rows");
}

#[test]
fn variant_seed_reproduces_the_spec_seeds() {
    assert_eq!(variant_seed("api", "stable"), 0xfa91bc11e567cf4d);
    assert_eq!(variant_seed("api", "canary"), 0xcf9de49cab2063cb);
}

/// The spec's golden vectors, verbatim: key, u stable, u canary, winner at 95/5, at 99/1.
const SPEC_VECTORS: [(&str, &str, &str, &str, &str); 5] = [
    (
        "user-1",
        "0.63542012800597059",
        "0.46301501831745245",
        "stable",
        "stable",
    ),
    (
        "user-27",
        "0.025422852471970014",
        "0.95364607490434206",
        "canary",
        "stable",
    ),
    (
        "user-154",
        "0.17566832105468938",
        "0.99751749464042971",
        "canary",
        "canary",
    ),
    (
        "alice",
        "0.71886458413527454",
        "0.7409757282528715",
        "stable",
        "stable",
    ),
    (
        "203.0.113.7",
        "0.027185234927115054",
        "0.21974301714373351",
        "stable",
        "stable",
    ),
];

#[test]
fn the_spec_vectors_are_in_the_golden_table() {
    let rows = golden_rows();
    for (key, u_stable, u_canary, w95, w99) in SPEC_VECTORS {
        let spec_u: Vec<f64> = [u_stable, u_canary]
            .iter()
            .map(|x| x.parse::<f64>().expect("spec u values are decimal floats"))
            .collect();
        for (variants, winner) in [("stable=95,canary=5", w95), ("stable=99,canary=1", w99)] {
            let found = rows.iter().find(|r| {
                r.salt == "api" && r.variants_text == variants && r.key == key.as_bytes()
            });
            let row = found.unwrap_or_else(|| {
                panic!("spec row (api, {variants}, {key}) is missing from the golden table")
            });
            assert_eq!(row.winner, winner, "spec winner for {key} at {variants}");
            assert_eq!(
                row.u.iter().map(|u| u.to_bits()).collect::<Vec<_>>(),
                spec_u.iter().map(|u| u.to_bits()).collect::<Vec<_>>(),
                "spec u values for {key} (line {})",
                row.line
            );
        }
    }
}

#[test]
fn the_golden_table_covers_the_edge_cases_the_spec_cares_about() {
    let rows = golden_rows();
    let any = |what: &str, pred: &dyn Fn(&Row) -> bool| {
        assert!(rows.iter().any(pred), "no golden row has {what}");
    };
    any("the empty salt", &|r| r.salt.is_empty());
    any("a non-ASCII salt", &|r| !r.salt.is_ascii());
    any("a salt longer than 240 bytes", &|r| r.salt.len() > 240);
    for n in 2..=5 {
        any(&format!("{n} variants"), &|r| r.variants.len() == n);
    }
    any("a zero weight", &|r| r.weights().contains(&0.0));
    any("a fractional weight", &|r| {
        r.weights().iter().any(|w| w.fract() != 0.0)
    });
    any("weights 1 : 10000", &|r| {
        let w = r.weights();
        w.contains(&1.0) && w.contains(&10000.0)
    });
    any("the empty key", &|r| r.key.is_empty());
    any("a 1 KiB key", &|r| r.key.len() == 1024);
    any("a 4 KiB key", &|r| r.key.len() == 4096);
    any("a non-ASCII UTF-8 key", &|r| {
        std::str::from_utf8(&r.key).is_ok_and(|s| !s.is_ascii())
    });
    any("a key with a NUL byte", &|r| r.key.contains(&0));
    any("a key that is not UTF-8", &|r| {
        std::str::from_utf8(&r.key).is_err()
    });
    any("an IPv4 key", &|r| {
        std::str::from_utf8(&r.key).is_ok_and(|s| s.parse::<std::net::Ipv4Addr>().is_ok())
    });
    any("an IPv6 key", &|r| {
        std::str::from_utf8(&r.key).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
    });

    // In every 2-variant service with two positive weights both variants win some row, and
    // zero weights never win.
    let services: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.salt.clone(), r.variants_text.clone()))
        .collect();
    for (salt, variants) in &services {
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|r| &r.salt == salt && &r.variants_text == variants)
            .collect();
        let winners: BTreeSet<&str> = mine.iter().map(|r| r.winner.as_str()).collect();
        if mine[0].variants.len() == 2 && mine[0].weights().iter().all(|&w| w > 0.0) {
            assert_eq!(
                winners.len(),
                2,
                "only {winners:?} win in ({salt:?}, {variants})"
            );
        }
        for (name, w) in &mine[0].variants {
            if *w == 0.0 {
                assert!(!winners.contains(name.as_str()), "zero-weight {name} wins");
            }
        }
    }
}
