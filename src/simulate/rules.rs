//! The rules' share of a blast radius, for `cohort simulate --against` without samples.
//! A rule decides by what a request carries (client address, headers, cookies, query),
//! which synthetic users do not have, so *who* matches a rule is unknown here. What is
//! known exactly is where the users it matches go: for each rule added, removed or changed
//! (by name), every synthetic user is taken as matching it, and its variant under the
//! first config is compared with its variant under the second. A rule with `key_in` is
//! evaluated on the keys it lists instead, which is exact for those keys.
//!
//! Assumed, and said so in the output: the users reach the rule (no earlier rule takes
//! them) on both sides. A removed rule's users fall through to the hash split of the
//! second config, an added rule's users come from the hash split of the first.

use super::{synthetic_key, Transition};
use crate::config::{Config, RuleAction, RuleConfig, ServiceConfig};
use crate::routing::{cohort, Router, Service};

/// How a rule differs between the two configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    /// Its conditions or its action differ.
    Changed,
    /// Written the same; its users can still move (a new salt, renamed variants).
    Same,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Same => "unchanged",
        }
    }
}

/// Who the matrix of a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Population {
    /// `user-0 .. user-(N-1)`, each taken as matching the rule.
    Synthetic,
    /// The keys the rule's `key_in` lists (on either side).
    ListedKeys,
}

/// One rule's transition matrix: where the users it matches go.
#[derive(Debug, Clone)]
pub struct RuleTransition {
    pub rule: String,
    pub change: Change,
    /// The rule as written in the first config (`None`: added).
    pub was: Option<String>,
    /// The rule as written in the second config (`None`: removed).
    pub now: Option<String>,
    pub population: Population,
    /// Which of the rule's users the matrix counts.
    pub scope: Scope,
    pub matrix: Transition,
}

/// Which users of a rule a matrix counts. When a rule's conditions change, some users
/// match it on one side only: they go between its action and the hash split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Users the rule matches on each side where it exists.
    Matching,
    /// Users the old conditions match and the new ones do not.
    OnlyBefore,
    /// Users the new conditions match and the old ones did not.
    OnlyAfter,
}

impl Scope {
    fn label(self) -> &'static str {
        match self {
            Scope::Matching => "",
            Scope::OnlyBefore => ", users only its old conditions match",
            Scope::OnlyAfter => ", users only its new conditions match",
        }
    }
}

/// The rule differences of one service present in both configs.
#[derive(Debug, Clone)]
pub struct RuleChanges {
    pub service: String,
    /// Rules whose matching users move, and every added, removed or changed rule.
    pub rules: Vec<RuleTransition>,
    /// The rules both configs have, in each config's order, when that order differs.
    pub reordered: Option<(Vec<String>, Vec<String>)>,
    /// Changes to keying and matching that synthetic users cannot show
    /// ([`super::keying::cautions`]).
    pub cautions: Vec<String>,
}

impl RuleChanges {
    /// Whether any rule's outcome changes for the users it matches.
    pub fn moves_anyone(&self) -> bool {
        self.rules.iter().any(|r| r.matrix.moved() > 0)
    }

    /// Whether there is anything to report.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.reordered.is_none() && self.cautions.is_empty()
    }
}

/// Rule differences for every service present (by name) in both configs.
pub fn rule_changes(a: &Config, b: &Config, users: u64) -> Vec<RuleChanges> {
    let (ra, rb) = (Router::new(a), Router::new(b));
    ra.services
        .iter()
        .filter_map(|sa| {
            let sb = rb.services.iter().find(|s| s.cfg.name == sa.cfg.name)?;
            Some(service_changes(sa, sb, users))
        })
        .collect()
}

/// Rule differences between two versions of one service.
pub fn service_changes(sa: &Service, sb: &Service, users: u64) -> RuleChanges {
    let mut names: Vec<&str> = sa.cfg.rules.iter().map(|r| r.name.as_str()).collect();
    for r in &sb.cfg.rules {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    let mut rules = Vec::new();
    for name in names {
        let ia = sa.cfg.rules.iter().position(|r| r.name == name);
        let ib = sb.cfg.rules.iter().position(|r| r.name == name);
        let change = match (ia, ib) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            (Some(i), Some(j)) if same_rule(&sa.cfg, i, &sb.cfg, j) => Change::Same,
            _ => Change::Changed,
        };
        let mut scopes = vec![(Scope::Matching, ia, ib)];
        if let (Some(i), Some(j)) = (ia, ib) {
            if !same_conditions(&sa.cfg.rules[i], &sb.cfg.rules[j]) {
                scopes.push((Scope::OnlyBefore, ia, None));
                scopes.push((Scope::OnlyAfter, None, ib));
            }
        }
        for (scope, a, b) in scopes {
            let (population, matrix) = rule_matrix(sa, a, sb, b, users);
            if change != Change::Same || matrix.moved() > 0 {
                rules.push(RuleTransition {
                    rule: name.to_string(),
                    change,
                    was: ia.map(|i| describe(&sa.cfg, &sa.cfg.rules[i])),
                    now: ib.map(|j| describe(&sb.cfg, &sb.cfg.rules[j])),
                    population,
                    scope,
                    matrix,
                });
            }
        }
    }
    let common = |s: &ServiceConfig, other: &ServiceConfig| -> Vec<String> {
        s.rules
            .iter()
            .filter(|r| other.rules.iter().any(|o| o.name == r.name))
            .map(|r| r.name.clone())
            .collect()
    };
    let (oa, ob) = (common(&sa.cfg, &sb.cfg), common(&sb.cfg, &sa.cfg));
    RuleChanges {
        service: sa.cfg.name.clone(),
        rules,
        reordered: (oa != ob).then_some((oa, ob)),
        cautions: super::keying::cautions(&sa.cfg, &sb.cfg),
    }
}

/// The variant of a user with `key` on one side: the rule's action if the user matches
/// it there (a listed key for `key_in`; anyone otherwise), else the hash split.
fn side(s: &Service, rule: Option<usize>, key: &[u8]) -> usize {
    let matched = rule
        .and_then(|i| s.cfg.rules.get(i))
        .filter(|r| r.key_in.as_ref().is_none_or(|set| set.contains(key)));
    let v = match matched.map(|r| &r.action) {
        Some(RuleAction::Variant(v)) => Some(*v),
        Some(RuleAction::Weights(w)) => cohort::assign(key, &s.seeds, w),
        None => cohort::assign(key, &s.seeds, &s.weights),
    };
    // Validation guarantees a positive weight sum, so there is always a winner.
    v.unwrap_or(0)
}

/// The matrix of the users rule `ia` (first config) / `ib` (second) matches.
fn rule_matrix(
    sa: &Service,
    ia: Option<usize>,
    sb: &Service,
    ib: Option<usize>,
    users: u64,
) -> (Population, Transition) {
    let listed: Vec<&[u8]> = {
        let mut keys: Vec<&[u8]> = [(sa, ia), (sb, ib)]
            .iter()
            .filter_map(|(s, i)| s.cfg.rules.get((*i)?)?.key_in.as_ref())
            .flat_map(|set| set.iter())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    let mut counts = vec![vec![0u64; sb.cfg.variants.len()]; sa.cfg.variants.len()];
    let mut count = |key: &[u8]| counts[side(sa, ia, key)][side(sb, ib, key)] += 1;
    let any_key_in = [(sa, ia), (sb, ib)].iter().any(|(s, i)| {
        i.and_then(|i| s.cfg.rules.get(i)?.key_in.as_ref())
            .is_some()
    });
    let (population, n) = if any_key_in {
        listed.iter().for_each(|k| count(k));
        (Population::ListedKeys, listed.len() as u64)
    } else {
        (0..users).for_each(|i| count(synthetic_key(i).as_bytes()));
        (Population::Synthetic, users)
    };
    (
        population,
        Transition {
            service: sa.cfg.name.clone(),
            from: sa.cfg.variants.iter().map(|v| v.name.clone()).collect(),
            to: sb.cfg.variants.iter().map(|v| v.name.clone()).collect(),
            counts,
            users: n,
        },
    )
}

/// Whether rule `i` of `a` and rule `j` of `b` are written alike: the same conditions,
/// and the same action by variant name.
fn same_rule(a: &ServiceConfig, i: usize, b: &ServiceConfig, j: usize) -> bool {
    let (ra, rb) = (&a.rules[i], &b.rules[j]);
    same_conditions(ra, rb) && ra.key_in == rb.key_in && action(a, ra) == action(b, rb)
}

/// Whether two rules test the same client address, header, cookie and query (`key_in`
/// aside: its keys are counted one by one).
fn same_conditions(ra: &RuleConfig, rb: &RuleConfig) -> bool {
    ra.client_cidr == rb.client_cidr
        && ra.header.as_ref().map(|m| (m.name.as_str(), &m.op))
            == rb.header.as_ref().map(|m| (m.name.as_str(), &m.op))
        && ra.cookie.as_ref().map(|m| (m.name.as_str(), &m.op))
            == rb.cookie.as_ref().map(|m| (m.name.as_str(), &m.op))
        && ra.query.as_ref().map(|m| (m.name.as_str(), &m.op))
            == rb.query.as_ref().map(|m| (m.name.as_str(), &m.op))
}

/// A rule's action by variant name (weights: the positive ones, in name order).
fn action(s: &ServiceConfig, r: &RuleConfig) -> Vec<(String, f64)> {
    let name = |i: usize| s.variants.get(i).map_or(String::new(), |v| v.name.clone());
    match &r.action {
        RuleAction::Variant(v) => vec![(name(*v), f64::INFINITY)],
        RuleAction::Weights(w) => {
            let mut out: Vec<(String, f64)> = w
                .iter()
                .enumerate()
                .filter(|(_, w)| **w > 0.0)
                .map(|(i, w)| (name(i), *w))
                .collect();
            out.sort_by(|x, y| x.0.cmp(&y.0));
            out
        }
    }
}

/// `conditions -> action`, as `cohort check` prints a rule.
pub fn describe(s: &ServiceConfig, r: &RuleConfig) -> String {
    let act = match &r.action {
        RuleAction::Variant(v) => s.variants.get(*v).map_or(String::new(), |v| v.name.clone()),
        RuleAction::Weights(_) => format!(
            "split {}",
            action(s, r)
                .iter()
                .map(|(n, w)| format!("{n}={w}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    };
    let cond = crate::cli::conditions(r);
    if cond.is_empty() {
        format!("(every request) -> {act}")
    } else {
        format!("{cond} -> {act}")
    }
}

/// Renders one service's rule changes (after its hash-split matrix).
pub fn changes_text(c: &RuleChanges) -> String {
    let mut out = String::new();
    for r in &c.rules {
        let who = match r.population {
            Population::Synthetic => "synthetic users taken as matching it",
            Population::ListedKeys => "keys its key_in lists",
        };
        let m = &r.matrix;
        out += &format!(
            "service {}, rule {} ({}{}): {} of {} {who} move ({:.3}%)\n",
            c.service,
            r.rule,
            r.change.as_str(),
            r.scope.label(),
            m.moved(),
            m.users,
            m.moved() as f64 / m.users.max(1) as f64 * 100.0
        );
        let hashed = |side: &str| format!("(not matched: the {side} config's hash split)");
        let (was, now) = match r.scope {
            Scope::Matching => (r.was.clone(), r.now.clone()),
            Scope::OnlyBefore => (r.was.clone(), None),
            Scope::OnlyAfter => (None, r.now.clone()),
        };
        match (was, now) {
            (Some(w), Some(n)) if w == n => out += &format!("  rule     {w}\n"),
            (w, n) => {
                out += &format!(
                    "  was      {}\n  now      {}\n",
                    w.unwrap_or_else(|| hashed("first")),
                    n.unwrap_or_else(|| hashed("second"))
                );
            }
        }
        if r.change == Change::Same {
            out += "  (written alike, but the salt or the variant names changed)\n";
        }
        out += &super::matrix_text(m);
        out.push('\n');
    }
    for caution in &c.cautions {
        out += &format!("service {}: caution: {caution}\n", c.service);
    }
    if !c.cautions.is_empty() {
        out.push('\n');
    }
    if let Some((a, b)) = &c.reordered {
        out += &format!(
            "service {}: rule order changed ({} -> {}): a request that matches several rules may now be decided by another one\n\n",
            c.service,
            a.join(", "),
            b.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rules: &str, salt: &str) -> Config {
        Config::parse(&format!(
            "[[service]]\nname = \"api\"\nkey = [\"header:x-user-id\"]\nsalt = \"{salt}\"\n\
             [[service.variant]]\nname = \"stable\"\nweight = 95\nbackends = [\"127.0.0.1:1\"]\n\
             [[service.variant]]\nname = \"canary\"\nweight = 5\nbackends = [\"127.0.0.1:2\"]\n{rules}"
        ))
        .unwrap()
    }

    const EU_SPLIT: &str = "[[service.rule]]\nname = \"eu\"\nheader = { name = \"x-country\", in = [\"DE\"] }\nweights = { canary = 50, stable = 50 }\n";
    const EU_PIN: &str = "[[service.rule]]\nname = \"eu\"\nheader = { name = \"x-country\", in = [\"DE\"] }\nvariant = \"canary\"\n";

    fn only(a: &str, b: &str, users: u64) -> RuleChanges {
        let mut v = rule_changes(&config(a, "api"), &config(b, "api"), users);
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn cell(m: &Transition, from: &str, to: &str) -> u64 {
        let i = m.from.iter().position(|f| f == from).unwrap();
        let j = m.to.iter().position(|t| t == to).unwrap();
        m.counts[i][j]
    }

    #[test]
    fn a_split_rule_pinned_to_canary_moves_exactly_its_stable_half() {
        let c = only(EU_SPLIT, EU_PIN, 10_000);
        assert_eq!(c.rules.len(), 1);
        let r = &c.rules[0];
        assert_eq!((r.rule.as_str(), r.change), ("eu", Change::Changed));
        assert_eq!(r.population, Population::Synthetic);
        // Recount with the normative function: 50/50 on the api salt, then all canary.
        let seeds = [
            cohort::variant_seed("api", "stable"),
            cohort::variant_seed("api", "canary"),
        ];
        let stable_half = (0..10_000)
            .filter(|i| {
                cohort::assign(synthetic_key(*i).as_bytes(), &seeds, &[50.0, 50.0]) == Some(0)
            })
            .count() as u64;
        assert_eq!(cell(&r.matrix, "stable", "canary"), stable_half);
        assert_eq!(cell(&r.matrix, "canary", "canary"), 10_000 - stable_half);
        assert_eq!(cell(&r.matrix, "canary", "stable"), 0);
        assert_eq!(r.matrix.moved(), stable_half);
        assert!((4_000..6_000).contains(&stable_half), "{stable_half}");
        assert!(c.moves_anyone());
    }

    #[test]
    fn a_removed_pin_sends_its_users_to_the_hash_split() {
        let c = only(EU_PIN, "", 10_000);
        let r = &c.rules[0];
        assert_eq!(r.change, Change::Removed);
        assert!(r.now.is_none() && r.was.is_some());
        let m = &r.matrix;
        assert_eq!(cell(m, "stable", "stable") + cell(m, "stable", "canary"), 0);
        // Everyone was canary; the 95/5 split keeps about 5% there.
        let stay = cell(m, "canary", "canary");
        assert_eq!(m.moved(), 10_000 - stay);
        assert!((300..700).contains(&stay), "{stay}");
        let added = only("", EU_PIN, 10_000);
        assert_eq!(added.rules[0].change, Change::Added);
        assert_eq!(added.rules[0].matrix.moved(), 10_000 - stay, "the way back");
    }

    #[test]
    fn an_unchanged_rule_is_not_reported_unless_its_users_move() {
        assert!(only(EU_SPLIT, EU_SPLIT, 1_000).is_empty());
        assert!(only(EU_PIN, EU_PIN, 1_000).is_empty());
        // Same rule text, new salt: the 50/50 re-split reshuffles.
        let v = rule_changes(&config(EU_SPLIT, "api"), &config(EU_SPLIT, "api-2"), 1_000);
        let r = &v[0].rules[0];
        assert_eq!(r.change, Change::Same);
        assert!(r.matrix.moved() > 0);
    }

    #[test]
    fn rescaled_weights_are_a_change_that_moves_nobody() {
        let half = EU_SPLIT.replace("canary = 50, stable = 50", "canary = 1, stable = 1");
        let c = only(EU_SPLIT, &half, 2_000);
        assert_eq!(c.rules[0].change, Change::Changed);
        assert_eq!(c.rules[0].matrix.moved(), 0);
        assert!(!c.moves_anyone());
    }

    #[test]
    fn key_in_rules_count_the_listed_keys() {
        let a = "[[service.rule]]\nname = \"partners\"\nkey_in = [\"acme\", \"globex\"]\nvariant = \"canary\"\n";
        let b =
            "[[service.rule]]\nname = \"partners\"\nkey_in = [\"acme\"]\nvariant = \"canary\"\n";
        let c = only(a, b, 100_000);
        let r = &c.rules[0];
        assert_eq!(r.population, Population::ListedKeys);
        assert_eq!(r.matrix.users, 2);
        assert_eq!(
            cell(&r.matrix, "canary", "canary") + cell(&r.matrix, "canary", "stable"),
            2
        );
        let seeds = [
            cohort::variant_seed("api", "stable"),
            cohort::variant_seed("api", "canary"),
        ];
        let globex = cohort::assign(b"globex", &seeds, &[95.0, 5.0]);
        assert_eq!(r.matrix.moved(), u64::from(globex == Some(0)));
    }

    #[test]
    fn narrowed_conditions_move_the_users_left_out() {
        // DE and FR pinned to canary, then only DE: matching users stay, FR users go to
        // the hash split. Synthetic users cannot say who is French, so both are shown.
        let wide = EU_PIN.replace("[\"DE\"]", "[\"DE\", \"FR\"]");
        let c = only(&wide, EU_PIN, 10_000);
        let scopes: Vec<(Scope, u64)> = c
            .rules
            .iter()
            .map(|r| (r.scope, r.matrix.moved()))
            .collect();
        assert_eq!(scopes.len(), 3, "{scopes:?}");
        assert_eq!(scopes[0], (Scope::Matching, 0));
        let before = &c.rules[1];
        assert_eq!(before.scope, Scope::OnlyBefore);
        let stay = cell(&before.matrix, "canary", "canary");
        assert_eq!(before.matrix.moved(), 10_000 - stay);
        assert!(before.matrix.moved() > 9_000);
        assert_eq!(c.rules[2].scope, Scope::OnlyAfter);
        assert_eq!(c.rules[2].matrix.moved(), 10_000 - stay);
        assert!(c.moves_anyone(), "a narrowed rule is never `0 move`");
        let text = changes_text(&c);
        assert!(
            text.contains("rule eu (changed, users only its old conditions match)"),
            "{text}"
        );
        // An action-only change has no such extra matrices.
        assert_eq!(only(EU_SPLIT, EU_PIN, 100).rules.len(), 1);
    }

    #[test]
    fn reordering_is_reported() {
        let staff = "[[service.rule]]\nname = \"staff\"\nclient_cidr = [\"10.0.0.0/8\"]\nvariant = \"canary\"\n";
        let c = only(
            &format!("{staff}{EU_PIN}"),
            &format!("{EU_PIN}{staff}"),
            100,
        );
        assert!(c.rules.is_empty());
        assert_eq!(
            c.reordered,
            Some((
                vec!["staff".to_string(), "eu".to_string()],
                vec!["eu".to_string(), "staff".to_string()]
            ))
        );
    }
}
