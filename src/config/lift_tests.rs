//! The lifted path against plain `toml`: same sets, same errors at the same places, and
//! every construct the scan is not sure of left to `toml`.

use super::super::{parse_file_lifting, ConfigError};
use super::lift;
use proptest::prelude::*;

/// Each rule's `key_in` keys, sorted (`None` for a rule without one); or the error.
fn outcome(text: &str, at_least: usize) -> Result<Vec<Option<Vec<Vec<u8>>>>, String> {
    let file = parse_file_lifting(text, at_least).map_err(|e| e.to_string())?;
    Ok(file
        .services
        .iter()
        .flat_map(|s| &s.rules)
        .map(|r| {
            r.key_in.as_ref().map(|set| {
                let mut keys: Vec<Vec<u8>> = set.iter().map(<[u8]>::to_vec).collect();
                keys.sort_unstable();
                keys
            })
        })
        .collect())
}

/// Lifting every array and lifting none agree.
fn assert_same(text: &str) -> Result<Vec<Option<Vec<Vec<u8>>>>, String> {
    let lifted = outcome(text, 0);
    assert_eq!(lifted, outcome(text, usize::MAX), "text:\n{text}");
    lifted
}

fn doc(rule_body: &str) -> String {
    format!("[server]\nthreads = 2\n\n[[service]]\nname = \"s\"\n\n[[service.rule]]\nname = \"r\"\n{rule_body}\nvariant = \"v\"\n")
}

fn lifts(text: &str) -> usize {
    lift(text, 0).map_or(0, |l| l.len())
}

#[test]
fn a_key_in_array_under_a_rule_header_is_lifted_with_the_same_keys() {
    let text =
        doc("key_in = [\"a\", 'b\\n', \"caf\\u00e9\", # note ]\n  \"\\\"q\\\"\",\n\n  \"x#]\",\n]");
    assert_eq!(lifts(&text), 1);
    let keys = assert_same(&text).expect("valid");
    let mut want: Vec<Vec<u8>> = ["a", "b\\n", "café", "\"q\"", "x#]"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    want.sort_unstable();
    assert_eq!(keys, vec![Some(want)]);
}

#[test]
fn header_spelling_with_spaces_is_recognised_and_other_tables_are_not() {
    let spaced = doc("").replace("[[service.rule]]", "[[ service . rule ]]") + "key_in = [\"a\"]\n";
    assert_eq!(lifts(&spaced), 1);
    assert_same(&spaced).expect("valid");
    // A `[service.rule.header]`-style table is not a rule: toml reports the unknown field.
    let other = format!("{}[service.rule.x]\nkey_in = [\"a\"]\n", doc(""));
    assert_eq!(lifts(&other), 0);
    assert!(assert_same(&other).is_err());
}

#[test]
fn constructs_the_scan_is_not_sure_of_are_left_to_toml() {
    let cases = [
        // A dotted key, a quoted key, not at the start of a line.
        doc("x.key_in = [\"a\"]"),
        doc("\"key_in\" = [\"a\"]"),
        // Inside an inline table.
        "[[service]]\nname = \"s\"\nrule = [{ name = \"r\", key_in = [\"a\"] }]\n".to_string(),
        doc("x = [\nkey_in = [\"a\"]]"),
        // Non-strings, nested arrays, multi-line strings, an empty array.
        doc("key_in = [\"a\", 1]"),
        doc("key_in = [[\"a\"]]"),
        doc("key_in = [\"a\", \"\"\"b\"\"\"]"),
        doc("key_in = ['a', '''b''']"),
        doc("key_in = []"),
        // `key_in` inside strings and comments.
        doc("name2 = \"\"\"\nkey_in = [\"a\"]\n\"\"\""),
        doc("name2 = '''\nkey_in = [\"a\"]\n'''"),
        doc("# key_in = [\"a\"]"),
        // Invalid content: a bad escape, a surrogate, a raw control character, a lone CR,
        // a control character in a comment, a missing comma, a leading comma.
        doc("key_in = [\"a\\q\"]"),
        doc("key_in = [\"\\ud800\"]"),
        doc("key_in = [\"\\U00110000\"]"),
        doc("key_in = [\"\\u00e\"]"),
        doc("key_in = [\"a\u{1}\"]"),
        doc("key_in = ['a\u{7f}']"),
        doc("key_in = [\"a\",\r \"b\"]"),
        doc("key_in = [\"a\", # x\u{1}\n \"b\"]"),
        doc("key_in = [\"a\" \"b\"]"),
        doc("key_in = [, \"a\"]"),
        doc("key_in = [\"a\",,]"),
        // Unterminated.
        doc("key_in = [\"a\", \"b"),
        doc("key_in = [\"a\""),
    ];
    for text in &cases {
        assert_eq!(lifts(text), 0, "lifted:\n{text}");
        // Whatever toml makes of it, the loader makes the same.
        assert_same(text).ok();
    }
}

#[test]
fn a_text_holding_the_marker_prefix_is_not_lifted_and_a_forged_marker_is_a_type_error() {
    let text = doc("key_in = [\"a\"]\nname2 = \"cohort-lifted-key-set/0/0\"");
    assert_eq!(lifts(&text), 0);
    let forged = doc("key_in = \"cohort-lifted-key-set/0/0\"");
    let err = assert_same(&forged).expect_err("a string is not a list");
    assert!(err.contains("invalid type: string"), "{err}");
    // Even while a parse with lifted sets is running, only its own nonce resolves.
    assert!(super::claim("cohort-lifted-key-set/0/0").is_none());
}

#[test]
fn errors_after_a_lifted_array_point_into_the_original_text() {
    let keys: String = (0..300).map(|i| format!("  \"k{i}é\", # ]\n")).collect();
    // An unknown field three lines below a 300-line array.
    let text = doc(&format!("key_in = [\n{keys}]\n\n\n  bogus = 1"));
    assert_eq!(lifts(&text), 1);
    let err = parse_file_lifting(&text, 0).expect_err("unknown field");
    let ConfigError::Syntax { line, column, .. } = &err else {
        panic!("{err}")
    };
    let want = text
        .lines()
        .position(|l| l.contains("bogus"))
        .expect("line")
        + 1;
    assert_eq!((*line, *column), (want, 3), "{err}");
    assert_same(&text).expect_err("same error");
    // A syntax error on the array's closing line, after non-ASCII keys.
    let text = doc("key_in = [\"é\",\n\"ü\"] x = 1");
    assert_eq!(lifts(&text), 1);
    let err = parse_file_lifting(&text, 0).expect_err("expected newline");
    let ConfigError::Syntax { line, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*line, 10, "{err}");
    assert_same(&text).expect_err("same error");
}

#[test]
fn a_second_key_in_in_one_rule_is_the_duplicate_toml_reports() {
    let text = doc("key_in = [\"a\"]\nkey_in = [\"b\"]");
    assert_eq!(lifts(&text), 2);
    let err = assert_same(&text).expect_err("duplicate");
    assert!(err.contains("duplicate key"), "{err}");
}

#[test]
fn only_arrays_of_the_threshold_are_lifted() {
    let small = doc("key_in = [\"a\", \"b\"]");
    assert!(lift(&small, super::LIFT_AT_LEAST).is_none());
    let keys: Vec<String> = (0..400).map(|i| format!("\"user-{i}\"")).collect();
    let big = doc(&format!("key_in = [{}]", keys.join(", ")));
    assert_eq!(lift(&big, super::LIFT_AT_LEAST).map(|l| l.len()), Some(1));
}

/// A piece of a basic string's source: plain characters, a valid escape, or an invalid one.
fn basic_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9 #\\]\\[,'=éü€🎉\t]{0,6}",
        2 => prop::sample::select(vec![
            "\\\"", "\\\\", "\\n", "\\t", "\\b", "\\f", "\\r", "\\u00e9", "\\u00E9", "\\U0001F389",
            "\\u0000", "\\u005d", "\\u0023",
        ])
        .prop_map(str::to_string),
        1 => prop::sample::select(vec![
            "\\q", "\\x41", "\\e", "\\u12", "\\ud800", "\\U00110000", "\\uZZZZ", "\u{1}", "\u{7f}", "\\",
        ])
        .prop_map(str::to_string),
    ]
}

/// One array element's source.
fn element() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(basic_piece(), 0..4).prop_map(|p| format!("\"{}\"", p.concat())),
        3 => "[a-z0-9 #\\]\\[,\"=é\\\\\t]{0,8}".prop_map(|s| format!("'{s}'")),
        1 => prop::sample::select(vec![
            "\"\"\"ml\"\"\"", "'''ml'''", "1", "true", "[\"n\"]", "{ a = 1 }", "'a\u{1}'", "'a'b'", "",
        ])
        .prop_map(str::to_string),
    ]
}

/// What may stand between elements and commas.
fn gap() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "",
            " ",
            "\t",
            "\n",
            "\r\n",
            "\n\n",
            "# c ] \" ' [ #\n",
            "#\n",
            "# é\r\n",
            "\r",
        ]),
        0..3,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For awkward key lists, lifting and plain `toml` give the same sets and the same
    /// errors at the same line:column, including an error after the array.
    #[test]
    fn lifting_agrees_with_plain_toml(
        elements in prop::collection::vec((gap(), element(), gap()), 1..12),
        trailing_comma in any::<bool>(),
        tail in prop::sample::select(vec!["", " # done", " x = 1", "\nbogus = 2", "\n\"q\" = 3"]),
    ) {
        let mut array = String::from("[");
        for (i, (before, e, after)) in elements.iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            array.push_str(before);
            array.push_str(e);
            array.push_str(after);
        }
        if trailing_comma {
            array.push(',');
        }
        array.push(']');
        let text = doc(&format!("key_in = {array}{tail}"));
        let lifted = outcome(&text, 0);
        let plain = outcome(&text, usize::MAX);
        prop_assert_eq!(&lifted, &plain, "text:\n{}", text);
        // Not vacuous: an array of valid single-line strings and gaps is always lifted.
        let simple = elements.iter().all(|(b, e, a)| {
            !b.contains('\r') && !a.contains('\r')
                && !e.is_empty()
                && (e.starts_with('"') || e.starts_with('\''))
                && !e.starts_with("\"\"\"") && !e.starts_with("'''")
        });
        if simple && plain.is_ok() {
            prop_assert_eq!(lifts(&text), 1, "text:\n{}", text);
        }
    }
}
