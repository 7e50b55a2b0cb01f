//! Table-driven tests of the rules format and evaluation.

use super::*;

const DAY: i64 = 24 * 60 * 60 * 1000;
/// 2024-03-01 00:00 UTC.
const NOW: i64 = 19_783 * DAY;

fn ae(value: &str) -> AeTitle {
    AeTitle::parse(value).unwrap()
}

fn one_rule(when: &str) -> RuleSet {
    RuleSet::from_toml(&format!(
        "version = 1\n[[rule]]\nname = \"r\"\nwhen = {when}\nactions = [{{ type = \"auto_route\", device = \"VIEWER\" }}]\n"
    ))
    .unwrap_or_else(|e| panic!("{when}: {e}"))
}

fn facts() -> StudyFacts {
    let mut facts = StudyFacts::from_pairs([
        ("PatientName", "Doe^John"),
        ("PatientID", "PID7"),
        ("PatientSex", "M"),
        ("StudyDate", "20240101"),
        ("ModalitiesInStudy", "CT\\SR"),
        ("StudyDescription", "CHEST CT"),
        ("AccessionNumber", "ACC0001"),
    ]);
    facts.received_at_ms = Some(NOW - 10 * DAY);
    facts
}

#[test]
fn conditions_table() {
    // (condition as an inline TOML table, expected match)
    let cases: &[(&str, bool)] = &[
        (
            r#"{ attribute = "StudyDescription", equals = "CHEST CT" }"#,
            true,
        ),
        (
            r#"{ attribute = "StudyDescription", equals = "chest ct" }"#,
            false,
        ),
        // Person names compare without case.
        (
            r#"{ attribute = "PatientName", equals = "DOE^JOHN" }"#,
            true,
        ),
        (r#"{ attribute = "PatientName", wildcard = "doe*" }"#, true),
        (
            r#"{ attribute = "StudyDescription", wildcard = "*CHEST*" }"#,
            true,
        ),
        (
            r#"{ attribute = "StudyDescription", wildcard = "CHEST?CT" }"#,
            true,
        ),
        (
            r#"{ attribute = "StudyDescription", wildcard = "CHEST" }"#,
            false,
        ),
        (
            r#"{ attribute = "AccessionNumber", wildcard = "ACC*1" }"#,
            true,
        ),
        (r#"{ attribute = "PatientSex", in = ["F", "M"] }"#, true),
        (r#"{ attribute = "PatientSex", in = ["F", "O"] }"#, false),
        (
            r#"{ attribute = "ModalitiesInStudy", contains = "CT" }"#,
            true,
        ),
        (
            r#"{ attribute = "ModalitiesInStudy", contains = "SR" }"#,
            true,
        ),
        (
            r#"{ attribute = "ModalitiesInStudy", contains = "MR" }"#,
            false,
        ),
        (
            r#"{ attribute = "ModalitiesInStudy", contains = "C" }"#,
            false,
        ),
        // 2024-01-01 is 60 days before 2024-03-01.
        (r#"{ attribute = "StudyDate", older_than_days = 59 }"#, true),
        (
            r#"{ attribute = "StudyDate", older_than_days = 60 }"#,
            false,
        ),
        // Absent attributes fail every test.
        (r#"{ attribute = "StudyID", equals = "1" }"#, false),
        (
            r#"{ attribute = "PatientBirthDate", older_than_days = 1 }"#,
            false,
        ),
        (r#"{ not = { attribute = "StudyID", equals = "1" } }"#, true),
        (
            r#"{ all = [{ attribute = "PatientSex", equals = "M" }, { attribute = "ModalitiesInStudy", contains = "CT" }] }"#,
            true,
        ),
        (
            r#"{ all = [{ attribute = "PatientSex", equals = "M" }, { attribute = "ModalitiesInStudy", contains = "MR" }] }"#,
            false,
        ),
        (
            r#"{ any = [{ attribute = "PatientSex", equals = "F" }, { attribute = "ModalitiesInStudy", contains = "CT" }] }"#,
            true,
        ),
        (
            r#"{ any = [{ attribute = "PatientSex", equals = "F" }, { attribute = "ModalitiesInStudy", contains = "MR" }] }"#,
            false,
        ),
        (
            r#"{ all = [{ any = [{ attribute = "PatientID", in = ["X", "PID7"] }] }, { not = { attribute = "StudyDate", older_than_days = 365 } }] }"#,
            true,
        ),
    ];
    let partition = ae("IMAGESERVER");
    for (when, expected) in cases {
        let rules = one_rule(when);
        let evaluation = rules.evaluate(&partition, &facts(), NOW);
        let result = &evaluation.results[0];
        assert_eq!(result.matched, *expected, "{when}: {:?}", result.reasons);
        assert!(
            !result.reasons.is_empty(),
            "{when}: a reason is always given"
        );
        assert_eq!(result.actions.is_empty(), !expected, "{when}");
    }
}

#[test]
fn reasons_name_the_conditions() {
    let rules = one_rule(
        r#"{ all = [{ attribute = "ModalitiesInStudy", contains = "CT" }, { attribute = "StudyDescription", wildcard = "*CHEST*" }] }"#,
    );
    let evaluation = rules.evaluate(&ae("IMAGESERVER"), &facts(), NOW);
    assert_eq!(
        evaluation.results[0].reasons,
        [
            r#"ModalitiesInStudy "CT\\SR" contains "CT""#,
            r#"StudyDescription "CHEST CT" matches "*CHEST*""#
        ]
    );
    let rules = one_rule(r#"{ attribute = "StudyDate", older_than_days = 365 }"#);
    let evaluation = rules.evaluate(&ae("IMAGESERVER"), &facts(), NOW);
    assert_eq!(
        evaluation.results[0].reasons,
        ["StudyDate 20240101 is 60 days old (not more than 365)"]
    );
}

const FULL: &str = r#"
version = 1

[[rule]]
name = "ct-to-viewer"
description = "CT goes to the reading room"
partition = "IMAGESERVER"
when.all = [
    { attribute = "ModalitiesInStudy", contains = "CT" },
    { attribute = "StudyDescription", wildcard = "*CHEST*" },
]
actions = [{ type = "auto_route", device = "VIEWER" }]

[[rule]]
name = "retention"
when.any = [
    { attribute = "PatientID", in = ["TEST1", "PID7"] },
    { attribute = "StudyDate", older_than_days = 3650 },
]
actions = [
    { type = "delete", after_days = 30 },
    { type = "tier1_retention", after_days = 7 },
    { type = "online_retention", after_days = 90 },
    { type = "compress", after_days = 1, to = "jpeg-ls-lossless" },
]

[[rule]]
name = "research-only"
partition = "RESEARCH"
actions = [{ type = "delete", after_days = 1 }]

[[rule]]
name = "off"
enabled = false
actions = [{ type = "auto_route", device = "ARCHIVE2" }]
"#;

#[test]
fn a_full_file_evaluates_per_partition() {
    let rules = RuleSet::from_toml(FULL).unwrap();
    assert_eq!(rules.rules.len(), 4);
    let evaluation = rules.evaluate(&ae("IMAGESERVER"), &facts(), NOW);
    let names: Vec<(&str, bool)> = evaluation
        .results
        .iter()
        .map(|r| (r.rule.name.as_str(), r.matched))
        .collect();
    // RESEARCH's rule is not evaluated for IMAGESERVER; disabled never matches.
    assert_eq!(
        names,
        [("ct-to-viewer", true), ("retention", true), ("off", false)]
    );
    assert_eq!(evaluation.results[2].reasons, ["the rule is disabled"]);
    let actions = evaluation.actions();
    assert_eq!(actions.len(), 5);
    let (rule, route) = actions[0];
    assert_eq!(rule, "ct-to-viewer");
    assert_eq!(
        route.action,
        Action::AutoRoute {
            device: ae("VIEWER")
        }
    );
    assert!(route.due_now && route.action.is_executed());
    // Arrived 10 days ago: delete after 30 is due in 20 days, tier-1
    // retention after 7 is due already.
    let delete = actions[1].1;
    assert_eq!(delete.action, Action::Delete { after_days: 30 });
    assert_eq!(delete.due_at_ms, Some(NOW + 20 * DAY));
    assert!(!delete.due_now);
    let tier1 = actions[2].1;
    assert!(tier1.due_now && tier1.action.is_executed());
    // Only RLE Lossless is executed; the other codecs are declared.
    assert!(!actions[4].1.action.is_executed());
    assert!(Action::Compress {
        after_days: 1,
        to: Compression::Rle
    }
    .is_executed());
    assert_eq!(
        actions[4].1.action,
        Action::Compress {
            after_days: 1,
            to: Compression::JpegLsLossless
        }
    );

    let research = rules.evaluate(&ae("RESEARCH"), &facts(), NOW);
    let names: Vec<&str> = research
        .results
        .iter()
        .map(|r| r.rule.name.as_str())
        .collect();
    assert_eq!(names, ["retention", "research-only", "off"]);

    let text = dry_run::render(&evaluation, &facts());
    assert!(text.contains("rule \"ct-to-viewer\": MATCHES"), "{text}");
    assert!(text.contains("would auto-route to VIEWER (now)"), "{text}");
    assert!(
        text.contains("would delete 30 days after arrival (on 2024-03-21)"),
        "{text}"
    );
    assert!(text.contains("would migrate off tier 1"), "{text}");
    assert!(text.contains("=> 2 of 3 rules match"), "{text}");
}

#[test]
fn checks_against_the_deployment() {
    let rules = RuleSet::from_toml(FULL).unwrap();
    let warnings = rules
        .check_against(&[
            (ae("IMAGESERVER"), vec![ae("VIEWER")]),
            (ae("RESEARCH"), vec![]),
        ])
        .unwrap();
    assert_eq!(
        warnings,
        [
            "rule \"off\": device ARCHIVE2 is not configured for partition IMAGESERVER",
            "rule \"off\": device ARCHIVE2 is not configured for partition RESEARCH"
        ]
    );
    assert!(rules
        .check_against(&[(ae("IMAGESERVER"), vec![ae("VIEWER")])])
        .is_err());
}

#[test]
fn invalid_files_are_refused_with_the_place() {
    let rule = |body: &str| format!("version = 1\n[[rule]]\nname = \"x\"\n{body}\n");
    let route = r#"actions = [{ type = "auto_route", device = "V" }]"#;
    // (file, text the error must contain)
    let cases: Vec<(String, &str)> = vec![
        (
            "[[rule]]\nname = \"x\"".to_string(),
            "missing: start the file with `version = 1`",
        ),
        ("version = 2".to_string(), "format version 2"),
        ("version = 1\nrules = []".to_string(), "unknown field"),
        (rule(""), "at least one action"),
        (
            rule(&format!(
                "{route}\nwhen = {{ attribute = \"Modality\", equals = \"CT\" }}"
            )),
            "use ModalitiesInStudy",
        ),
        (
            rule(&format!(
                "{route}\nwhen = {{ attribute = \"patientname\", equals = \"A\" }}"
            )),
            "did you mean PatientName",
        ),
        (
            rule(&format!(
                "{route}\nwhen = {{ attribute = \"Foo\", equals = \"A\" }}"
            )),
            "unknown attribute",
        ),
        (
            rule(&format!(
                "{route}\nwhen = {{ attribute = \"StudyDescription\", older_than_days = 3 }}"
            )),
            "needs a date attribute",
        ),
        (
            rule(&format!(
                "{route}\nwhen = {{ attribute = \"StudyDate\", equals = \"A\", wildcard = \"B\" }}"
            )),
            "exactly one of",
        ),
        (
            rule(&format!("{route}\nwhen = {{ all = [] }}")),
            "has no condition",
        ),
        (
            rule(&format!(
                "{route}\nwhen = {{ all = [{{ attribute = \"StudyDate\" }}] }}"
            )),
            "when.all[0]",
        ),
        (
            rule(&format!("{route}\nwhen = {{ equals = \"A\" }}")),
            "needs `attribute",
        ),
        (
            rule(&format!(
                "{route}\nwhen = {{ attribute = \"StudyDate\", equal = \"A\" }}"
            )),
            "unknown field",
        ),
        (
            rule("actions = [{ type = \"route\" }]"),
            "unknown action type",
        ),
        (
            rule("actions = [{ type = \"delete\" }]"),
            "needs after_days",
        ),
        (
            rule("actions = [{ type = \"delete\", after_days = 1, device = \"V\" }]"),
            "takes no device",
        ),
        (
            rule("actions = [{ type = \"compress\", to = \"jpeg-baseline\" }]"),
            "lossless only",
        ),
        (
            rule("actions = [{ type = \"auto_route\", device = \"A/B\\\\C\" }]"),
            "invalid AE title",
        ),
        (
            format!("{}[[rule]]\nname = \"x\"\n{route}\n", rule(route)),
            "same name",
        ),
        (rule(&format!("{route}\npartition = \"\"")), "partition"),
    ];
    for (text, expected) in cases {
        let error = RuleSet::from_toml(&text).expect_err(&text).to_string();
        assert!(
            error.contains(expected),
            "{text}\n=> {error}\n(expected {expected:?})"
        );
    }
}

#[test]
fn wildcards_and_dates() {
    for (pattern, value, expected) in [
        ("*", "", true),
        ("*", "ABC", true),
        ("A*C", "ABBBC", true),
        ("A*C", "ABBB", false),
        ("?B?", "ABC", true),
        ("?B?", "AB", false),
        ("**X", "ABX", true),
        ("A*B*C", "AXBYC", true),
        ("A*B*C", "AXCYB", false),
    ] {
        assert_eq!(wildcard(pattern, value), expected, "{pattern} {value}");
    }
    assert_eq!(days_from_civil_text("19700101"), Some(0));
    assert_eq!(days_from_civil_text("20240301"), Some(19_783));
    assert_eq!(days_from_civil_text("20241301"), None);
    assert_eq!(days_from_civil_text("2024-03-01"), None);
    assert_eq!(civil_date(NOW), "2024-03-01");
    assert_eq!(civil_date(0), "1970-01-01");
}
