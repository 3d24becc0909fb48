//! A gate's or a check's verdict, and how a check combines its gates (SPEC: a check
//! fails if any gate fails, passes if all pass, else is inconclusive).

use serde::{Deserialize, Serialize};

/// The outcome of one gate or of a whole check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    /// The `result` label value: `pass`, `fail` or `inconclusive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// Fail if any fails, pass if all pass (and there is at least one), else inconclusive.
    pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut all_pass = true;
        let mut any = false;
        for v in verdicts {
            any = true;
            match v {
                Verdict::Fail => return Verdict::Fail,
                Verdict::Inconclusive => all_pass = false,
                Verdict::Pass => {}
            }
        }
        if any && all_pass {
            Verdict::Pass
        } else {
            Verdict::Inconclusive
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict::{self, *};

    #[test]
    fn any_fail_fails_all_pass_passes_else_inconclusive() {
        let cases: [(&[Verdict], Verdict); 8] = [
            (&[Pass, Pass, Pass], Pass),
            (&[Pass, Pass, Inconclusive], Inconclusive),
            (&[Inconclusive, Inconclusive, Inconclusive], Inconclusive),
            (&[Fail, Pass, Pass], Fail),
            (&[Pass, Inconclusive, Fail], Fail),
            (&[Inconclusive, Fail, Inconclusive], Fail),
            (&[Pass], Pass),
            (&[], Inconclusive),
        ];
        for (gates, want) in cases {
            assert_eq!(Verdict::combine(gates.iter().copied()), want, "{gates:?}");
        }
    }

    #[test]
    fn serialises_as_the_result_label() {
        for v in [Pass, Fail, Inconclusive] {
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.as_str())
            );
        }
    }
}
