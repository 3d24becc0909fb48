//! The analysis window: the requests since the step began. Its inputs are *cumulative*
//! counters, read from each process (its own, or every instance's `/metrics`, or a
//! Prometheus that scrapes them); the window is their difference between the step's start
//! and now, kept per instance so that one restarting process (its counters back to 0)
//! neither loses the rest of the fleet's window nor makes it negative.
//!
//! Per instance the window is `carried + (last − start)`: `start` is the counters when
//! the step began (or when the instance was first seen during the step), `last` the
//! latest reading. A reading below `last` is a counter reset (a restart): what the dead
//! process counted is carried, and the new process counts from 0. An instance that
//! disappears keeps what it counted. One process alone is the one-instance case.

use super::error_gate::Tally;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One variant's cumulative counters, counting hash- and cookie-assigned traffic only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideCounters {
    /// Requests answered (`cohort_analysis_requests_total`, both outcomes).
    pub requests: u64,
    /// Of which errors (status >= 500).
    pub errors: u64,
    /// Cumulative duration histogram (`cohort_analysis_duration_seconds`): one count per
    /// bound of [`crate::metrics::duration_buckets`], then `+Inf`.
    pub buckets: Vec<u64>,
}

/// The canary's and the baseline's counters of one instance (or of a window).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub canary: SideCounters,
    pub baseline: SideCounters,
}

/// Every instance's cumulative counters at one moment, by a stable instance name (its
/// admin address, say); a single process uses one entry.
pub type Snapshot = BTreeMap<String, Counters>;

impl SideCounters {
    /// Requests and errors as the error gate takes them.
    pub fn tally(&self) -> Tally {
        Tally {
            n: self.requests,
            e: self.errors,
        }
    }

    /// Whether `self`, read after `before`, went backwards anywhere (a reset).
    fn is_reset_of(&self, before: &SideCounters) -> bool {
        self.requests < before.requests
            || self.errors < before.errors
            || (self.buckets.len() != before.buckets.len() && !before.buckets.is_empty())
            || self.buckets.iter().zip(&before.buckets).any(|(a, b)| a < b)
    }

    /// `self − start`, field by field (a missing bucket in `start` counts 0).
    fn since(&self, start: &SideCounters) -> SideCounters {
        SideCounters {
            requests: self.requests.saturating_sub(start.requests),
            errors: self.errors.saturating_sub(start.errors),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(start.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// `self + other`. Cumulative buckets of unequal length (never within one release)
    /// are padded with their last count, their total.
    fn add(&self, other: &SideCounters) -> SideCounters {
        let len = self.buckets.len().max(other.buckets.len());
        let at = |b: &[u64], i: usize| b.get(i).or(b.last()).copied().unwrap_or(0);
        SideCounters {
            requests: self.requests.saturating_add(other.requests),
            errors: self.errors.saturating_add(other.errors),
            buckets: (0..len)
                .map(|i| at(&self.buckets, i).saturating_add(at(&other.buckets, i)))
                .collect(),
        }
    }
}

impl Counters {
    fn is_reset_of(&self, before: &Counters) -> bool {
        self.canary.is_reset_of(&before.canary) || self.baseline.is_reset_of(&before.baseline)
    }

    fn since(&self, start: &Counters) -> Counters {
        Counters {
            canary: self.canary.since(&start.canary),
            baseline: self.baseline.since(&start.baseline),
        }
    }

    /// Field-by-field sum (fleet totals).
    pub fn add(&self, other: &Counters) -> Counters {
        Counters {
            canary: self.canary.add(&other.canary),
            baseline: self.baseline.add(&other.baseline),
        }
    }
}

/// One instance's part of the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Track {
    start: Counters,
    last: Counters,
    /// Counted by earlier lives of the instance (before resets) during this window.
    carried: Counters,
}

/// The window of the current step, persisted with the rollout state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    instances: BTreeMap<String, Track>,
}

impl Window {
    /// A window that begins now: every instance's current counters are its start.
    pub fn begin(now: &Snapshot) -> Window {
        Window {
            instances: now
                .iter()
                .map(|(name, c)| {
                    let track = Track {
                        start: c.clone(),
                        last: c.clone(),
                        carried: Counters::default(),
                    };
                    (name.clone(), track)
                })
                .collect(),
        }
    }

    /// Takes a new reading. A new instance starts its part of the window now; one that
    /// went backwards restarted, and carries what its earlier life counted.
    pub fn observe(&mut self, now: &Snapshot) {
        for (name, c) in now {
            match self.instances.get_mut(name) {
                None => {
                    let track = Track {
                        start: c.clone(),
                        last: c.clone(),
                        carried: Counters::default(),
                    };
                    self.instances.insert(name.clone(), track);
                }
                Some(t) if c.is_reset_of(&t.last) => {
                    t.carried = t.carried.add(&t.last.since(&t.start));
                    t.start = Counters::default();
                    t.last = c.clone();
                }
                Some(t) => t.last = c.clone(),
            }
        }
    }

    /// The window's counts: every instance's `carried + (last − start)`, summed.
    pub fn totals(&self) -> Counters {
        self.instances.values().fold(Counters::default(), |acc, t| {
            acc.add(&t.carried.add(&t.last.since(&t.start)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(requests: u64, errors: u64, buckets: &[u64]) -> SideCounters {
        SideCounters {
            requests,
            errors,
            buckets: buckets.to_vec(),
        }
    }

    fn counters(cn: u64, ce: u64, bn: u64, be: u64) -> Counters {
        Counters {
            canary: side(cn, ce, &[cn / 2, cn]),
            baseline: side(bn, be, &[bn / 2, bn]),
        }
    }

    fn snap(entries: &[(&str, Counters)]) -> Snapshot {
        entries
            .iter()
            .map(|(n, c)| (n.to_string(), c.clone()))
            .collect()
    }

    #[test]
    fn one_instance_window_is_the_difference_since_the_step_began() {
        let mut w = Window::begin(&snap(&[("a", counters(100, 10, 1000, 5))]));
        assert_eq!(
            w.totals(),
            Counters {
                canary: side(0, 0, &[0, 0]),
                baseline: side(0, 0, &[0, 0])
            }
        );
        w.observe(&snap(&[("a", counters(150, 12, 1400, 9))]));
        let t = w.totals();
        assert_eq!((t.canary.requests, t.canary.errors), (50, 2));
        assert_eq!((t.baseline.requests, t.baseline.errors), (400, 4));
        assert_eq!(t.canary.buckets, [75 - 50, 50]);
    }

    #[test]
    fn a_restarted_instance_carries_what_it_counted_and_counts_again_from_zero() {
        let mut w = Window::begin(&snap(&[("a", counters(100, 10, 1000, 0))]));
        w.observe(&snap(&[("a", counters(160, 16, 1600, 0))])); // +60
        w.observe(&snap(&[("a", counters(30, 3, 300, 0))])); // restarted: +30 since
        let t = w.totals();
        assert_eq!((t.canary.requests, t.canary.errors), (90, 9));
        assert_eq!(t.baseline.requests, 900);
        // Even once the new life passes the old start, nothing is counted twice.
        w.observe(&snap(&[("a", counters(200, 20, 2000, 0))]));
        assert_eq!(w.totals().canary.requests, 60 + 200);
    }

    #[test]
    fn fleet_windows_sum_instances_and_survive_one_restart() {
        let mut w = Window::begin(&snap(&[
            ("a", counters(100, 0, 100, 0)),
            ("b", counters(500, 0, 500, 0)),
        ]));
        w.observe(&snap(&[
            ("a", counters(110, 1, 110, 0)),
            ("b", counters(520, 2, 520, 0)),
        ]));
        assert_eq!(w.totals().canary.tally(), Tally { n: 30, e: 3 });
        // b restarts; a keeps counting; c joins (counted from its first reading).
        w.observe(&snap(&[
            ("a", counters(130, 1, 130, 0)),
            ("b", counters(5, 1, 5, 0)),
            ("c", counters(999, 9, 999, 0)),
        ]));
        assert_eq!(
            w.totals().canary.tally(),
            Tally {
                n: 30 + 20 + 5,
                e: 4
            }
        );
        // a vanishes from a reading: what it counted stays.
        w.observe(&snap(&[
            ("b", counters(6, 1, 6, 0)),
            ("c", counters(1009, 9, 1009, 0)),
        ]));
        assert_eq!(
            w.totals().canary.tally(),
            Tally {
                n: 30 + 20 + 6 + 10,
                e: 4
            }
        );
    }

    #[test]
    fn survives_a_round_trip_through_json() {
        let mut w = Window::begin(&snap(&[("a", counters(1, 0, 1, 0))]));
        w.observe(&snap(&[("a", counters(9, 1, 9, 0))]));
        let back: Window = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(back, w);
    }
}
