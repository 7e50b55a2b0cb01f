//! C-FIND benchmark (issue 3): study-level queries through a real
//! association, on a synthetic index grown to 100 k, 1 M and 10 M instances,
//! and the same queries against other SCPs (Orthanc) on a shared corpus.
//!
//! # Modes
//!
//! **Index mode** (default): generates a deterministic synthetic index
//! directly through the library (`SqliteIndex::insert_instances`, batches of
//! `--batch-studies` studies, one study = 100 instances in 4 series), and at
//! every milestone opens the archive on that index (as a restart would:
//! `SqliteIndex::open`, `ServerBuilder`, `Server::start_on` on a
//! `127.0.0.1:0` listener) and measures study-level C-FIND with the client
//! below. The data is a pure function of the study number, so a kept
//! database (`--db PATH`) is resumed where it stopped.
//!
//! **Remote mode** (`--peer NAME=AET@HOST:PORT`, repeatable, with
//! `--manifest` of a `gen_corpus.py` corpus): the same shapes against
//! running SCPs that hold that corpus; every query goes to every peer in
//! turn (the order alternates), in one run. `benches/find_orthanc.sh` loads
//! Orthanc and imageserver with one corpus and calls this.
//!
//! # Client and timing
//!
//! One association per server (dicom-ul negotiates Study Root FIND, Implicit
//! VR Little Endian); then PDUs are written and read with our own codec
//! (`dimse::Command::find_rq`, `pdu::write_pdata`, `pdu::PduReader`). A
//! query's time runs from before the C-FIND-RQ is written to the end of the
//! final response: every pending response and its identifier are read and
//! parsed (StudyInstanceUID must be present). Shapes are interleaved; the
//! first `--warmup` queries of each shape are not recorded.
//!
//! In index mode every query also goes, in the same loop, straight to
//! `QueryStore::find` of the served archive (rows `index`): the difference
//! to the association (rows `assoc`) is what DIMSE encoding, the socket and
//! the client cost. The load average is printed with every table: the
//! machine is shared, and the percentiles move with it.
//!
//! # Shapes (parameters drawn from the generated data)
//!
//! - `patient_id`: PatientID of a random study, exact;
//! - `accession`: AccessionNumber of a random study, exact;
//! - `date_month`: StudyDate = the calendar month of a random study's date;
//! - `name_prefix`: PatientName = first three letters of a random study's
//!   patient surname + `*`;
//! - `modality_month`: ModalitiesInStudy = one modality of a random study,
//!   and StudyDate = that study's calendar month.
//!
//! Every query asks for StudyInstanceUID, PatientName, PatientID,
//! StudyDate, StudyTime, AccessionNumber, StudyDescription,
//! ModalitiesInStudy and NumberOfStudyRelatedInstances.
//!
//! # Usage
//!
//! ```text
//! cargo bench --bench find                         # quick: 10 k and 100 k instances
//! cargo bench --bench find -- --max-instances 10000000 [--queries 200]
//! cargo bench --bench find -- --milestones 100000,1000000 --db /tmp/find.db
//! cargo bench --bench find -- --milestones 10000000 --db /tmp/find.db --shapes name_prefix
//! cargo bench --bench find -- --manifest C/manifest.json \
//!     --peer orthanc=ORTHANC@127.0.0.1:4242 --peer imageserver=IMAGESERVER@127.0.0.1:11112
//! ```
//!
//! Without `--bench` (as `cargo test --benches` runs it) a smoke run of
//! 2 000 instances and 5 queries per shape checks that everything answers.
//! Databases go to a temporary directory under `$BENCH_TMPDIR` (default
//! `/tmp`) unless `--db` is given. `--help` lists every flag.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::pdu::PresentationContextResultReason;
use dicom_ul::{ClientAssociationOptions, Pdu};
use imageserver_core::config::Config;
use imageserver_core::db::QueryStore;
use imageserver_core::dicom::dimse::{Command, CommandField, Priority};
use imageserver_core::dicom::pdu::{self, Incoming, PduReader};
use imageserver_core::model::query::{Attribute, Key, Kind, Level, Matcher, Query, Root};
use imageserver_core::model::{
    FilesystemId, FolderName, InstanceAttrs, InstanceRecord, PartitionId, PatientAttrs,
    SeriesAttrs, StudyAttrs, StudyLocation, Uid,
};
use imageserver_core::server::{Server, ServerBuilder};

const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const SERVER_AE: &str = "IMAGESERVER";
const CALLING_AE: &str = "FINDBENCH";
/// UID root of the synthetic data.
const UID_ROOT: &str = "1.2.826.0.1.3680043.10.543.7";
const SERIES_PER_STUDY: u64 = 4;
const INSTANCES_PER_SERIES: u64 = 25;
const INSTANCES_PER_STUDY: u64 = SERIES_PER_STUDY * INSTANCES_PER_SERIES;

type Tag = (u16, u16);
const STUDY_DATE: Tag = (0x0008, 0x0020);
const STUDY_TIME: Tag = (0x0008, 0x0030);
const ACCESSION_NUMBER: Tag = (0x0008, 0x0050);
const QUERY_RETRIEVE_LEVEL: Tag = (0x0008, 0x0052);
const MODALITIES_IN_STUDY: Tag = (0x0008, 0x0061);
const STUDY_DESCRIPTION: Tag = (0x0008, 0x1030);
const PATIENT_NAME: Tag = (0x0010, 0x0010);
const PATIENT_ID: Tag = (0x0010, 0x0020);
const STUDY_INSTANCE_UID: Tag = (0x0020, 0x000D);
const NUMBER_OF_STUDY_RELATED_INSTANCES: Tag = (0x0020, 0x1208);
/// The keys every query returns.
const RETURN_KEYS: [Tag; 9] = [
    STUDY_DATE,
    STUDY_TIME,
    ACCESSION_NUMBER,
    MODALITIES_IN_STUDY,
    STUDY_DESCRIPTION,
    PATIENT_NAME,
    PATIENT_ID,
    STUDY_INSTANCE_UID,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
];

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

fn main() {
    if let Err(error) = run() {
        eprintln!("find bench: {error}");
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------ options

#[derive(Debug, Clone)]
struct Options {
    /// Smoke run (no `--bench`): tiny sizes, sanity assertions.
    smoke: bool,
    milestones: Vec<u64>,
    queries: usize,
    warmup: usize,
    batch_studies: u64,
    query_timeout: Duration,
    /// Longest measurement per milestone (or per remote run).
    measure_for: Duration,
    /// The whole run; inserting stops (and later milestones are skipped)
    /// once it has passed.
    time_limit: Duration,
    db: Option<PathBuf>,
    /// Index on PostgreSQL at this URL (an empty database) instead of SQLite.
    pg: Option<String>,
    keep: bool,
    seed: u64,
    peers: Vec<Peer>,
    manifest: Option<PathBuf>,
    shapes: Vec<Shape>,
}

#[derive(Debug, Clone)]
struct Peer {
    name: String,
    ae_title: String,
    address: String,
}

const USAGE: &str = "\
usage: cargo bench --bench find -- [options]
  --max-instances N    milestones 100k, 1M, 10M, ... up to N (and N itself)
  --milestones A,B,..  explicit milestones, in instances (multiples of 100)
  --quick              milestones 10k and 100k (the default under cargo bench)
  --queries Q          recorded queries per shape and milestone (default 200)
  --warmup W           unrecorded queries per shape first (default 10)
  --batch-studies B    studies per insert transaction (default 100 = 10k instances)
  --query-timeout S    seconds one query may take (default 30)
  --measure-for S      seconds of queries per milestone at most (default 300)
  --time-limit S       seconds for the whole run (default 3600)
  --db PATH            keep the index here (resumed if it exists) instead of a tempdir
  --pg URL             index on PostgreSQL (postgres://…/db, resumed if it holds data)
  --keep               do not delete the temporary directory
  --seed N             query parameter seed (default 1)
  --shapes A,B,..      only these shapes (patient_id, accession, date_month,
                       name_prefix, modality_month)
  --peer NAME=AET@HOST:PORT   remote mode: query this SCP (repeatable)
  --manifest FILE      remote mode: gen_corpus.py manifest the peers hold";

impl Options {
    fn parse() -> Result<Options> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench = args.iter().any(|a| a == "--bench");
        let mut o = Options {
            smoke: !bench,
            milestones: if bench {
                vec![10_000, 100_000]
            } else {
                vec![2_000]
            },
            queries: if bench { 200 } else { 5 },
            warmup: if bench { 10 } else { 1 },
            batch_studies: 100,
            query_timeout: Duration::from_secs(30),
            measure_for: Duration::from_secs(300),
            time_limit: Duration::from_secs(if bench { 3600 } else { 300 }),
            db: None,
            pg: None,
            keep: false,
            seed: 1,
            peers: Vec::new(),
            manifest: None,
            shapes: SHAPES.to_vec(),
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--bench" => {}
                "--help" | "-h" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                "--quick" => o.milestones = vec![10_000, 100_000],
                "--max-instances" => {
                    let max: u64 = value()?.parse()?;
                    let mut milestones = Vec::new();
                    let mut m = 100_000;
                    while m <= max {
                        milestones.push(m);
                        m *= 10;
                    }
                    if milestones.last() != Some(&max) {
                        milestones.push(max);
                    }
                    o.milestones = milestones;
                }
                "--milestones" => {
                    o.milestones = value()?
                        .split(',')
                        .map(|m| m.trim().parse::<u64>())
                        .collect::<Result<_, _>>()?;
                }
                "--queries" => o.queries = value()?.parse()?,
                "--warmup" => o.warmup = value()?.parse()?,
                "--batch-studies" => o.batch_studies = value()?.parse::<u64>()?.max(1),
                "--query-timeout" => o.query_timeout = Duration::from_secs(value()?.parse()?),
                "--measure-for" => o.measure_for = Duration::from_secs(value()?.parse()?),
                "--time-limit" => o.time_limit = Duration::from_secs(value()?.parse()?),
                "--db" => o.db = Some(PathBuf::from(value()?)),
                "--pg" => o.pg = Some(value()?),
                "--keep" => o.keep = true,
                "--seed" => o.seed = value()?.parse()?,
                "--manifest" => o.manifest = Some(PathBuf::from(value()?)),
                "--peer" => o.peers.push(parse_peer(&value()?)?),
                "--shapes" => {
                    o.shapes = value()?
                        .split(',')
                        .map(|name| {
                            SHAPES
                                .into_iter()
                                .find(|s| s.label() == name.trim())
                                .ok_or_else(|| format!("unknown shape {name:?}"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                // Flags cargo's test runner may pass to any target.
                "--nocapture" | "--quiet" | "-q" | "--test-threads" | "--exact" => {}
                other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
            }
        }
        o.milestones.sort_unstable();
        o.milestones.dedup();
        if o.milestones.is_empty() || o.milestones.iter().any(|m| *m < INSTANCES_PER_STUDY) {
            return Err("milestones must be at least 100 instances".into());
        }
        if o.peers.is_empty() != o.manifest.is_none() {
            return Err("remote mode needs both --peer and --manifest".into());
        }
        Ok(o)
    }
}

fn parse_peer(spec: &str) -> Result<Peer> {
    let bad = || format!("--peer {spec:?}: expected NAME=AET@HOST:PORT");
    let (name, rest) = spec.split_once('=').ok_or_else(bad)?;
    let (ae_title, address) = rest.split_once('@').ok_or_else(bad)?;
    Ok(Peer {
        name: name.to_string(),
        ae_title: ae_title.to_string(),
        address: address.to_string(),
    })
}

fn run() -> Result<()> {
    let options = Options::parse()?;
    if options.peers.is_empty() {
        index_mode(&options)
    } else {
        remote_mode(&options)
    }
}

// ---------------------------------------------------------- synthetic data

/// SplitMix64: the generator and the hash of the synthetic data.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash of (item, salt): every attribute of the data is one of these.
fn h(item: u64, salt: u64) -> u64 {
    mix(mix(item) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// A small deterministic random generator for the query parameters.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Surnames (a few hundred, several sharing a 3-letter prefix).
const SURNAMES_TEXT: &str = "\
    SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ HERNANDEZ \
    LOPEZ GONZALEZ WILSON ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE PEREZ THOMPSON \
    WHITE HARRIS SANCHEZ CLARK RAMIREZ LEWIS ROBINSON WALKER YOUNG ALLEN KING WRIGHT SCOTT \
    TORRES NGUYEN HILL FLORES GREEN ADAMS NELSON BAKER HALL RIVERA CAMPBELL MITCHELL \
    CARTER ROBERTS MUELLER SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER SCHULZ \
    HOFFMANN KOCH RICHTER KLEIN WOLF SCHROEDER NEUMANN SCHWARZ ZIMMERMANN BRAUN KRUEGER \
    HOFMANN HARTMANN LANGE WERNER KRAUSE LEHMANN KOEHLER HUBER KAISER FUCHS PETERS LANG \
    SCHOLZ MOELLER WEISS JUNG HAHN VOGEL FRIEDRICH KELLER GUENTHER FRANK BERGER WINKLER \
    ROTH BECK LORENZ BAUMANN FRANKE ALBRECHT DUBOIS DURAND LEROY MOREAU SIMON LAURENT \
    LEFEBVRE MICHEL DAVID BERTRAND ROUX VINCENT FOURNIER MOREL GIRARD ANDRE MERCIER DUPONT \
    LAMBERT BONNET FRANCOIS ROSSI RUSSO FERRARI ESPOSITO BIANCHI ROMANO COLOMBO RICCI \
    MARINO GRECO BRUNO GALLO CONTI DELUCA COSTA GIORDANO MANCINI RIZZO LOMBARDI MORETTI \
    NOWAK KOWALSKI WISNIEWSKI WOJCIK KOWALCZYK KAMINSKI LEWANDOWSKI ZIELINSKI SZYMANSKI \
    WOZNIAK DABROWSKI KOZLOWSKI JANKOWSKI MAZUR KWIATKOWSKI KRAWCZYK PIOTROWSKI GRABOWSKI \
    NOWAKOWSKI PAWLOWSKI JANSEN DEJONG DEVRIES VANDENBERG BAKKER VISSER SMIT MEIJER DEBOER \
    MULDER DEGROOT BOS VOS PETERSEN HANSEN NIELSEN JENSEN PEDERSEN ANDERSEN LARSEN \
    SORENSEN RASMUSSEN JOHANSSON KARLSSON NILSSON ERIKSSON LARSSON OLSSON PERSSON SVENSSON \
    GUSTAFSSON PETTERSSON SILVA SANTOS FERREIRA PEREIRA OLIVEIRA RODRIGUES MARTINS JESUS \
    SOUSA FERNANDES GONCALVES GOMES LOPES MARQUES ALVES";

fn surnames() -> &'static [&'static str] {
    static SURNAMES: std::sync::OnceLock<Vec<&str>> = std::sync::OnceLock::new();
    SURNAMES.get_or_init(|| SURNAMES_TEXT.split_whitespace().collect())
}
const MALE_NAMES: [&str; 12] = [
    "JAMES", "JOHN", "ROBERT", "MICHAEL", "WILLIAM", "DAVID", "THOMAS", "PETER", "PAUL", "MARK",
    "LUCAS", "JAN",
];
const FEMALE_NAMES: [&str; 12] = [
    "MARY",
    "PATRICIA",
    "JENNIFER",
    "LINDA",
    "ELIZABETH",
    "SUSAN",
    "SARAH",
    "ANNA",
    "MARIA",
    "EMMA",
    "SOFIA",
    "JULIA",
];
const OTHER_NAMES: [&str; 4] = ["ALEX", "SAM", "ROBIN", "KIM"];

/// The 5 modalities: (code, SOP Class UID, file size in bytes).
const CT: (&str, &str, u64) = ("CT", "1.2.840.10008.5.1.4.1.1.2", 526_000);
const MR: (&str, &str, u64) = ("MR", "1.2.840.10008.5.1.4.1.1.4", 132_000);
const CR: (&str, &str, u64) = ("CR", "1.2.840.10008.5.1.4.1.1.1", 8_400_000);
const US: (&str, &str, u64) = ("US", "1.2.840.10008.5.1.4.1.1.6.1", 920_000);
const PT: (&str, &str, u64) = ("PT", "1.2.840.10008.5.1.4.1.1.128", 66_000);
type Modality = (&'static str, &'static str, u64);

/// A synthetic patient: a pure function of its number.
struct Patient {
    id: String,
    name: String,
    birth_date: String,
    sex: &'static str,
}

fn patient(p: u64) -> Patient {
    let (sex, given): (&str, &[&str]) = match h(p, 10) % 100 {
        0..=48 => ("M", &MALE_NAMES),
        49..=97 => ("F", &FEMALE_NAMES),
        _ => ("O", &OTHER_NAMES),
    };
    let surname = surnames()[(h(p, 11) % surnames().len() as u64) as usize];
    let given = given[(h(p, 12) % given.len() as u64) as usize];
    // 48271 is prime to 10^9: distinct patients get distinct IDs.
    let id = format!("MRN{:09}", (p * 48_271 + 12_345) % 1_000_000_000);
    let birth_date = date_of(days_from_civil(1930, 1, 1) + (h(p, 13) % (90 * 365)) as i64);
    Patient {
        id,
        name: format!("{surname}^{given}"),
        birth_date,
        sex,
    }
}

/// A synthetic study: a pure function of its number.
struct Study {
    patient: u64,
    uid: String,
    date: String,
    time: String,
    accession: String,
    description: &'static str,
    /// The modality of each series.
    series: [Modality; SERIES_PER_STUDY as usize],
}

/// Studies come in pairs: study 2m belongs to patient m (a new patient);
/// study 2m+1 to the same patient half of the time, otherwise to a random
/// earlier one (a returning patient). About two studies per patient, a few
/// patients with many.
fn patient_of(j: u64) -> u64 {
    let m = j / 2;
    if j.is_multiple_of(2) || h(j, 1).is_multiple_of(2) {
        m
    } else {
        h(j, 2) % (m + 1)
    }
}

fn study(j: u64) -> Study {
    // 20 years of study dates, 2006-2025, times 07:00-19:59.
    let first = days_from_civil(2006, 1, 1);
    let span = days_from_civil(2026, 1, 1) - first;
    let date = date_of(first + (h(j, 3) % span as u64) as i64);
    let secs = 7 * 3600 + h(j, 4) % (13 * 3600);
    let time = format!("{:02}{:02}{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    // Modality mix, 10 % multi-modality studies (PET/CT, CT with a CR).
    let (series, descriptions): ([Modality; 4], &[&str]) = match h(j, 5) % 100 {
        0..=29 => (
            [CT; 4],
            &[
                "CT CHEST W/O CONTRAST",
                "CT ABDOMEN PELVIS",
                "CT HEAD",
                "CT ANGIO CHEST",
            ],
        ),
        30..=59 => (
            [MR; 4],
            &[
                "MR BRAIN W/O CONTRAST",
                "MR KNEE LEFT",
                "MR LUMBAR SPINE",
                "MR ABDOMEN",
            ],
        ),
        60..=74 => ([CR; 4], &["CR CHEST 2 VIEWS", "CR HAND RIGHT", "CR PELVIS"]),
        75..=89 => ([US; 4], &["US ABDOMEN", "US THYROID", "US CAROTIDS"]),
        90..=95 => ([CT, CT, PT, PT], &["PET-CT WHOLE BODY FDG", "PET-CT ONCO"]),
        _ => ([CR, CT, CT, CT], &["CT SPINE LUMBAR", "CT TRAUMA"]),
    };
    let description = descriptions[(h(j, 6) % descriptions.len() as u64) as usize];
    Study {
        patient: patient_of(j),
        uid: format!("{UID_ROOT}.1.{}", j + 1),
        date,
        time,
        // 2654435761 is prime to 10^10: distinct studies, distinct numbers.
        accession: format!("A{:010}", (j * 2_654_435_761 + 777) % 10_000_000_000),
        description,
        series,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYYMMDD` of a day number (inverse of [`days_from_civil`]).
fn date_of(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// The calendar month of a `YYYYMMDD` date as a DICOM range.
fn month_range(date: &str) -> String {
    let (y, m) = (&date[..4], &date[4..6]);
    let (yi, mi): (i64, i64) = (y.parse().unwrap_or(2000), m.parse().unwrap_or(1));
    let next = if mi == 12 {
        days_from_civil(yi + 1, 1, 1)
    } else {
        days_from_civil(yi, mi + 1, 1)
    };
    format!("{y}{m}01-{}", date_of(next - 1))
}

/// What the records of the synthetic studies need from the archive.
struct Target {
    partition: PartitionId,
    filesystem: FilesystemId,
    folder: FolderName,
}

/// The index records of study `j`.
fn study_records(j: u64, target: &Target, out: &mut Vec<InstanceRecord>) -> Result<()> {
    let st = study(j);
    let pa = patient(st.patient);
    let study_uid = Uid::parse(&st.uid)?;
    let location = StudyLocation {
        filesystem: target.filesystem,
        partition_folder: target.folder.clone(),
        date_folder: st.date.clone(),
        study_uid: study_uid.clone(),
    };
    let patient_attrs = PatientAttrs {
        patient_id: pa.id,
        issuer_of_patient_id: None,
        patient_name: Some(pa.name),
        birth_date: Some(pa.birth_date),
        sex: Some(pa.sex.to_string()),
    };
    let study_attrs = StudyAttrs {
        study_uid,
        study_date: Some(st.date.clone()),
        study_time: Some(st.time.clone()),
        accession_number: Some(st.accession.clone()),
        study_id: Some(format!("{}", j % 100_000 + 1)),
        study_description: Some(st.description.to_string()),
        referring_physician_name: Some(format!(
            "{}^{}",
            surnames()[(h(j, 7) % surnames().len() as u64) as usize],
            MALE_NAMES[(h(j, 8) % 12) as usize]
        )),
        specific_character_set: Some("ISO_IR 100".to_string()),
    };
    let transfer_syntax = Uid::parse(EXPLICIT_VR_LE)?;
    for (s, (modality, sop_class, size)) in st.series.iter().enumerate() {
        let s = s as u64;
        let series_attrs = SeriesAttrs {
            series_uid: Uid::parse(&format!("{UID_ROOT}.2.{}.{}", j + 1, s + 1))?,
            modality: Some(modality.to_string()),
            series_number: Some(s as i32 + 1),
            series_description: Some(format!("{modality} SERIES {}", s + 1)),
            body_part_examined: None,
            series_date: Some(st.date.clone()),
            series_time: Some(st.time.clone()),
        };
        let sop_class = Uid::parse(sop_class)?;
        for k in 0..INSTANCES_PER_SERIES {
            let item = (j * SERIES_PER_STUDY + s) * INSTANCES_PER_SERIES + k;
            out.push(InstanceRecord {
                partition: target.partition,
                location: location.clone(),
                patient: patient_attrs.clone(),
                study: study_attrs.clone(),
                series: series_attrs.clone(),
                instance: InstanceAttrs {
                    sop_instance_uid: Uid::parse(&format!(
                        "{UID_ROOT}.3.{}.{}.{}",
                        j + 1,
                        s + 1,
                        k + 1
                    ))?,
                    sop_class_uid: sop_class.clone(),
                    instance_number: Some(k as i32 + 1),
                    transfer_syntax_uid: transfer_syntax.clone(),
                    file_size: size + h(item, 9) % 4096,
                    digest: format!(
                        "{:016x}{:016x}{:016x}{:016x}",
                        h(item, 20),
                        h(item, 21),
                        h(item, 22),
                        h(item, 23)
                    ),
                    source_ae: Some(format!("{modality}SCANNER01")),
                },
                deletions_seen: None,
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- queries

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    PatientId,
    Accession,
    DateMonth,
    NamePrefix,
    ModalityMonth,
}

const SHAPES: [Shape; 5] = [
    Shape::PatientId,
    Shape::Accession,
    Shape::DateMonth,
    Shape::NamePrefix,
    Shape::ModalityMonth,
];

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::PatientId => "patient_id",
            Shape::Accession => "accession",
            Shape::DateMonth => "date_month",
            Shape::NamePrefix => "name_prefix",
            Shape::ModalityMonth => "modality_month",
        }
    }
}

/// The attributes of one study that query parameters are drawn from.
#[derive(Debug, Clone)]
struct StudyKeys {
    patient_id: String,
    patient_name: String,
    date: String,
    accession: String,
    modalities: Vec<String>,
}

/// The keys of synthetic study `j`.
fn synthetic_keys(j: u64) -> StudyKeys {
    let st = study(j);
    let pa = patient(st.patient);
    let mut modalities: Vec<String> = st.series.iter().map(|m| m.0.to_string()).collect();
    modalities.sort_unstable();
    modalities.dedup();
    StudyKeys {
        patient_id: pa.id,
        patient_name: pa.name,
        date: st.date,
        accession: st.accession,
        modalities,
    }
}

/// Where query parameters come from, and how many studies each query
/// must match.
struct Source {
    studies: Studies,
    expected: Expected,
}

enum Studies {
    /// The first `n` synthetic studies.
    Synthetic(u64),
    /// The studies of a corpus manifest.
    Manifest(Vec<StudyKeys>),
}

impl Source {
    /// The first `n` synthetic studies.
    fn synthetic(n: u64) -> Source {
        Source {
            expected: Expected::of((0..n).map(synthetic_keys)),
            studies: Studies::Synthetic(n),
        }
    }

    /// The studies of a corpus manifest.
    fn manifest(studies: Vec<StudyKeys>) -> Source {
        Source {
            expected: Expected::of(studies.iter().cloned()),
            studies: Studies::Manifest(studies),
        }
    }

    fn random_study(&self, rng: &mut Rng) -> StudyKeys {
        match &self.studies {
            Studies::Synthetic(n) => synthetic_keys(rng.below(*n)),
            Studies::Manifest(studies) => studies[rng.below(studies.len() as u64) as usize].clone(),
        }
    }
}

/// How many studies match each query parameter, counted from the data the
/// parameters are drawn from (the generator or the manifest), so that every
/// answer is checked: a peer answering nothing, or too much, fails the run
/// instead of looking fast.
#[derive(Default)]
struct Expected {
    patient_id: HashMap<String, u64>,
    accession: HashMap<String, u64>,
    /// `YYYYMM`.
    month: HashMap<String, u64>,
    /// The first three characters of PatientName, upper case (person names
    /// match case-insensitively).
    name_prefix: HashMap<String, u64>,
    /// (modality, `YYYYMM`), each modality of a study once.
    modality_month: HashMap<(String, String), u64>,
}

impl Expected {
    fn of(studies: impl Iterator<Item = StudyKeys>) -> Expected {
        let mut expected = Expected::default();
        for keys in studies {
            let month = keys.date.get(..6).unwrap_or_default().to_string();
            *expected.patient_id.entry(keys.patient_id).or_default() += 1;
            *expected.accession.entry(keys.accession).or_default() += 1;
            *expected.month.entry(month.clone()).or_default() += 1;
            let prefix: String = keys.patient_name.to_uppercase().chars().take(3).collect();
            *expected.name_prefix.entry(prefix).or_default() += 1;
            let mut modalities = keys.modalities;
            modalities.sort_unstable();
            modalities.dedup();
            for modality in modalities {
                *expected
                    .modality_month
                    .entry((modality, month.clone()))
                    .or_default() += 1;
            }
        }
        expected
    }

    /// The studies a query with these matching keys must return.
    fn count(&self, shape: Shape, matching: &[(Tag, String)]) -> u64 {
        let value = |tag: Tag| {
            matching
                .iter()
                .find(|(t, _)| *t == tag)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let month = || value(STUDY_DATE).get(..6).unwrap_or_default().to_string();
        let get = |map: &HashMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
        match shape {
            Shape::PatientId => get(&self.patient_id, value(PATIENT_ID)),
            Shape::Accession => get(&self.accession, value(ACCESSION_NUMBER)),
            Shape::DateMonth => get(&self.month, &month()),
            Shape::NamePrefix => {
                let prefix = value(PATIENT_NAME).trim_end_matches('*').to_uppercase();
                if prefix.chars().count() >= 3 {
                    get(&self.name_prefix, &prefix)
                } else {
                    // A name shorter than three characters: every name
                    // that starts with it.
                    self.name_prefix
                        .iter()
                        .filter(|(key, _)| key.starts_with(&prefix))
                        .map(|(_, n)| n)
                        .sum()
                }
            }
            Shape::ModalityMonth => self
                .modality_month
                .get(&(value(MODALITIES_IN_STUDY).to_string(), month()))
                .copied()
                .unwrap_or(0),
        }
    }
}

/// The matching keys of a query of `shape` on a random study.
fn matching_keys(shape: Shape, keys: &StudyKeys, rng: &mut Rng) -> Vec<(Tag, String)> {
    match shape {
        Shape::PatientId => vec![(PATIENT_ID, keys.patient_id.clone())],
        Shape::Accession => vec![(ACCESSION_NUMBER, keys.accession.clone())],
        Shape::DateMonth => vec![(STUDY_DATE, month_range(&keys.date))],
        Shape::NamePrefix => {
            let prefix: String = keys.patient_name.chars().take(3).collect();
            vec![(PATIENT_NAME, format!("{prefix}*"))]
        }
        Shape::ModalityMonth => {
            let modality = &keys.modalities[rng.below(keys.modalities.len() as u64) as usize];
            vec![
                (MODALITIES_IN_STUDY, modality.clone()),
                (STUDY_DATE, month_range(&keys.date)),
            ]
        }
    }
}

/// A study-level identifier in Implicit VR Little Endian: the return keys
/// (empty), QueryRetrieveLevel and the matching keys, in tag order.
fn identifier(matching: &[(Tag, String)]) -> Vec<u8> {
    let mut elements: BTreeMap<Tag, String> =
        RETURN_KEYS.iter().map(|t| (*t, String::new())).collect();
    elements.insert(QUERY_RETRIEVE_LEVEL, "STUDY".to_string());
    for (tag, value) in matching {
        elements.insert(*tag, value.clone());
    }
    let mut out = Vec::with_capacity(256);
    for ((group, element), value) in elements {
        let mut bytes = value.into_bytes();
        if bytes.len() % 2 == 1 {
            bytes.push(if (group, element) == STUDY_INSTANCE_UID {
                0
            } else {
                b' '
            });
        }
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

// ----------------------------------------------------------------- client

/// What one C-FIND returned.
#[derive(Debug, Clone, Copy)]
struct FindOutcome {
    status: u16,
    matches: u64,
    /// Matches whose identifier lacked a StudyInstanceUID.
    malformed: u64,
}

/// A C-FIND SCU on one association: dicom-ul negotiates, our codec talks.
struct FindScu {
    socket: TcpStream,
    pc_id: u8,
    peer_max_pdu: u32,
    reader: PduReader,
    scratch: Vec<u8>,
    next_message_id: u16,
    timeout: Duration,
}

impl FindScu {
    fn connect(address: &str, called_ae: &str, timeout: Duration) -> Result<FindScu> {
        let max_pdu = 64 * 1024;
        let mut association = ClientAssociationOptions::new()
            .calling_ae_title(CALLING_AE)
            .called_ae_title(called_ae.to_string())
            .max_pdu_length(max_pdu)
            .with_presentation_context(STUDY_ROOT_FIND, vec![IMPLICIT_VR_LE])
            .connection_timeout(timeout)
            .read_timeout(timeout)
            .write_timeout(timeout)
            .establish(address)
            .map_err(|e| format!("association with {called_ae}@{address}: {e}"))?;
        let pc_id = association
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.transfer_syntax.trim_end_matches('\0') == IMPLICIT_VR_LE
            })
            .map(|pc| pc.id)
            .ok_or_else(|| format!("{called_ae}@{address} refused Study Root FIND"))?;
        let peer_max_pdu = association.acceptor_max_pdu_length();
        let socket = association.inner_stream().try_clone()?;
        drop(association);
        socket.set_nodelay(true)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.set_write_timeout(Some(timeout))?;
        Ok(FindScu {
            socket,
            pc_id,
            peer_max_pdu,
            reader: PduReader::new(max_pdu),
            scratch: Vec::new(),
            next_message_id: 1,
            timeout,
        })
    }

    /// Sends a C-FIND-RQ and reads every response up to the final one.
    fn find(&mut self, identifier: &[u8]) -> Result<FindOutcome> {
        let message_id = self.next_message_id;
        self.next_message_id = self.next_message_id.checked_add(1).unwrap_or(1);
        let deadline = Instant::now() + self.timeout;
        let command = Command::find_rq(message_id, STUDY_ROOT_FIND, Priority::Medium).encode();
        pdu::write_pdata(
            &mut self.socket,
            &mut self.scratch,
            self.pc_id,
            true,
            &command,
            self.peer_max_pdu,
        )?;
        pdu::write_pdata(
            &mut self.socket,
            &mut self.scratch,
            self.pc_id,
            false,
            identifier,
            self.peer_max_pdu,
        )?;
        let mut command_bytes = Vec::new();
        let mut data = Vec::new();
        let mut outcome = FindOutcome {
            status: 0,
            matches: 0,
            malformed: 0,
        };
        loop {
            if Instant::now() > deadline {
                return Err(format!("no final response within {:?}", self.timeout).into());
            }
            let body = match self.reader.read(&mut self.socket)? {
                Incoming::PData(body) => body,
                Incoming::Other(Pdu::AbortRQ { source }) => {
                    return Err(format!("aborted by the peer: {source:?}").into())
                }
                Incoming::Other(other) => return Err(format!("unexpected {other:?}").into()),
            };
            for pdv in body.pdvs() {
                let pdv = pdv?;
                if !pdv.is_command {
                    data.extend_from_slice(pdv.data);
                    if pdv.is_last {
                        outcome.matches += 1;
                        if !has_value(&data, STUDY_INSTANCE_UID) {
                            outcome.malformed += 1;
                        }
                        data.clear();
                    }
                    continue;
                }
                command_bytes.extend_from_slice(pdv.data);
                if !pdv.is_last {
                    continue;
                }
                let response = Command::decode(&command_bytes)?;
                command_bytes.clear();
                if response.field != CommandField::CFindRsp
                    || response.message_id_being_responded_to != Some(message_id)
                {
                    return Err(format!("unexpected response {response:?}").into());
                }
                let status = response.status.ok_or("response without a status")?;
                if status.is_final() {
                    outcome.status = status.0;
                    return Ok(outcome);
                }
            }
        }
    }

    fn release(mut self) {
        if pdu::write_pdu(&mut self.socket, &Pdu::ReleaseRQ).is_ok() {
            for _ in 0..16 {
                match self.reader.read(&mut self.socket) {
                    Ok(Incoming::Other(Pdu::ReleaseRP)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// Whether an Implicit VR LE data set has a non-empty value for `tag`.
fn has_value(mut data: &[u8], tag: Tag) -> bool {
    while data.len() >= 8 {
        let group = u16::from_le_bytes([data[0], data[1]]);
        let element = u16::from_le_bytes([data[2], data[3]]);
        let len = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        if len == u32::MAX {
            return false; // a sequence of undefined length: not ours to walk
        }
        let len = len as usize;
        if data.len() < 8 + len {
            return false;
        }
        if (group, element) == tag {
            return data[8..8 + len].iter().any(|b| !matches!(b, 0 | b' '));
        }
        data = &data[8 + len..];
    }
    false
}

/// The same queries straight to the index (`QueryStore::find`, no DICOM):
/// what the association adds is the difference.
struct DirectIndex {
    query: Arc<dyn QueryStore>,
    partition: PartitionId,
}

impl DirectIndex {
    /// The query the SCP builds from [`identifier`] (same keys, same
    /// matchers, the default result cap + 1).
    fn find(&self, matching: &[(Tag, String)]) -> Result<FindOutcome> {
        let mut tags: Vec<Tag> = RETURN_KEYS.to_vec();
        tags.sort_unstable();
        let keys = tags
            .into_iter()
            .map(|tag| {
                let attribute = Attribute::from_tag(tag).ok_or("unknown tag")?;
                let value = matching
                    .iter()
                    .find(|(t, _)| *t == tag)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let matcher = match value {
                    v if v.is_empty() => Matcher::Universal,
                    v if v.contains(['*', '?']) => Matcher::Wildcard(v),
                    v if attribute.kind() == Kind::Date && v.contains('-') => {
                        let (from, to) = v.split_once('-').unwrap_or_default();
                        let bound = |b: &str| (!b.is_empty()).then(|| b.to_string());
                        Matcher::Range {
                            from: bound(from),
                            to: bound(to),
                        }
                    }
                    v => Matcher::Single(v),
                };
                Ok(Key { attribute, matcher })
            })
            .collect::<Result<Vec<Key>>>()?;
        let query = Query {
            partition: self.partition,
            root: Root::Study,
            level: Level::Study,
            keys,
            pn_case_insensitive: true,
            limit: Some(10_001),
            offset: 0,
        };
        let mut outcome = FindOutcome {
            status: 0,
            matches: 0,
            malformed: 0,
        };
        self.query.find(&query, &mut |found| {
            outcome.matches += 1;
            if found.get(Attribute::StudyInstanceUid).is_none() {
                outcome.malformed += 1;
            }
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(outcome)
    }
}

/// Something that answers the benchmark's queries.
enum Client {
    Association(FindScu),
    Index(DirectIndex),
}

impl Client {
    fn find(&mut self, matching: &[(Tag, String)], identifier: &[u8]) -> Result<FindOutcome> {
        match self {
            Client::Association(scu) => scu.find(identifier),
            Client::Index(index) => index.find(matching),
        }
    }

    fn close(self) {
        if let Client::Association(scu) = self {
            scu.release();
        }
    }
}

// ------------------------------------------------------------ measurement

#[derive(Debug, Default, Clone)]
struct Samples {
    times: Vec<Duration>,
    matches: u64,
    failures: u64,
    malformed: u64,
    last_error: Option<String>,
    /// Answers (warm-up included) whose match count differs from what the
    /// data holds.
    wrong: u64,
    last_wrong: Option<String>,
}

impl Samples {
    fn record(&mut self, elapsed: Duration, result: &Result<FindOutcome>) {
        match result {
            Ok(outcome) if outcome.status == 0 => {
                self.times.push(elapsed);
                self.matches += outcome.matches;
                self.malformed += outcome.malformed;
            }
            Ok(outcome) => {
                self.failures += 1;
                self.last_error = Some(format!(
                    "final status {:#06X} after {} matches",
                    outcome.status, outcome.matches
                ));
            }
            Err(error) => {
                self.failures += 1;
                self.last_error = Some(error.to_string());
            }
        }
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.times.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        ms(sorted[rank - 1])
    }

    fn mean_matches(&self) -> f64 {
        self.matches as f64 / self.times.len().max(1) as f64
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs warm-up then recorded queries of every shape, interleaved, against
/// every client (each query goes to all, the order alternating); stops at
/// `deadline`. A failed association is not retried: its client is dropped.
fn measure(
    clients: &mut [Option<Client>],
    source: &Source,
    options: &Options,
    deadline: Instant,
) -> Vec<BTreeMap<Shape, Samples>> {
    let mut rng = Rng(options.seed.wrapping_mul(0x5851_F42D_4C95_7F2D));
    let mut results = vec![BTreeMap::<Shape, Samples>::new(); clients.len()];
    let rounds = options.warmup + options.queries;
    'rounds: for round in 0..rounds {
        for &shape in &options.shapes {
            if Instant::now() > deadline {
                eprintln!("  deadline reached after {round} rounds");
                break 'rounds;
            }
            let keys = source.random_study(&mut rng);
            let matching = matching_keys(shape, &keys, &mut rng);
            let request = identifier(&matching);
            let expected = source.expected.count(shape, &matching);
            let n = clients.len();
            for i in 0..n {
                let c = if round % 2 == 0 { i } else { n - 1 - i };
                let Some(client) = clients[c].as_mut() else {
                    continue;
                };
                let started = Instant::now();
                let result = client.find(&matching, &request);
                let elapsed = started.elapsed();
                if let Ok(outcome) = &result {
                    if outcome.status == 0 && outcome.matches != expected {
                        let samples = results[c].entry(shape).or_default();
                        samples.wrong += 1;
                        samples.last_wrong = Some(format!(
                            "{matching:?}: {} matches, the data holds {expected}",
                            outcome.matches
                        ));
                    }
                }
                if round >= options.warmup {
                    results[c]
                        .entry(shape)
                        .or_default()
                        .record(elapsed, &result);
                }
                if let Err(error) = &result {
                    eprintln!("  client {c}: {shape:?} {matching:?}: {error}; association dropped");
                    clients[c] = None;
                }
            }
        }
    }
    results
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

const HEADER: &str =
    "shape            n   p50_ms   p90_ms   p99_ms   max_ms  mean_ms  mean_matches  fail  wrong";

fn row(shape: Shape, s: &Samples) -> String {
    let mean = if s.times.is_empty() {
        f64::NAN
    } else {
        s.times.iter().map(|t| ms(*t)).sum::<f64>() / s.times.len() as f64
    };
    format!(
        "{:<14} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>13.1} {:>5} {:>6}",
        shape.label(),
        s.times.len(),
        s.percentile(0.50),
        s.percentile(0.90),
        s.percentile(0.99),
        s.percentile(1.0),
        mean,
        s.mean_matches(),
        s.failures,
        s.wrong
    )
}

fn report_errors(results: &BTreeMap<Shape, Samples>) -> u64 {
    let mut bad = 0;
    for (shape, s) in results {
        if let Some(error) = &s.last_error {
            eprintln!("  {}: {} failed, last: {error}", shape.label(), s.failures);
        }
        if s.malformed > 0 {
            eprintln!(
                "  {}: {} matches without StudyInstanceUID",
                shape.label(),
                s.malformed
            );
        }
        if let Some(wrong) = &s.last_wrong {
            eprintln!(
                "  {}: {} answers with a wrong match count, last: {wrong}",
                shape.label(),
                s.wrong
            );
        }
        bad += s.failures + s.malformed + s.wrong;
    }
    bad
}

// ------------------------------------------------------------- index mode

fn settings_for(dir: &Path, db: &Path) -> Result<imageserver_core::config::Settings> {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        db: Some(format!("sqlite:{}", db.display())),
        ..Config::default()
    };
    config.dicom.ae_title = SERVER_AE.to_string();
    config.dicom.bind = "127.0.0.1".to_string();
    config.dicom.port = 0;
    // The benchmark's client is an unknown caller: let it query.
    config.dicom.unknown_devices_query_retrieve = true;
    Ok(config.validate()?)
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn file_size(path: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    [path, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn index_mode(options: &Options) -> Result<()> {
    let started = Instant::now();
    let time_limit = started + options.time_limit;
    let base = std::env::var_os("BENCH_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("imageserver-find-bench-")
        .tempdir_in(&base)?;
    let dir = tmp.path().to_path_buf();
    let db = options.db.clone().unwrap_or_else(|| dir.join("index.db"));
    let mut settings = settings_for(&dir, &db)?;
    if let Some(url) = &options.pg {
        settings.db_url = url.clone();
    }
    println!(
        "C-FIND bench: milestones {} instances, {} queries/shape (+{} warm-up), db {}",
        options
            .milestones
            .iter()
            .map(|m| human(*m))
            .collect::<Vec<_>>()
            .join(", "),
        options.queries,
        options.warmup,
        db.display()
    );
    println!("load average at start: {}", load_average());

    // Register the partition and filesystem once, for their keys.
    let (target, mut studies) = {
        let archive = ServerBuilder::new(settings.clone()).open()?;
        let partition = archive.default_partition();
        let filesystem = archive.index().filesystems()?[0].id;
        let counts = archive.index().counts(partition.partition.id)?;
        (
            Target {
                partition: partition.partition.id,
                filesystem,
                folder: partition.partition.folder.clone(),
            },
            counts.studies,
        )
    };
    if studies > 0 {
        println!("resuming: the index holds {studies} studies");
    }

    let mut tables = Vec::new();
    let mut total_bad = 0;
    for &milestone in &options.milestones {
        let want = milestone / INSTANCES_PER_STUDY;
        // Insert up to the milestone through a bare index.
        if studies < want {
            let index = imageserver_core::server::open_index(&settings.db_url)?;
            let from = studies;
            let t0 = Instant::now();
            let mut batch =
                Vec::with_capacity((options.batch_studies * INSTANCES_PER_STUDY) as usize);
            let mut last_report = Instant::now();
            while studies < want {
                if Instant::now() > time_limit {
                    break;
                }
                batch.clear();
                let end = (studies + options.batch_studies).min(want);
                for j in studies..end {
                    study_records(j, &target, &mut batch)?;
                }
                index.insert_instances(&batch)?;
                studies = end;
                if last_report.elapsed() > Duration::from_secs(30) {
                    last_report = Instant::now();
                    let rate = ((studies - from) * INSTANCES_PER_STUDY) as f64
                        / t0.elapsed().as_secs_f64();
                    eprintln!(
                        "  inserted {} instances, {rate:.0}/s, load {}",
                        studies * INSTANCES_PER_STUDY,
                        load_average()
                    );
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            let inserted = (studies - from) * INSTANCES_PER_STUDY;
            println!(
                "\ninserted {} instances ({} studies) in {secs:.1} s: {:.0} instances/s; load {}",
                inserted,
                studies - from,
                inserted as f64 / secs,
                load_average()
            );
            if studies < want {
                println!(
                    "time limit reached at {} instances: milestone {} and later skipped",
                    studies * INSTANCES_PER_STUDY,
                    human(milestone)
                );
                break;
            }
        }
        // Open the archive on the index as a restart would and serve it.
        let t0 = Instant::now();
        let archive = ServerBuilder::new(settings.clone()).open()?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let server = Server::start_on(archive, vec![listener])?;
        let address = server.local_addr().to_string();
        let open_ms = ms(t0.elapsed());
        println!(
            "\n== milestone {} instances: {} studies, db {} ({:.2} GB if SQLite), archive open + start {open_ms:.0} ms",
            human(milestone),
            studies,
            if options.pg.is_some() { "PostgreSQL" } else { "SQLite" },
            file_size(&db) as f64 / 1e9
        );
        let load_before = load_average();
        let direct = DirectIndex {
            query: server.archive().index().clone(),
            partition: target.partition,
        };
        let scu = FindScu::connect(&address, SERVER_AE, options.query_timeout)?;
        let mut clients = vec![Some(Client::Association(scu)), Some(Client::Index(direct))];
        let deadline = (Instant::now() + options.measure_for).min(time_limit.max(Instant::now()));
        let results = measure(&mut clients, &Source::synthetic(studies), options, deadline);
        for client in clients.into_iter().flatten() {
            client.close();
        }
        server.shutdown(Duration::from_secs(2));
        let load_after = load_average();
        println!("load average before/after: {load_before} / {load_after}");
        let mut table = String::new();
        for (via, results) in ["assoc", "index"].iter().zip(&results) {
            println!(
                "{via}: {}",
                if *via == "assoc" {
                    "C-FIND through the association (request sent -> final response read)"
                } else {
                    "the same queries through QueryStore::find alone (no DICOM, no socket)"
                }
            );
            println!("via   {HEADER}");
            for (shape, s) in results {
                let line = row(*shape, s);
                println!("{via} {line}");
                let _ = writeln!(table, "{:<9} {via} {line}", human(milestone));
            }
            total_bad += report_errors(results);
        }
        if options.smoke {
            smoke_checks(&results[0])?;
            smoke_checks(&results[1])?;
        }
        tables.push(table);
    }
    println!("\n== summary (load average now {})", load_average());
    println!("milestone via   {HEADER}");
    for table in &tables {
        print!("{table}");
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    if options.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    if total_bad > 0 {
        return Err(format!("{total_bad} failed, malformed or wrong queries").into());
    }
    Ok(())
}

/// The sanity checks of the smoke run.
fn smoke_checks(results: &BTreeMap<Shape, Samples>) -> Result<()> {
    for shape in SHAPES {
        let s = results.get(&shape).ok_or(format!("no {shape:?} queries"))?;
        if s.times.is_empty() || s.failures > 0 {
            return Err(format!("{shape:?}: {:?}", s.last_error).into());
        }
        // Every parameter is drawn from a stored study.
        if s.matches < s.times.len() as u64 {
            return Err(format!("{shape:?}: a query found nothing").into());
        }
    }
    let accession = &results[&Shape::Accession];
    if accession.matches != accession.times.len() as u64 {
        return Err("an accession number matched more than one study".into());
    }
    Ok(())
}

// ------------------------------------------------------------ remote mode

/// The studies of a `gen_corpus.py` manifest.
fn read_manifest(path: &Path) -> Result<Vec<StudyKeys>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the manifest {}: {e}", path.display()))?;
    let manifest: serde_json::Value = serde_json::from_str(&text)?;
    let field = |study: &serde_json::Value, name: &str| -> Result<String> {
        Ok(study
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("manifest study without {name}"))?
            .to_string())
    };
    let studies = manifest
        .get("studies")
        .and_then(|s| s.as_array())
        .ok_or("manifest without studies")?;
    studies
        .iter()
        .map(|s| {
            Ok(StudyKeys {
                patient_id: field(s, "patient_id")?,
                patient_name: field(s, "patient_name")?,
                date: field(s, "date")?,
                accession: field(s, "accession")?,
                modalities: vec![field(s, "modality")?],
            })
        })
        .collect()
}

fn remote_mode(options: &Options) -> Result<()> {
    let manifest = options
        .manifest
        .as_deref()
        .ok_or("--manifest is required")?;
    let studies = read_manifest(manifest)?;
    if studies.is_empty() {
        return Err("the manifest lists no studies".into());
    }
    let n_studies = studies.len() as u64;
    let source = Source::manifest(studies);
    println!(
        "C-FIND bench, remote: {} peers, corpus {} ({} studies), {} queries/shape (+{} warm-up)",
        options.peers.len(),
        manifest.display(),
        n_studies,
        options.queries,
        options.warmup
    );
    let mut clients = Vec::new();
    for peer in &options.peers {
        let mut client = FindScu::connect(&peer.address, &peer.ae_title, options.query_timeout)?;
        // Everything loaded? One universal study query, not timed.
        let all = client.find(&identifier(&[]))?;
        println!(
            "{}: {}@{} holds {} studies (status {:#06X})",
            peer.name, peer.ae_title, peer.address, all.matches, all.status
        );
        if all.status != 0 || all.matches != n_studies {
            return Err(format!(
                "{} answers {} studies (status {:#06X}), the manifest lists {n_studies}: \
                 not loaded as the manifest says",
                peer.name, all.matches, all.status
            )
            .into());
        }
        clients.push(Some(Client::Association(client)));
    }
    let load_before = load_average();
    let deadline = Instant::now() + options.measure_for.min(options.time_limit);
    let results = measure(&mut clients, &source, options, deadline);
    for client in clients.into_iter().flatten() {
        client.close();
    }
    println!(
        "load average before/after: {load_before} / {}",
        load_average()
    );
    let mut bad = 0;
    for (peer, results) in options.peers.iter().zip(&results) {
        println!("\n== {}", peer.name);
        println!("{HEADER}");
        for (shape, s) in results {
            println!("{}", row(*shape, s));
        }
        bad += report_errors(results);
    }
    if results.len() >= 2 {
        let (a, b) = (&options.peers[0].name, &options.peers[1].name);
        println!("\n== ratio {a} / {b} (how many times faster {b} is)");
        println!("shape          p50_{a}  p50_{b}  p50_ratio  p99_{a}  p99_{b}  p99_ratio");
        for shape in SHAPES {
            let (Some(x), Some(y)) = (results[0].get(&shape), results[1].get(&shape)) else {
                continue;
            };
            let (x50, y50, x99, y99) = (
                x.percentile(0.5),
                y.percentile(0.5),
                x.percentile(0.99),
                y.percentile(0.99),
            );
            println!(
                "{:<14} {x50:>8.2} {y50:>8.2} {:>9.1}x {x99:>8.2} {y99:>8.2} {:>9.1}x",
                shape.label(),
                x50 / y50,
                x99 / y99
            );
        }
    }
    if bad > 0 {
        return Err(format!("{bad} failed, malformed or wrong queries").into());
    }
    Ok(())
}
