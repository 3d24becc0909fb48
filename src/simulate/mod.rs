//! `cohort simulate`: the share each variant gets over N synthetic cohort keys, and with
//! `--against` the transition matrix (who would move where) if another config replaced
//! this one — the blast radius of a reload, before it is applied.
//!
//! - Here: the hash split (SPEC decision step 3) over synthetic users, i.e. the users no
//!   rule matches.
//! - [`rules`]: for each rule added, removed or changed, where the users it matches go.
//! - [`replay`]: recorded request samples routed through both configs by the proxy's
//!   own decision code: the exact blast radius for that request mix.

pub mod keying;
pub mod replay;
pub mod rules;

use crate::config::{Config, ServiceConfig};
use crate::routing::cohort;

/// Share of one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub variant: String,
    pub weight: f64,
    pub users: u64,
}

/// `counts[from][to]` over the variants of two versions of one service.
#[derive(Debug, Clone)]
pub struct Transition {
    pub service: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub counts: Vec<Vec<u64>>,
    pub users: u64,
}

impl Transition {
    /// Users whose variant changes (by name).
    pub fn moved(&self) -> u64 {
        let mut n = 0;
        for (i, row) in self.counts.iter().enumerate() {
            for (j, c) in row.iter().enumerate() {
                if self.from[i] != self.to[j] {
                    n += c;
                }
            }
        }
        n
    }
}

/// The synthetic key of user `i`.
pub fn synthetic_key(i: u64) -> String {
    format!("user-{i}")
}

struct Hasher {
    seeds: Vec<u64>,
    weights: Vec<f64>,
}

impl Hasher {
    fn new(s: &ServiceConfig) -> Hasher {
        Hasher {
            seeds: s
                .variants
                .iter()
                .map(|v| cohort::variant_seed(&s.salt, &v.name))
                .collect(),
            weights: s.variants.iter().map(|v| v.weight).collect(),
        }
    }

    fn assign(&self, key: &[u8]) -> usize {
        cohort::assign(key, &self.seeds, &self.weights).unwrap_or(0)
    }
}

/// Shares for one service over `users` keys.
pub fn shares(s: &ServiceConfig, users: u64) -> Vec<Share> {
    let h = Hasher::new(s);
    let mut counts = vec![0u64; s.variants.len()];
    for i in 0..users {
        counts[h.assign(synthetic_key(i).as_bytes())] += 1;
    }
    s.variants
        .iter()
        .zip(counts)
        .map(|(v, users)| Share {
            variant: v.name.clone(),
            weight: v.weight,
            users,
        })
        .collect()
}

/// Transition matrices for every service present (by name) in both configs.
pub fn transitions(a: &Config, b: &Config, users: u64) -> Vec<Transition> {
    a.services
        .iter()
        .filter_map(|sa| {
            let sb = b.services.iter().find(|s| s.name == sa.name)?;
            let (ha, hb) = (Hasher::new(sa), Hasher::new(sb));
            let mut counts = vec![vec![0u64; sb.variants.len()]; sa.variants.len()];
            for i in 0..users {
                let k = synthetic_key(i);
                counts[ha.assign(k.as_bytes())][hb.assign(k.as_bytes())] += 1;
            }
            Some(Transition {
                service: sa.name.clone(),
                from: sa.variants.iter().map(|v| v.name.clone()).collect(),
                to: sb.variants.iter().map(|v| v.name.clone()).collect(),
                counts,
                users,
            })
        })
        .collect()
}

/// Renders shares as a table.
pub fn shares_text(service: &str, shares: &[Share], users: u64) -> String {
    let total: f64 = shares.iter().map(|s| s.weight).sum();
    let mut out = format!("service {service}: {users} synthetic users\n");
    out += "variant              weight   expected   simulated   users\n";
    for s in shares {
        out += &format!(
            "{:<20} {:>6}   {:>7.3}%   {:>8.3}%   {}\n",
            s.variant,
            s.weight,
            if total > 0.0 {
                s.weight / total * 100.0
            } else {
                0.0
            },
            s.users as f64 / users.max(1) as f64 * 100.0,
            s.users
        );
    }
    out
}

/// Renders the hash-split matrix of a service whose rules did not change.
pub fn transition_text(t: &Transition) -> String {
    transition_text_with(t, None)
}

/// Renders the hash-split matrix of a service, with a headline that never says users
/// do not move while its rule changes move some (those are rendered by
/// [`rules::changes_text`]).
pub fn transition_text_with(t: &Transition, rules: Option<&rules::RuleChanges>) -> String {
    let pct = t.moved() as f64 / t.users.max(1) as f64 * 100.0;
    let mut moving: Vec<&str> = Vec::new();
    for r in rules.iter().flat_map(|r| &r.rules) {
        if r.matrix.moved() > 0 && !moving.contains(&r.rule.as_str()) {
            moving.push(&r.rule);
        }
    }
    let cautious = rules.is_some_and(|r| !r.cautions.is_empty());
    let head = if moving.is_empty() && cautious {
        format!(
            "service {}: {} of {} synthetic users move by the hash split ({pct:.3}%) if each keeps its key; but how users are keyed or matched changed, which moves real users this cannot count (cautions below)\n",
            t.service,
            t.moved(),
            t.users
        )
    } else if moving.is_empty() {
        format!(
            "service {}: {} of {} users move ({pct:.3}%)\n",
            t.service,
            t.moved(),
            t.users
        )
    } else {
        format!(
            "service {}: rule changes move the users they match (rule {}: below); besides, the hash split moves {} of {} synthetic users no rule matches ({pct:.3}%)\n",
            t.service,
            moving.join(", rule "),
            t.moved(),
            t.users
        )
    };
    head + &matrix_text(t)
}

/// The `from \ to` table of a transition matrix.
pub fn matrix_text(t: &Transition) -> String {
    let mut out = "from \\ to            ".to_string();
    for to in &t.to {
        out += &format!("{to:>12}");
    }
    out.push('\n');
    for (i, row) in t.counts.iter().enumerate() {
        out += &format!("{:<20}", t.from[i]);
        for c in row {
            out += &format!("{c:>12}");
        }
        out.push('\n');
    }
    out
}
