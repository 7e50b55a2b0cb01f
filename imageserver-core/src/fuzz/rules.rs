//! The rules parser ([`RuleSet::from_toml`]) and the evaluation of what it
//! accepts: any text gives rules or an error, within a bound proportional
//! to its length; conditions nested deeply (dotted keys, inline tables,
//! arrays) included.

use proptest::collection::vec;
use proptest::prelude::*;

use super::mutate::{apply, arbitrary_bytes, Encoded, Mutation};
use super::{check, run_case, Bound, MIB};
use crate::model::AeTitle;
use crate::rules::{RuleSet, StudyFacts};

/// A condition of a generated rule.
#[derive(Debug, Clone)]
enum Cond {
    Test(&'static str, Test),
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
}

#[derive(Debug, Clone)]
enum Test {
    Equals(String),
    Wildcard(String),
    In(Vec<String>),
    OlderThanDays(i64),
    Contains(String),
    /// Two tests at once (invalid).
    Both(String, i64),
    /// An attribute without a test (invalid).
    Nothing,
}

const ATTRIBUTES: &[&str] = &[
    "PatientName",
    "PatientID",
    "StudyDate",
    "PatientBirthDate",
    "ModalitiesInStudy",
    "StudyDescription",
    "StudyInstanceUID",
    "AccessionNumber",
    "Modality",
    "patientid",
    "NumberOfStudyRelatedInstances",
    "Nope",
    "",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&["CT", "*CHEST*", "DOE^*", "?", "", "19700101", "\\", "A\\B"][..])
            .prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ]
}

fn days() -> impl Strategy<Value = i64> {
    prop_oneof![
        0i64..4000,
        Just(-1),
        Just(i64::from(u32::MAX) + 1),
        any::<i64>()
    ]
}

fn test() -> impl Strategy<Value = Test> {
    prop_oneof![
        text().prop_map(Test::Equals),
        text().prop_map(Test::Wildcard),
        vec(text(), 0..3).prop_map(Test::In),
        days().prop_map(Test::OlderThanDays),
        text().prop_map(Test::Contains),
        (text(), days()).prop_map(|(t, d)| Test::Both(t, d)),
        Just(Test::Nothing),
    ]
}

fn cond() -> impl Strategy<Value = Cond> {
    let leaf = (prop::sample::select(ATTRIBUTES), test()).prop_map(|(a, t)| Cond::Test(a, t));
    leaf.prop_recursive(5, 24, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..3).prop_map(Cond::All),
            vec(inner.clone(), 0..3).prop_map(Cond::Any),
            inner.prop_map(|c| Cond::Not(Box::new(c))),
        ]
    })
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

fn render_test(attribute: &str, test: &Test) -> String {
    let body = match test {
        Test::Equals(v) => format!("equals = {}", quoted(v)),
        Test::Wildcard(v) => format!("wildcard = {}", quoted(v)),
        Test::In(vs) => format!(
            "in = [{}]",
            vs.iter().map(|v| quoted(v)).collect::<Vec<_>>().join(", ")
        ),
        Test::OlderThanDays(d) => format!("older_than_days = {d}"),
        Test::Contains(v) => format!("contains = {}", quoted(v)),
        Test::Both(v, d) => format!("equals = {}, older_than_days = {d}", quoted(v)),
        Test::Nothing => return format!("{{ attribute = {} }}", quoted(attribute)),
    };
    format!("{{ attribute = {}, {body} }}", quoted(attribute))
}

fn render(cond: &Cond) -> String {
    let list = |cs: &[Cond]| cs.iter().map(render).collect::<Vec<_>>().join(", ");
    match cond {
        Cond::Test(a, t) => render_test(a, t),
        Cond::All(cs) => format!("{{ all = [{}] }}", list(cs)),
        Cond::Any(cs) => format!("{{ any = [{}] }}", list(cs)),
        Cond::Not(c) => format!("{{ not = {} }}", render(c)),
    }
}

/// A generated rule.
#[derive(Debug, Clone)]
struct RuleGen {
    name: &'static str,
    partition: Option<&'static str>,
    enabled: Option<bool>,
    when: Option<Cond>,
    actions: Vec<String>,
}

fn action() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&["VIEWER", "lower", "", "WAY_TOO_LONG_AN_AE_TITLE"][..])
            .prop_map(|d| format!("{{ type = \"auto_route\", device = {} }}", quoted(d))),
        (
            prop::sample::select(&["delete", "tier1_retention", "online_retention", "purge"][..]),
            days()
        )
            .prop_map(|(t, d)| format!("{{ type = \"{t}\", after_days = {d} }}")),
        prop::sample::select(&["rle", "jpeg-ls-lossless", "jpeg", ""][..])
            .prop_map(|to| format!("{{ type = \"compress\", after_days = 1, to = \"{to}\" }}")),
        Just("{ type = \"delete\" }".to_string()),
        Just("{ type = \"auto_route\", after_days = 3 }".to_string()),
    ]
}

fn rule() -> impl Strategy<Value = RuleGen> {
    (
        prop::sample::select(&["ct-to-viewer", "retention", "", "  "][..]),
        prop::option::of(prop::sample::select(
            &["IMAGESERVER", "OTHER", "bad title"][..],
        )),
        prop::option::of(any::<bool>()),
        prop::option::weighted(0.8, cond()),
        vec(action(), 0..3),
    )
        .prop_map(|(name, partition, enabled, when, actions)| RuleGen {
            name,
            partition,
            enabled,
            when,
            actions,
        })
}

/// The text of a rules file; the top condition sometimes as dotted keys.
fn rules_file() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            4 => Just("version = 1\n".to_string()),
            1 => Just("version = 2\n".to_string()),
            1 => Just(String::new()),
        ],
        vec((rule(), any::<bool>()), 0..4),
    )
        .prop_map(|(version, rules)| {
            let mut text = version;
            for (rule, dotted) in rules {
                text.push_str("\n[[rule]]\n");
                text.push_str(&format!("name = {}\n", quoted(rule.name)));
                if let Some(p) = rule.partition {
                    text.push_str(&format!("partition = {}\n", quoted(p)));
                }
                if let Some(e) = rule.enabled {
                    text.push_str(&format!("enabled = {e}\n"));
                }
                match (&rule.when, dotted) {
                    (Some(Cond::All(cs)), true) | (Some(Cond::Any(cs)), true) => {
                        let key = if matches!(rule.when, Some(Cond::All(_))) {
                            "all"
                        } else {
                            "any"
                        };
                        let list = cs.iter().map(render).collect::<Vec<_>>().join(",\n  ");
                        text.push_str(&format!("when.{key} = [\n  {list}\n]\n"));
                    }
                    (Some(c), _) => text.push_str(&format!("when = {}\n", render(c))),
                    (None, _) => {}
                }
                text.push_str(&format!("actions = [{}]\n", rule.actions.join(", ")));
            }
            text
        })
}

/// One rule whose condition nests `depth` levels: as a chain of dotted
/// `not` keys, as inline tables, or as arrays of `all`.
fn deep() -> impl Strategy<Value = String> {
    (0usize..3, prop_oneof![0usize..100, 0usize..5000]).prop_map(|(shape, depth)| {
        let test = "{ attribute = \"PatientID\", equals = \"X\" }";
        let when = match shape {
            0 => {
                let path = "not.".repeat(depth);
                format!("when.{path}attribute = \"PatientID\"\nwhen.{path}equals = \"X\"\n")
            }
            1 => format!("when = {}{test}{}\n", "{ not = ".repeat(depth), " }".repeat(depth)),
            _ => format!(
                "when = {}{test}{}\n",
                "{ all = [".repeat(depth),
                "] }".repeat(depth)
            ),
        };
        format!(
            "version = 1\n[[rule]]\nname = \"deep\"\n{when}actions = [{{ type = \"delete\", after_days = 1 }}]\n"
        )
    })
}

fn mutation() -> impl Strategy<Value = Vec<Mutation>> {
    use proptest::sample::Index;
    let syntax = prop::sample::select(&[b'[', b']', b'{', b'}', b'=', b'"', b'.', b'\n', b','][..]);
    vec(
        prop_oneof![
            (any::<Index>(), syntax).prop_map(|(i, b)| Mutation::Insert(i, vec![b])),
            (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Remove(i, n)),
            (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
            any::<Index>().prop_map(Mutation::Truncate),
            (any::<Index>(), 1usize..40, any::<Index>())
                .prop_map(|(i, n, j)| Mutation::Repeat(i, n, j)),
        ],
        0..5,
    )
}

fn input() -> BoxedStrategy<String> {
    let mutated = (rules_file(), mutation()).prop_map(|(text, mutations)| {
        let bytes = apply(
            &Encoded {
                bytes: text.into_bytes(),
                fields: Vec::new(),
            },
            &mutations,
        );
        String::from_utf8_lossy(&bytes).into_owned()
    });
    prop_oneof![
        2 => rules_file(),
        4 => mutated,
        1 => deep(),
        1 => "\\PC{0,200}",
        1 => arbitrary_bytes().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
    .boxed()
}

#[test]
fn rules_parsing_never_panics_hangs_or_overallocates() {
    let accepted = std::sync::atomic::AtomicU32::new(0);
    check("rules", 8000, input(), |text| {
        let bound = Bound {
            per_byte: 64,
            len: text.len(),
            fixed: MIB,
        };
        let ok = run_case(bound, move || match RuleSet::from_toml(&text) {
            Ok(rules) => {
                let mut facts = StudyFacts::from_pairs([
                    ("PatientID", "X"),
                    ("StudyDate", "20200101"),
                    ("ModalitiesInStudy", "CT\\MR"),
                    ("PatientName", "DOE^JOHN"),
                ]);
                facts.received_at_ms = Some(1_600_000_000_000);
                let partition = AeTitle::parse("IMAGESERVER").expect("a valid AE title");
                let evaluation = rules.evaluate(&partition, &facts, 1_700_000_000_000);
                let _ = evaluation.actions().len();
                true
            }
            Err(e) => {
                let _ = e.to_string();
                false
            }
        })?;
        if ok {
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    });
    eprintln!(
        "fuzz rules: {} files accepted and evaluated",
        accepted.into_inner()
    );
}
