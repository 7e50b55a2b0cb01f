use super::charset::response_character_set;
use super::response::empty_element;
use super::*;
use dicom_dictionary_std::uids;

const EXPLICIT_LE: &str = uids::EXPLICIT_VR_LITTLE_ENDIAN;
const IMPLICIT_LE: &str = uids::IMPLICIT_VR_LITTLE_ENDIAN;
const DEFLATED: &str = uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
/// Explicit VR Big Endian (retired, still negotiable).
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const PARTITION: PartitionId = PartitionId(7);
const OUR_AE: &str = "IMAGESERVER";
const STUDY_UID: &str = "1.2.3";
const SERIES_UID: &str = "1.2.3.4";

fn tag_of(attribute: Attribute) -> Tag {
    let (group, element) = attribute.tag();
    Tag(group, element)
}

/// An identifier holding `elements` (VR, value; `SQ` gives an empty
/// sequence), encoded in `ts`.
fn identifier(ts: &str, elements: &[(Tag, VR, &str)]) -> Vec<u8> {
    let mut object = InMemDicomObject::new_empty();
    for &(tag, vr, value) in elements {
        object.put(if value.is_empty() {
            empty_element(tag, vr)
        } else {
            DataElement::new(tag, vr, PrimitiveValue::from(value))
        });
    }
    let mut bytes = Vec::new();
    object
        .write_dataset_with_ts(&mut bytes, transfer_syntax(ts).unwrap())
        .unwrap();
    bytes
}

fn options() -> ParseOptions<'static> {
    ParseOptions {
        pn_case_insensitive: true,
        limit: Some(11),
        retrieve_ae_title: OUR_AE,
        max_echoed_unsupported: 64,
        combined_date_time: false,
    }
}

/// Parses an Explicit VR LE identifier at `level` in `root` holding
/// `elements` besides QueryRetrieveLevel.
fn parse(
    root: Root,
    level: &str,
    elements: &[(Tag, VR, &str)],
) -> Result<ParsedQuery, QueryKeyError> {
    let mut all = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, level)];
    all.extend_from_slice(elements);
    parse_identifier(
        &identifier(EXPLICIT_LE, &all),
        EXPLICIT_LE,
        root,
        PARTITION,
        &options(),
    )
}

/// The matcher `value` gives `attribute` in a Study Root query at the
/// attribute's level (with the unique keys above it), and whether the
/// value was ignored.
fn matcher(attribute: Attribute, value: &str) -> Result<(Matcher, bool), QueryKeyError> {
    let vr = dictionary_vr(tag_of(attribute));
    let level = attribute.level_in(Root::Study);
    let mut elements = Vec::new();
    if level >= Level::Series && attribute != Attribute::StudyInstanceUid {
        elements.push((tag_of(Attribute::StudyInstanceUid), VR::UI, STUDY_UID));
    }
    if level >= Level::Image && attribute != Attribute::SeriesInstanceUid {
        elements.push((tag_of(Attribute::SeriesInstanceUid), VR::UI, SERIES_UID));
    }
    elements.push((tag_of(attribute), vr, value));
    elements.sort_by_key(|e| e.0);
    let parsed = parse(Root::Study, level.code(), &elements)?;
    let key = parsed
        .query
        .keys
        .iter()
        .find(|k| k.attribute == attribute)
        .expect("the key is in the query");
    Ok((key.matcher.clone(), parsed.optional_keys_unsupported()))
}

fn single(v: &str) -> Matcher {
    Matcher::Single(v.to_string())
}

fn wildcard(v: &str) -> Matcher {
    Matcher::Wildcard(v.to_string())
}

fn list(values: &[&str]) -> Matcher {
    Matcher::List(values.iter().map(|v| v.to_string()).collect())
}

fn range(from: Option<&str>, to: Option<&str>) -> Matcher {
    Matcher::Range {
        from: from.map(str::to_string),
        to: to.map(str::to_string),
    }
}

#[test]
fn matcher_forms_per_vr() {
    use Attribute as A;
    use Matcher::Universal;
    // (attribute, request value, expected matcher or None for C000)
    let cases: Vec<(Attribute, &str, Option<Matcher>)> = vec![
        // PN
        (A::PatientName, "", Some(Universal)),
        (A::PatientName, "*", Some(Universal)),
        (A::PatientName, "**", Some(Universal)),
        (A::PatientName, "Doe^John", Some(single("Doe^John"))),
        (A::PatientName, "  Doe^John ", Some(single("Doe^John"))),
        (A::PatientName, "Doe*", Some(wildcard("Doe*"))),
        (A::PatientName, "D?e^*n", Some(wildcard("D?e^*n"))),
        (A::PatientName, "Doe\\Roe", Some(list(&["Doe", "Roe"]))),
        (A::PatientName, "Doe*\\Roe", None),
        // LO, SH, CS
        (A::PatientId, "PID1", Some(single("PID1"))),
        (A::PatientId, "PID*", Some(wildcard("PID*"))),
        (A::AccessionNumber, "A?C", Some(wildcard("A?C"))),
        (A::PatientSex, "F\\M", Some(list(&["F", "M"]))),
        (A::ModalitiesInStudy, "CT", Some(single("CT"))),
        (A::ModalitiesInStudy, "CT\\MR", Some(list(&["CT", "MR"]))),
        (A::ModalitiesInStudy, "C*", Some(wildcard("C*"))),
        (A::ModalitiesInStudy, "CT\\", Some(single("CT"))),
        // DA
        (A::StudyDate, "20200131", Some(single("20200131"))),
        (
            A::StudyDate,
            "20200101-20201231",
            Some(range(Some("20200101"), Some("20201231"))),
        ),
        (
            A::StudyDate,
            "20200101-",
            Some(range(Some("20200101"), None)),
        ),
        (
            A::StudyDate,
            "-20201231",
            Some(range(None, Some("20201231"))),
        ),
        (A::StudyDate, "-", Some(Universal)),
        (A::StudyDate, "*", Some(Universal)),
        (
            A::StudyDate,
            "20200101\\20200102",
            Some(list(&["20200101", "20200102"])),
        ),
        (A::StudyDate, "2020*", None),
        (A::StudyDate, "2020-01-01", None),
        (A::StudyDate, "20201301", None),
        (A::PatientBirthDate, "19700101", Some(single("19700101"))),
        (
            A::SeriesDate,
            "-20000101",
            Some(range(None, Some("20000101"))),
        ),
        // TM
        (A::StudyTime, "1015", Some(single("1015"))),
        (A::StudyTime, "101500.123", Some(single("101500.123"))),
        (
            A::StudyTime,
            "080000-120000",
            Some(range(Some("080000"), Some("120000"))),
        ),
        (A::StudyTime, "08-", Some(range(Some("08"), None))),
        (A::SeriesTime, "-0930", Some(range(None, Some("0930")))),
        (A::StudyTime, "25", None),
        (A::StudyTime, "1015.5", None),
        (A::StudyTime, "10:15", None),
        // UI: no wildcards, lists
        (A::StudyInstanceUid, "1.2.3", Some(single("1.2.3"))),
        (
            A::StudyInstanceUid,
            "1.2.3\\1.2.4",
            Some(list(&["1.2.3", "1.2.4"])),
        ),
        (A::StudyInstanceUid, "1.2.*", Some(single("1.2.*"))),
        (A::StudyInstanceUid, "*", Some(Universal)),
        (
            A::SopClassUid,
            "1.2.840.10008.5.1.4.1.1.2",
            Some(single("1.2.840.10008.5.1.4.1.1.2")),
        ),
        (
            A::SopClassesInStudy,
            "1.2\\1.3",
            Some(list(&["1.2", "1.3"])),
        ),
        // IS
        (A::SeriesNumber, "3", Some(single("3"))),
        (A::InstanceNumber, "-2", Some(single("-2"))),
        (A::SeriesNumber, "1\\2", Some(list(&["1", "2"]))),
        (A::SeriesNumber, "x", None),
        (A::SeriesNumber, "1*", None),
        // Counts: return only
        (A::NumberOfStudyRelatedInstances, "", Some(Universal)),
        (A::NumberOfSeriesRelatedInstances, "5", Some(Universal)),
    ];
    for (attribute, value, expected) in cases {
        let got = matcher(attribute, value);
        match (expected, got) {
            (Some(expected), Ok((matcher, _))) => {
                assert_eq!(matcher, expected, "{} {value:?}", attribute.keyword())
            }
            (None, Err(error)) => {
                assert_eq!(
                    error.status(),
                    Status::UNABLE_TO_PROCESS,
                    "{} {value:?}: {error}",
                    attribute.keyword()
                );
                assert_eq!(
                    error.offending_element(),
                    Some((u32::from(attribute.tag().0) << 16) | u32::from(attribute.tag().1))
                );
            }
            (expected, got) => panic!(
                "{} {value:?}: expected {expected:?}, got {got:?}",
                attribute.keyword()
            ),
        }
    }
    // A value on a count is ignored and warned about (FF01).
    assert!(
        matcher(Attribute::NumberOfStudyRelatedSeries, "2")
            .unwrap()
            .1
    );
    assert!(
        !matcher(Attribute::NumberOfStudyRelatedSeries, "")
            .unwrap()
            .1
    );
    assert!(!matcher(Attribute::PatientName, "A*").unwrap().1);

    // Lists are capped: 4096 values match, one more is C000.
    let uids = |n: usize| {
        (0..n)
            .map(|i| format!("1.2.{i}"))
            .collect::<Vec<_>>()
            .join("\\")
    };
    let (longest, _) = matcher(Attribute::SopInstanceUid, &uids(MAX_LIST_VALUES)).unwrap();
    assert!(matches!(longest, Matcher::List(values) if values.len() == MAX_LIST_VALUES));
    let error = matcher(Attribute::SopInstanceUid, &uids(MAX_LIST_VALUES + 1)).unwrap_err();
    assert_eq!(error.status(), Status::UNABLE_TO_PROCESS);
    assert!(error.to_string().contains("more than 4096"), "{error}");
}

#[test]
fn hierarchy_rules() {
    use Attribute as A;
    let pid = (tag_of(A::PatientId), VR::LO, "PID1");
    let pid_wild = (tag_of(A::PatientId), VR::LO, "PID*");
    let pname = (tag_of(A::PatientName), VR::PN, "Doe*");
    let study = (tag_of(A::StudyInstanceUid), VR::UI, STUDY_UID);
    let studies = (tag_of(A::StudyInstanceUid), VR::UI, "1.2.3\\1.2.5");
    let series = (tag_of(A::SeriesInstanceUid), VR::UI, SERIES_UID);
    let seriess = (tag_of(A::SeriesInstanceUid), VR::UI, "1.2.3.4\\1.2.3.5");
    let sops = (tag_of(A::SopInstanceUid), VR::UI, "1.2.3.4.5\\1.2.3.4.6");
    let modality = (tag_of(A::Modality), VR::CS, "CT");
    let sop_class = (tag_of(A::SopClassUid), VR::UI, "");
    let a900 = Some(Status::IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS);
    type Case<'a> = (
        Root,
        &'a str,
        Vec<(Tag, VR, &'a str)>,
        Option<Status>,
        Option<Attribute>,
    );
    let cases: Vec<Case> = vec![
        // Patient Root
        (Root::Patient, "PATIENT", vec![pname], None, None),
        (Root::Patient, "PATIENT", vec![pid_wild], None, None),
        (Root::Patient, "STUDY", vec![], a900, Some(A::PatientId)),
        (
            Root::Patient,
            "STUDY",
            vec![pid_wild],
            a900,
            Some(A::PatientId),
        ),
        (Root::Patient, "STUDY", vec![pid], None, None),
        (
            Root::Patient,
            "STUDY",
            vec![pname, pid, studies],
            None,
            None,
        ),
        (
            Root::Patient,
            "SERIES",
            vec![pid],
            a900,
            Some(A::StudyInstanceUid),
        ),
        (
            Root::Patient,
            "SERIES",
            vec![pid, studies],
            a900,
            Some(A::StudyInstanceUid),
        ),
        (
            Root::Patient,
            "SERIES",
            vec![pid, study, seriess],
            None,
            None,
        ),
        (
            Root::Patient,
            "IMAGE",
            vec![pid, study],
            a900,
            Some(A::SeriesInstanceUid),
        ),
        (
            Root::Patient,
            "IMAGE",
            vec![pid, study, seriess],
            a900,
            Some(A::SeriesInstanceUid),
        ),
        (
            Root::Patient,
            "IMAGE",
            vec![study, series],
            a900,
            Some(A::PatientId),
        ),
        (
            Root::Patient,
            "IMAGE",
            vec![sop_class, pid, study, series, sops],
            None,
            None,
        ),
        (
            Root::Patient,
            "PATIENT",
            vec![study],
            a900,
            Some(A::StudyInstanceUid),
        ),
        // A study-level Modality is read as ModalitiesInStudy.
        (Root::Patient, "STUDY", vec![modality, pid], None, None),
        (
            Root::Patient,
            "PATIENT",
            vec![modality],
            a900,
            Some(A::Modality),
        ),
        // Study Root
        (Root::Study, "PATIENT", vec![pid], a900, None),
        (Root::Study, "STUDY", vec![], None, None),
        (
            Root::Study,
            "STUDY",
            vec![pname, pid_wild, studies],
            None,
            None,
        ),
        (Root::Study, "STUDY", vec![modality], None, None),
        (
            Root::Study,
            "STUDY",
            vec![sop_class],
            a900,
            Some(A::SopClassUid),
        ),
        (
            Root::Study,
            "SERIES",
            vec![],
            a900,
            Some(A::StudyInstanceUid),
        ),
        (
            Root::Study,
            "SERIES",
            vec![studies],
            a900,
            Some(A::StudyInstanceUid),
        ),
        (
            Root::Study,
            "SERIES",
            vec![pname, study, modality],
            None,
            None,
        ),
        (
            Root::Study,
            "IMAGE",
            vec![study],
            a900,
            Some(A::SeriesInstanceUid),
        ),
        (Root::Study, "IMAGE", vec![study, series, sops], None, None),
        (Root::Study, "SERIES ", vec![study], None, None),
        (Root::Study, "", vec![study], a900, None),
        (Root::Study, "FRAME", vec![study], a900, None),
        (Root::Study, "study", vec![], a900, None),
    ];
    for (root, level, mut elements, status, offending) in cases {
        elements.sort_by_key(|e| e.0);
        let result = parse(root, level, &elements);
        let what = format!("{root:?} {level:?} {elements:?}");
        match (status, result) {
            (None, Ok(parsed)) => {
                assert_eq!(parsed.query.level.code(), level.trim(), "{what}");
                assert_eq!(parsed.query.root, root);
                assert_eq!(parsed.query.partition, PARTITION);
                assert!(parsed.query.pn_case_insensitive);
                assert_eq!(parsed.query.limit, Some(11));
                assert_eq!(parsed.query.keys.len(), elements.len(), "{what}");
            }
            (Some(status), Err(error)) => {
                assert_eq!(error.status(), status, "{what}: {error}");
                let tag = offending
                    .map(|a| (u32::from(a.tag().0) << 16) | u32::from(a.tag().1))
                    .unwrap_or(0x0008_0052);
                assert_eq!(error.offending_element(), Some(tag), "{what}: {error}");
                assert!(error.to_string().len() <= 64, "{error}");
            }
            (status, result) => panic!("{what}: expected {status:?}, got {result:?}"),
        }
    }
    // No QueryRetrieveLevel at all.
    let bytes = identifier(EXPLICIT_LE, &[study]);
    let error =
        parse_identifier(&bytes, EXPLICIT_LE, Root::Study, PARTITION, &options()).unwrap_err();
    assert_eq!(error, QueryKeyError::MissingLevel);
    assert_eq!(error.status(), Status::IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS);
    // Garbage and unknown transfer syntaxes: unable to process.
    let error = parse_identifier(
        &[0x08, 0x00, 0x52, 0x00, 0xFF, 0xFF, 0xFF, 0x7F, 1],
        IMPLICIT_LE,
        Root::Study,
        PARTITION,
        &options(),
    )
    .unwrap_err();
    assert_eq!(error.status(), Status::UNABLE_TO_PROCESS, "{error}");
    let error =
        parse_identifier(&bytes, "1.2.3.4.5", Root::Study, PARTITION, &options()).unwrap_err();
    assert_eq!(error, QueryKeyError::TransferSyntax("1.2.3.4.5".into()));
    assert_eq!(error.status(), Status::UNABLE_TO_PROCESS);
}

#[test]
fn hostile_identifiers_are_refused_before_decoding() {
    // (0008,0052) QueryRetrieveLevel "STUDY " in Implicit VR LE.
    let level = || -> Vec<u8> {
        let mut b = vec![0x08, 0x00, 0x52, 0x00, 6, 0, 0, 0];
        b.extend(b"STUDY ");
        b
    };
    // (0010,0010) claiming 2 GiB - 1, then one byte.
    let mut implicit_huge = level();
    implicit_huge.extend([0x10, 0x00, 0x10, 0x00, 0xFF, 0xFF, 0xFF, 0x7F, 1]);
    let mut explicit_huge = Vec::new();
    explicit_huge.extend([0x08, 0x00, 0x52, 0x00, b'C', b'S', 6, 0]);
    explicit_huge.extend(b"STUDY ");
    explicit_huge.extend([
        0x09, 0x00, 0x10, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
    ]);
    let mut big_huge = vec![0x00, 0x08, 0x00, 0x52, b'C', b'S', 0, 6];
    big_huge.extend(b"STUDY ");
    big_huge.extend([0x00, 0x10, 0x00, 0x10, b'P', b'N', 0xFF, 0xF0]);
    // A sequence whose item claims more than the sequence holds.
    let mut item_too_long = level();
    item_too_long.extend([0x08, 0x00, 0x10, 0x11, 16, 0, 0, 0]);
    item_too_long.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0x00]);
    item_too_long.extend([0; 8]);
    // Sequences of undefined length nested `depth` deep.
    let nested = |depth: usize| {
        let mut b = level();
        for _ in 0..depth {
            b.extend([0x08, 0x00, 0x10, 0x11, 0xFF, 0xFF, 0xFF, 0xFF]);
            b.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        for _ in 0..depth {
            b.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            b.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
        b
    };
    let mut truncated = level();
    truncated.extend([0x10, 0x00, 0x10]);
    // Rows (0028,0010), US, of 3 bytes: dicom-parser reads one u16 and
    // takes the third byte and the next element's as a header claiming
    // 0x00001010 bytes... or, crafted, gigabytes.
    let mut partial_value = level();
    partial_value.extend([0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0, 1, 2, 3]);
    partial_value.extend([0x10, 0x00, 0x10, 0x00, 2, 0, 0, 0, b'A', b' ']);
    // Deflated: a small stream inflating to 5 MiB.
    let mut bomb = Vec::new();
    {
        let Codec::Dataset(Some(adapter)) = transfer_syntax(DEFLATED).unwrap().codec() else {
            panic!("deflate is built in");
        };
        let mut writer = adapter.adapt_writer(Box::new(&mut bomb));
        std::io::Write::write_all(&mut writer, &vec![0u8; 5 << 20]).unwrap();
    }
    assert!(bomb.len() < 64 << 10);

    // (bytes, transfer syntax, expected error text or None for success)
    let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (implicit_huge, IMPLICIT_LE, Some("exceeds the data")),
        (explicit_huge, EXPLICIT_LE, Some("exceeds the data")),
        (big_huge, EXPLICIT_BE, Some("exceeds the data")),
        (item_too_long, IMPLICIT_LE, Some("exceeds the data")),
        (truncated, IMPLICIT_LE, Some("truncated")),
        (
            partial_value,
            IMPLICIT_LE,
            Some("whole number of 2-byte values"),
        ),
        (nested(3), IMPLICIT_LE, None),
        (nested(MAX_NESTING), IMPLICIT_LE, None),
        (nested(MAX_NESTING + 1), IMPLICIT_LE, Some("nested deeper")),
        (nested(100_000), IMPLICIT_LE, Some("nested deeper")),
        (bomb, DEFLATED, Some("inflates to more than")),
    ];
    for (bytes, ts, expected) in cases {
        let result = parse_identifier(&bytes, ts, Root::Study, PARTITION, &options());
        match (expected, result) {
            (None, Ok(parsed)) => {
                assert_eq!(parsed.unsupported(), vec![Tag(0x0008, 0x1110)]);
            }
            (Some(text), Err(error)) => {
                assert_eq!(error.status(), Status::UNABLE_TO_PROCESS, "{error}");
                assert!(error.to_string().contains(text), "{error}");
            }
            (expected, result) => panic!("{ts}: expected {expected:?}, got {result:?}"),
        }
    }
}

/// Reads a response back.
fn read(bytes: &[u8], ts: &str) -> InMemDicomObject {
    InMemDicomObject::read_dataset_with_ts(bytes, transfer_syntax(ts).unwrap()).unwrap()
}

fn text(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    object.element_opt(tag).unwrap().map(|e| {
        e.to_str()
            .unwrap()
            .trim_end_matches([' ', '\0'])
            .to_string()
    })
}

#[test]
fn only_the_first_unsupported_keys_are_echoed() {
    // 5,000 private keys: each response would otherwise repeat them all.
    let mut elements: Vec<(Tag, VR, &str)> = (0..5_000u16)
        .map(|i| (Tag(0x0011, 0x1000 + i), VR::LO, ""))
        .collect();
    elements.push((tag_of(Attribute::PatientName), VR::PN, ""));
    elements.sort_by_key(|(tag, _, _)| *tag);
    let parsed = parse(Root::Study, "STUDY", &elements).unwrap();
    let echoed = parsed.unsupported();
    assert_eq!(echoed.len(), options().max_echoed_unsupported);
    assert_eq!(echoed[0], Tag(0x0011, 0x1000), "the first in tag order");
    assert!(parsed.optional_keys_unsupported(), "FF01 all the same");
    let found = Match {
        values: vec![(Attribute::PatientName, Some("Doe^John".into()))],
    };
    let response = encode_response(&parsed, &found, EXPLICIT_LE).unwrap();
    assert!(response.len() < 2048, "{} bytes", response.len());

    // None echoed: still FF01.
    let none = ParseOptions {
        max_echoed_unsupported: 0,
        combined_date_time: false,
        ..options()
    };
    let mut all = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY")];
    all.extend_from_slice(&elements[1..4]);
    let parsed = parse_identifier(
        &identifier(EXPLICIT_LE, &all),
        EXPLICIT_LE,
        Root::Study,
        PARTITION,
        &none,
    )
    .unwrap();
    assert!(parsed.unsupported().is_empty());
    assert!(parsed.optional_keys_unsupported());
}

#[test]
fn unsupported_keys_are_returned_empty() {
    let instance_availability = Tag(0x0008, 0x0056);
    let referenced_studies = Tag(0x0008, 0x1110);
    let private = Tag(0x0009, 0x1001);
    let elements = [
        (instance_availability, VR::CS, ""),
        (tags::RETRIEVE_AE_TITLE, VR::AE, ""),
        (referenced_studies, VR::SQ, ""),
        (Tag(0x0009, 0x0010), VR::LO, "ACME"),
        (private, VR::LO, "x"),
        (tag_of(Attribute::PatientName), VR::PN, ""),
        (tag_of(Attribute::StudyInstanceUid), VR::UI, STUDY_UID),
    ];
    for ts in [EXPLICIT_LE, IMPLICIT_LE] {
        let mut all = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "SERIES")];
        all.extend_from_slice(&elements);
        let parsed = parse_identifier(
            &identifier(ts, &all),
            ts,
            Root::Study,
            PARTITION,
            &options(),
        )
        .unwrap();
        assert_eq!(
            parsed.unsupported(),
            vec![
                instance_availability,
                referenced_studies,
                Tag(0x0009, 0x0010),
                private
            ],
            "{ts}"
        );
        assert!(parsed.optional_keys_unsupported());
        assert_eq!(parsed.query.keys.len(), 2);

        let found = Match {
            values: vec![
                (Attribute::PatientName, Some("Doe^John".into())),
                (Attribute::StudyInstanceUid, Some(STUDY_UID.into())),
                (Attribute::SeriesInstanceUid, Some(SERIES_UID.into())),
            ],
        };
        let response = read(&encode_response(&parsed, &found, ts).unwrap(), ts);
        assert_eq!(
            text(&response, tags::QUERY_RETRIEVE_LEVEL).unwrap(),
            "SERIES"
        );
        assert_eq!(text(&response, tags::RETRIEVE_AE_TITLE).unwrap(), OUR_AE);
        assert_eq!(
            text(&response, tag_of(Attribute::PatientName)).unwrap(),
            "Doe^John"
        );
        // The series UID was not asked for: it is the level's unique key.
        assert_eq!(
            text(&response, tag_of(Attribute::SeriesInstanceUid)).unwrap(),
            SERIES_UID
        );
        for tag in parsed.unsupported() {
            let element = response.element(tag).unwrap();
            match element.items() {
                // An empty sequence (its length may be undefined).
                Some(items) => assert!(items.is_empty(), "{tag} in {ts}"),
                None => assert_eq!(element.header().len.0, 0, "{tag} in {ts}"),
            }
        }
        if ts == EXPLICIT_LE {
            assert_eq!(response.element(referenced_studies).unwrap().vr(), VR::SQ);
        }
        assert!(response
            .element_opt(tags::SPECIFIC_CHARACTER_SET)
            .unwrap()
            .is_none());
        assert!(response
            .element_opt(tag_of(Attribute::PatientId))
            .unwrap()
            .is_none());
    }
}

#[test]
fn responses_round_trip_in_every_transfer_syntax() {
    use Attribute as A;
    let elements = [
        (tag_of(A::StudyDate), VR::DA, "20200101-"),
        (tag_of(A::StudyTime), VR::TM, ""),
        (tag_of(A::AccessionNumber), VR::SH, ""),
        (tag_of(A::ModalitiesInStudy), VR::CS, "CT\\MR"),
        (tag_of(A::SopClassesInStudy), VR::UI, ""),
        (tag_of(A::ReferringPhysicianName), VR::PN, ""),
        (tag_of(A::PatientName), VR::PN, ""),
        (tag_of(A::PatientId), VR::LO, ""),
        (tag_of(A::PatientBirthDate), VR::DA, ""),
        (tag_of(A::NumberOfPatientRelatedStudies), VR::IS, ""),
        (tag_of(A::StudyInstanceUid), VR::UI, ""),
        (tag_of(A::NumberOfStudyRelatedSeries), VR::IS, ""),
        (tag_of(A::NumberOfStudyRelatedInstances), VR::IS, ""),
    ];
    let found = Match {
        values: vec![
            (A::StudyDate, Some("20200105".into())),
            (A::StudyTime, Some("101500".into())),
            (A::AccessionNumber, None),
            (A::ModalitiesInStudy, Some("CT\\MR".into())),
            (
                A::SopClassesInStudy,
                Some("1.2.840.10008.5.1.4.1.1.2".into()),
            ),
            (A::ReferringPhysicianName, None),
            (A::PatientName, Some("Doe^John".into())),
            (A::PatientId, Some("PID1".into())),
            (A::PatientBirthDate, Some("19700101".into())),
            (A::NumberOfPatientRelatedStudies, Some("2".into())),
            (A::StudyInstanceUid, Some("1.2.345".into())),
            (A::NumberOfStudyRelatedSeries, Some("3".into())),
            (A::NumberOfStudyRelatedInstances, Some("12".into())),
        ],
    };
    for ts in [EXPLICIT_LE, IMPLICIT_LE, DEFLATED, EXPLICIT_BE] {
        let mut all = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY")];
        all.extend_from_slice(&elements);
        all.sort_by_key(|e| e.0);
        let bytes = identifier(ts, &all);
        let parsed = parse_identifier(&bytes, ts, Root::Study, PARTITION, &options()).unwrap();
        assert!(!parsed.optional_keys_unsupported());
        assert_eq!(parsed.query.keys.len(), elements.len());
        let encoded = encode_response(&parsed, &found, ts).unwrap();
        assert_eq!(encoded.len() % 2, 0, "{ts}: odd length {}", encoded.len());
        let response = read(&encoded, ts);
        // Exactly the requested keys and the level.
        let mut expected: Vec<Tag> = elements.iter().map(|e| e.0).collect();
        expected.push(tags::QUERY_RETRIEVE_LEVEL);
        expected.sort();
        let got: Vec<Tag> = response.iter().map(|e| e.header().tag).collect();
        assert_eq!(got, expected, "{ts}");
        for (attribute, value) in &found.values {
            let element = response.element(tag_of(*attribute)).unwrap();
            assert_eq!(element.vr(), dictionary_vr(tag_of(*attribute)), "{ts}");
            match value {
                Some(value) => {
                    let values = element.value().to_multi_str().unwrap().join("\\");
                    assert_eq!(values.trim_end_matches([' ', '\0']), value, "{ts}");
                }
                None => assert_eq!(element.header().len.0, 0, "{ts}"),
            }
        }
        let modalities = response.element(tag_of(A::ModalitiesInStudy)).unwrap();
        assert_eq!(modalities.value().multiplicity(), 2);
    }
}

#[test]
fn character_sets() {
    let name = tag_of(Attribute::PatientName);
    // (request charset, request name, expected matcher value, stored
    // name, expected response charset, expected name bytes)
    type Case<'a> = (
        Option<&'a str>,
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a [u8],
    );
    let cases: &[Case] = &[
        (
            Some("ISO_IR 100"),
            "Müller*",
            "Müller*",
            "Müller^Hans",
            Some("ISO_IR 100"),
            b"M\xFCller^Hans",
        ),
        (
            Some("ISO_IR 192"),
            "Müller*",
            "Müller*",
            "Müller^Hans",
            Some("ISO_IR 192"),
            "Müller^Hans".as_bytes(),
        ),
        (
            None,
            "M*",
            "M*",
            "Müller^Hans",
            Some("ISO_IR 192"),
            "Müller^Hans".as_bytes(),
        ),
        // Not in Latin-1: UTF-8 whatever the request asked for.
        (
            Some("ISO_IR 100"),
            "Z*",
            "Z*",
            "Żółć^Jan",
            Some("ISO_IR 192"),
            "Żółć^Jan".as_bytes(),
        ),
        // ASCII: the request's character set is echoed, or none.
        (
            Some("ISO_IR 100"),
            "Doe*",
            "Doe*",
            "Doe^John",
            Some("ISO_IR 100"),
            b"Doe^John",
        ),
        (
            Some("ISO_IR 192"),
            "Doe*",
            "Doe*",
            "Doe^John",
            Some("ISO_IR 192"),
            b"Doe^John",
        ),
        (None, "Doe*", "Doe*", "Doe^John", None, b"Doe^John"),
        // A request in an ISO 2022 Latin-1 that dicom-encoding can read.
        (
            Some("ISO 2022 IR 100"),
            "Mü*",
            "Mü*",
            "Müller^Hans",
            Some("ISO_IR 100"),
            b"M\xFCller^Hans",
        ),
    ];
    for &(request_cs, request_name, matched, stored, response_cs, name_bytes) in cases {
        for ts in [EXPLICIT_LE, IMPLICIT_LE] {
            let what = format!("{request_cs:?} {request_name} {stored} {ts}");
            let mut elements = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY")];
            if let Some(cs) = request_cs {
                elements.insert(0, (tags::SPECIFIC_CHARACTER_SET, VR::CS, cs));
            }
            elements.push((name, VR::PN, request_name));
            let bytes = identifier(ts, &elements);
            if request_cs == Some("ISO_IR 100") && request_name.contains('ü') {
                // The request really is Latin-1 on the wire.
                assert!(bytes.windows(2).any(|w| w == b"M\xFC"), "{what}");
            }
            let parsed = parse_identifier(&bytes, ts, Root::Study, PARTITION, &options()).unwrap();
            assert_eq!(parsed.specific_character_set(), request_cs, "{what}");
            assert_eq!(parsed.query.keys[0].matcher, wildcard(matched), "{what}");
            let found = Match {
                values: vec![
                    (Attribute::PatientName, Some(stored.into())),
                    (Attribute::StudyInstanceUid, Some(STUDY_UID.into())),
                ],
            };
            let encoded = encode_response(&parsed, &found, ts).unwrap();
            assert!(
                encoded.windows(name_bytes.len()).any(|w| w == name_bytes),
                "{what}: name bytes not found in {encoded:X?}"
            );
            let response = read(&encoded, ts);
            assert_eq!(
                text(&response, tags::SPECIFIC_CHARACTER_SET).as_deref(),
                response_cs,
                "{what}"
            );
            assert_eq!(text(&response, name).unwrap(), stored, "{what}");
        }
    }
    assert_eq!(response_character_set(Some("ISO_IR 999"), &["Doe"]), None);
    assert_eq!(
        response_character_set(Some("\\ISO 2022 IR 100"), &["Müller"]).as_deref(),
        Some("ISO_IR 100")
    );
}

#[test]
fn a_study_level_modality_is_read_as_modalities_in_study() {
    use Attribute as A;
    let parsed = parse(
        Root::Study,
        "STUDY",
        &[(tag_of(A::Modality), VR::CS, "CT\\MR")],
    )
    .unwrap();
    assert_eq!(
        parsed.query.keys,
        vec![Key {
            attribute: A::ModalitiesInStudy,
            matcher: list(&["CT", "MR"]),
        }]
    );
    assert!(!parsed.optional_keys_unsupported());
    // Answered under the tag asked, with the study's modalities.
    let found = Match {
        values: vec![
            (A::ModalitiesInStudy, Some("CT\\SR".into())),
            (A::StudyInstanceUid, Some("1.2.3".into())),
        ],
    };
    let response = read(
        &encode_response(&parsed, &found, EXPLICIT_LE).unwrap(),
        EXPLICIT_LE,
    );
    assert_eq!(text(&response, tags::MODALITY).as_deref(), Some("CT\\SR"));
    assert!(response.element(tag_of(A::ModalitiesInStudy)).is_err());
    // At SERIES level it is the series' own modality.
    let parsed = parse(
        Root::Study,
        "SERIES",
        &[
            (tag_of(A::Modality), VR::CS, "CT"),
            (tag_of(A::StudyInstanceUid), VR::UI, STUDY_UID),
        ],
    )
    .unwrap();
    assert_eq!(parsed.query.keys[0].attribute, A::Modality);
}

#[test]
fn combined_date_time_only_when_negotiated() {
    use Attribute as A;
    let elements = [
        (tag_of(A::StudyDate), VR::DA, "20240101-20240131"),
        (tag_of(A::StudyTime), VR::TM, "1000-1800"),
    ];
    let mut all = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY")];
    all.extend_from_slice(&elements);
    let bytes = identifier(EXPLICIT_LE, &all);
    let separate =
        parse_identifier(&bytes, EXPLICIT_LE, Root::Study, PARTITION, &options()).unwrap();
    assert_eq!(
        separate.query.keys[0].matcher,
        range(Some("20240101"), Some("20240131"))
    );
    let combined_options = ParseOptions {
        combined_date_time: true,
        ..options()
    };
    let combined = parse_identifier(
        &bytes,
        EXPLICIT_LE,
        Root::Study,
        PARTITION,
        &combined_options,
    )
    .unwrap();
    let bound = |date: &str, time: &str| {
        Some(DateTimeBound {
            date: date.into(),
            time: Some(time.into()),
        })
    };
    assert_eq!(
        combined.query.keys,
        vec![
            Key {
                attribute: A::StudyDate,
                matcher: Matcher::DateTimeRange {
                    from: bound("20240101", "1000"),
                    to: bound("20240131", "1800"),
                },
            },
            Key {
                attribute: A::StudyTime,
                matcher: Matcher::Universal,
            },
        ]
    );
}

#[test]
fn combined_date_time_pairs() {
    use Attribute as A;
    let key = |attribute, matcher| Key { attribute, matcher };
    // Open ends; a single time bounds both ends.
    let mut keys = vec![
        key(A::SeriesDate, range(None, Some("20240131"))),
        key(A::SeriesTime, single("12")),
    ];
    combine_date_time(&mut keys);
    assert_eq!(
        keys[0].matcher,
        Matcher::DateTimeRange {
            from: None,
            to: Some(DateTimeBound {
                date: "20240131".into(),
                time: Some("12".into())
            }),
        }
    );
    assert_eq!(keys[1].matcher, Matcher::Universal);
    // A single date, a universal time, a time list: matched separately.
    for (date, time) in [
        (single("20240101"), range(Some("10"), Some("12"))),
        (range(Some("20240101"), None), Matcher::Universal),
        (range(Some("20240101"), None), list(&["10", "12"])),
    ] {
        let mut keys = vec![
            key(A::StudyDate, date.clone()),
            key(A::StudyTime, time.clone()),
        ];
        combine_date_time(&mut keys);
        assert_eq!(keys, vec![key(A::StudyDate, date), key(A::StudyTime, time)]);
    }
    // Dates without a paired time are left alone.
    let mut keys = vec![key(A::PatientBirthDate, range(Some("19700101"), None))];
    combine_date_time(&mut keys);
    assert_eq!(keys[0].matcher, range(Some("19700101"), None));
}

/// A small deterministic generator (splitmix64) for the flat encoder's
/// property test: the same cases on every run.
struct Cases(u64);

impl Cases {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }
}

/// A stored value of `attribute` as the index may return it: absent,
/// empty, odd and even lengths, several values, PN components and groups,
/// Latin-1, other scripts, C1 controls, padding kept, too long for a
/// 16-bit length.
fn stored_value(cases: &mut Cases, attribute: Attribute) -> Option<String> {
    let common: &[&str] = match attribute.kind() {
        Kind::PersonName => &[
            "Doe^John",
            "Doe^Jane^^Dr",
            "Doe^Jo",
            "Müller^Hans",
            "Ñúñez^José^María",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            "Żółć^Jan",
            "Doe^John\\Roe^Richard",
            "^",
        ],
        Kind::Uid => &[
            "1.2.3",
            "1.2.34",
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.5.1.4.1.1.2\\1.2.840.10008.5.1.4.1.1.4",
        ],
        Kind::Date => &["20200105", "19700101"],
        Kind::Time => &["101500", "1015", "101500.123", "07"],
        Kind::Integer | Kind::Count => &["1", "12", "123", "0"],
        Kind::Text => &[
            "CT",
            "MR",
            "CT\\MR",
            "CT\\MR\\US",
            "PID1",
            "A1",
            "ABC ",
            "Brain w/o contrast",
            "Schädel",
            "Thorax ↑",
            "x\u{85}y",
            "M",
        ],
    };
    match cases.below(12) {
        0 => None,
        1 => Some(String::new()),
        2 if cases.below(40) == 0 => Some("x".repeat(70_000)),
        3 => Some("ÿ".repeat(1 + cases.below(4))),
        _ => Some(cases.pick(common).to_string()),
    }
}

/// The request of one generated case: the level, its character set and
/// the elements asked for.
fn generated_request(
    cases: &mut Cases,
    root: Root,
    level: Level,
    charset: Option<&'static str>,
) -> Vec<(Tag, VR, &'static str)> {
    use Attribute as A;
    let mut elements = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, level.code())];
    if let Some(cs) = charset {
        elements.push((tags::SPECIFIC_CHARACTER_SET, VR::CS, cs));
    }
    for attribute in Attribute::ALL {
        let tag = tag_of(*attribute);
        let vr = dictionary_vr(tag);
        let attribute_level = attribute.level_in(root);
        if attribute_level < level && *attribute == A::unique_key(attribute_level) {
            let value = match attribute_level {
                Level::Patient => "PID1",
                Level::Study => STUDY_UID,
                _ => SERIES_UID,
            };
            elements.push((tag, vr, value));
        } else if *attribute == A::Modality && level == Level::Study {
            if cases.below(3) == 0 {
                elements.push((tag, vr, ""));
            }
        } else if attribute_level <= level && cases.below(2) == 0 {
            elements.push((tag, vr, ""));
        }
    }
    let extras = [
        (tags::RETRIEVE_AE_TITLE, VR::AE),
        (Tag(0x0008, 0x0056), VR::CS),
        (Tag(0x0008, 0x1110), VR::SQ),
        (Tag(0x0009, 0x0010), VR::LO),
        (Tag(0x0009, 0x1001), VR::UN),
        (Tag(0x0040, 0xA730), VR::SQ),
        (Tag(0x0040, 0x0009), VR::SH),
    ];
    for (tag, vr) in extras {
        if cases.below(4) == 0 {
            elements.push((tag, vr, ""));
        }
    }
    elements.sort_by_key(|e| e.0);
    elements
}

#[test]
fn the_flat_encoder_writes_the_data_set_paths_bytes() {
    use Attribute as A;
    const DEFLATED_OR_BE: [&str; 2] = [DEFLATED, EXPLICIT_BE];
    let charsets: &[Option<&'static str>] = &[
        None,
        Some("ISO_IR 100"),
        Some("ISO_IR 192"),
        Some("ISO 2022 IR 100"),
        Some("ISO_IR 144"),
        Some("ISO_IR 13"),
        Some("ISO 2022 IR 87"),
        Some("ISO_IR 999"),
    ];
    let models = [
        (Root::Patient, Level::Patient),
        (Root::Patient, Level::Study),
        (Root::Study, Level::Study),
        (Root::Study, Level::Series),
        (Root::Study, Level::Image),
    ];
    let mut cases = Cases(15);
    let (mut compared, mut flat) = (0usize, 0usize);
    for round in 0..6 {
        for &charset in charsets {
            for (root, level) in models {
                for ts in [EXPLICIT_LE, IMPLICIT_LE] {
                    let elements = generated_request(&mut cases, root, level, charset);
                    let parsed = parse_identifier(
                        &identifier(ts, &elements),
                        ts,
                        root,
                        PARTITION,
                        &options(),
                    )
                    .unwrap();
                    for _ in 0..8 {
                        let found = Match {
                            values: A::ALL
                                .iter()
                                .map(|a| (*a, stored_value(&mut cases, *a)))
                                .collect(),
                        };
                        let what = || {
                            let shown: Vec<_> = found
                                .values
                                .iter()
                                .map(|(a, v)| {
                                    (
                                        *a,
                                        v.as_ref().map(|v| v.chars().take(40).collect::<String>()),
                                    )
                                })
                                .collect();
                            format!("round {round}, {charset:?}, {level:?}, {ts}, {elements:?}, {shown:?}")
                        };
                        let reference = response::encode_dataset(&parsed, &found, ts);
                        let written = flat::encode(&parsed, &found, ts);
                        if let Some(bytes) = &written {
                            flat += 1;
                            assert!(
                                Ok(bytes) == reference.as_ref(),
                                "{}\nflat {bytes:?}\ndata set {reference:?}",
                                what()
                            );
                        }
                        assert!(
                            encode_response(&parsed, &found, ts) == reference,
                            "{}",
                            what()
                        );
                        compared += 1;
                    }
                }
            }
        }
    }
    // The flat path is taken for most of them, not left to the fallback.
    assert!(flat * 2 > compared, "{flat} of {compared} written flat");

    // The common responses always go flat, in both transfer syntaxes and
    // the character sets other than ISO 2022 Japanese.
    let common = Match {
        values: vec![
            (A::StudyDate, Some("20200105".into())),
            (A::StudyTime, Some("101500".into())),
            (A::AccessionNumber, Some("A1".into())),
            (A::ModalitiesInStudy, Some("CT\\MR".into())),
            (A::StudyDescription, Some("Brain".into())),
            (A::PatientName, Some("Müller^Hans".into())),
            (A::PatientId, Some("PID1".into())),
            (A::StudyInstanceUid, Some("1.2.345".into())),
            (A::NumberOfStudyRelatedInstances, Some("100".into())),
        ],
    };
    for charset in [None, Some("ISO_IR 100"), Some("ISO_IR 192")] {
        for ts in [EXPLICIT_LE, IMPLICIT_LE] {
            let mut elements = vec![(tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY")];
            if let Some(cs) = charset {
                elements.push((tags::SPECIFIC_CHARACTER_SET, VR::CS, cs));
            }
            for (attribute, _) in &common.values {
                elements.push((tag_of(*attribute), dictionary_vr(tag_of(*attribute)), ""));
            }
            elements.sort_by_key(|e| e.0);
            let parsed = parse_identifier(
                &identifier(ts, &elements),
                ts,
                Root::Study,
                PARTITION,
                &options(),
            )
            .unwrap();
            let written = flat::encode(&parsed, &common, ts);
            assert!(written.is_some(), "{charset:?} {ts}");
            assert_eq!(
                Ok(written.unwrap()),
                response::encode_dataset(&parsed, &common, ts)
            );
        }
        // Deflated and big endian responses keep the data set path.
        for ts in DEFLATED_OR_BE {
            let parsed = parse(Root::Study, "STUDY", &[]).unwrap();
            assert_eq!(flat::encode(&parsed, &common, ts), None);
        }
    }
}
