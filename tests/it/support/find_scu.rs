//! C-FIND clients for the find tests: DCMTK `findscu` (responses extracted
//! to files and read back with dicom-object) and the pynetdicom script
//! `tests/it/py/find_scu.py` (JSON on stdout), for what findscu cannot do
//! (C-CANCEL at a chosen point, raw statuses, non-ASCII requests).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_core::Tag;
use dicom_object::InMemDicomObject;

use super::dcmtk::{self, ToolOutput, CALLING_AE};

/// Full path of DCMTK's findscu (see [`dcmtk::ECHOSCU`]).
pub const FINDSCU: &str = "/usr/bin/findscu";
/// The pynetdicom client script.
pub const PY_FIND_SCU: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/py/find_scu.py");

/// How long one client run may take before the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The query/retrieve information model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Patient Root (`findscu -P`).
    Patient,
    /// Study Root (`findscu -S`).
    Study,
}

impl Model {
    fn findscu_flag(self) -> &'static str {
        match self {
            Model::Patient => "-P",
            Model::Study => "-S",
        }
    }

    fn py_name(self) -> &'static str {
        match self {
            Model::Patient => "patient",
            Model::Study => "study",
        }
    }
}

/// What a findscu run returned.
#[derive(Debug)]
pub struct FindOutput {
    /// The tool's exit and log.
    pub tool: ToolOutput,
    /// The pending responses' identifiers, in order.
    pub responses: Vec<InMemDicomObject>,
}

impl FindOutput {
    /// The final status findscu logged (`None` if it logged none).
    pub fn final_status(&self) -> Option<u16> {
        // `-d` prints the final response's command set, e.g.
        // "DIMSE Status                  : 0xa900: Error: ...".
        let text = self.tool.text();
        let final_part = text.rsplit("Received Final Find Response").next()?;
        if !text.contains("Received Final Find Response") {
            return None;
        }
        final_part.lines().find_map(|line| {
            let rest = line.split("DIMSE Status").nth(1)?;
            let hex = rest.split("0x").nth(1)?;
            u16::from_str_radix(hex.get(..4)?, 16).ok()
        })
    }

    /// Values of `tag` in every response (trimmed, `\`-joined; `None` when
    /// absent, `Some("")` when empty).
    pub fn column(&self, tag: Tag) -> Vec<Option<String>> {
        self.responses.iter().map(|r| value(r, tag)).collect()
    }
}

impl std::fmt::Display for FindOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} responses", self.responses.len())?;
        write!(f, "{}", self.tool)
    }
}

/// The value of `tag` in a data set: text values trimmed and joined with
/// `\`; `None` when absent, `Some("")` when zero-length.
pub fn value(object: &InMemDicomObject, tag: Tag) -> Option<String> {
    let element = object.element_opt(tag).ok().flatten()?;
    if element.items().is_some() {
        return Some(String::new());
    }
    Some(match element.value().to_multi_str() {
        Ok(values) => values
            .iter()
            .map(|v| v.trim_matches([' ', '\0']))
            .collect::<Vec<_>>()
            .join("\\"),
        Err(_) => String::new(),
    })
}

/// `findscu -d -X` with `-k` keys (`"gggg,eeee=value"` or `"Keyword=value"`),
/// responses extracted into a fresh folder under `work` and read back.
pub fn findscu(
    addr: SocketAddr,
    called_ae: &str,
    model: Model,
    keys: &[&str],
    extra_args: &[&str],
    work: &Path,
) -> FindOutput {
    let out = fresh_dir(work);
    let mut command = dcmtk::command(FINDSCU);
    command
        .args([
            "-d",
            model.findscu_flag(),
            "-aet",
            CALLING_AE,
            "-aec",
            called_ae,
        ])
        .args(["-to", "10", "-ta", "10", "-td", "60", "-X", "-od"])
        .arg(&out)
        .args(extra_args);
    for key in keys {
        command.args(["-k", key]);
    }
    command
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    let tool = dcmtk::run(command, CLIENT_TIMEOUT);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("list the findscu output")
        .map(|e| e.expect("read the findscu output").path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    let responses = files
        .iter()
        .map(|path| {
            dicom_object::open_file(path)
                .unwrap_or_else(|e| panic!("read {}: {e}\n{tool}", path.display()))
                .into_inner()
        })
        .collect();
    FindOutput { tool, responses }
}

fn fresh_dir(work: &Path) -> PathBuf {
    std::fs::create_dir_all(work).expect("create the work folder");
    let dir = tempfile::Builder::new()
        .prefix("find-")
        .tempdir_in(work)
        .expect("create a findscu output folder");
    dir.keep()
}

/// What the pynetdicom script returned.
#[derive(Debug, Clone, Default)]
pub struct PyOutput {
    /// Whether the association was accepted.
    pub associated: bool,
    /// Status of every response, in order (pendings then the final one).
    pub statuses: Vec<u16>,
    /// The final response's ErrorComment, if any.
    pub error_comment: Option<String>,
    /// The final response's OffendingElement values, if any.
    pub offending: Vec<u32>,
    /// Each pending identifier as keyword (or `gggg,eeee`) → value
    /// (`\`-joined, `""` when empty).
    pub responses: Vec<BTreeMap<String, String>>,
    /// The acceptor's SOP class extended negotiation answers: SOP class
    /// UID → the bytes in hex.
    pub extended_negotiation: BTreeMap<String, String>,
    /// Raw stdout and stderr, for messages.
    pub log: String,
}

impl PyOutput {
    /// The final status.
    pub fn final_status(&self) -> Option<u16> {
        self.statuses.last().copied()
    }

    /// The pending statuses.
    pub fn pending(&self) -> &[u16] {
        &self.statuses[..self.statuses.len().saturating_sub(1)]
    }

    /// Values of `keyword` in every response.
    pub fn column(&self, keyword: &str) -> Vec<Option<String>> {
        self.responses
            .iter()
            .map(|r| r.get(keyword).cloned())
            .collect()
    }
}

/// A request for the pynetdicom script.
#[derive(Debug, Clone)]
pub struct PyRequest<'a> {
    /// The information model.
    pub model: Model,
    /// Identifier elements: keyword (or `gggg,eeee`) → value; `\` separates
    /// values; values are written in `charset`.
    pub keys: &'a [(&'a str, &'a str)],
    /// Specific Character Set of the request, if any.
    pub charset: Option<&'a str>,
    /// Send a C-CANCEL after this many pending responses.
    pub cancel_after: Option<usize>,
    /// Transfer syntax to propose (default: Implicit VR Little Endian).
    pub transfer_syntax: Option<&'a str>,
    /// Ask for combined date-time matching by SOP class extended
    /// negotiation (PS3.4 C.5.1.1.1).
    pub combined_date_time: bool,
}

impl<'a> PyRequest<'a> {
    /// A request with the given keys, nothing else.
    pub fn new(model: Model, keys: &'a [(&'a str, &'a str)]) -> PyRequest<'a> {
        PyRequest {
            model,
            keys,
            charset: None,
            cancel_after: None,
            transfer_syntax: None,
            combined_date_time: false,
        }
    }
}

/// Runs the pynetdicom script and parses its JSON.
pub fn py_find(addr: SocketAddr, called_ae: &str, request: &PyRequest<'_>) -> PyOutput {
    let mut command = std::process::Command::new("python3");
    command
        .arg(PY_FIND_SCU)
        .args(["--host", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string()])
        .args(["--aet", CALLING_AE, "--aec", called_ae])
        .args(["--model", request.model.py_name()]);
    if let Some(charset) = request.charset {
        command.args(["--charset", charset]);
    }
    if let Some(n) = request.cancel_after {
        command.args(["--cancel-after", &n.to_string()]);
    }
    if let Some(ts) = request.transfer_syntax {
        command.args(["--transfer-syntax", ts]);
    }
    if request.combined_date_time {
        command.arg("--combined-datetime");
    }
    for (key, value) in request.keys {
        command.arg("--key").arg(format!("{key}={value}"));
    }
    command.stdin(std::process::Stdio::null());
    let tool = dcmtk::run(command, CLIENT_TIMEOUT);
    assert!(tool.success(), "{PY_FIND_SCU} failed:\n{tool}");
    parse_py_json(&tool.stdout, format!("{tool}"))
}

/// Parses the script's one-line JSON (a fixed shape, see the script).
fn parse_py_json(stdout: &str, log: String) -> PyOutput {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from {PY_FIND_SCU}:\n{log}"));
    let json = Json::parse(line).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{log}"));
    let field = |name: &str| json.get(name).unwrap_or(&Json::Null);
    let responses = field("responses")
        .array()
        .iter()
        .map(|r| match r {
            Json::Object(entries) => entries
                .iter()
                .map(|(k, v)| (k.clone(), v.string().unwrap_or_default().to_string()))
                .collect(),
            _ => BTreeMap::new(),
        })
        .collect();
    PyOutput {
        associated: matches!(field("associated"), Json::Bool(true)),
        statuses: field("statuses")
            .array()
            .iter()
            .filter_map(|s| s.number().map(|n| n as u16))
            .collect(),
        error_comment: field("error_comment").string().map(str::to_string),
        offending: field("offending")
            .array()
            .iter()
            .filter_map(|s| s.number().map(|n| n as u32))
            .collect(),
        responses,
        extended_negotiation: match field("extended_negotiation") {
            Json::Object(entries) => entries
                .iter()
                .map(|(k, v)| (k.clone(), v.string().unwrap_or_default().to_string()))
                .collect(),
            _ => BTreeMap::new(),
        },
        log,
    }
}

/// A minimal JSON value (the script's output only: objects, arrays,
/// strings, integers, booleans, null).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn array(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            _ => &[],
        }
    }

    fn string(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Json::Number(n) => Some(*n),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Json, String> {
        let mut parser = JsonParser {
            chars: text.chars().collect(),
            pos: 0,
        };
        let value = parser.value()?;
        parser.space();
        if parser.pos != parser.chars.len() {
            return Err(format!("trailing text at {}", parser.pos));
        }
        Ok(value)
    }
}

struct JsonParser {
    chars: Vec<char>,
    pos: usize,
}

impl JsonParser {
    fn space(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn next(&mut self) -> Result<char, String> {
        let c = *self.chars.get(self.pos).ok_or("unexpected end")?;
        self.pos += 1;
        Ok(c)
    }

    fn expect(&mut self, word: &str) -> Result<(), String> {
        for expected in word.chars() {
            if self.next()? != expected {
                return Err(format!("expected {word} at {}", self.pos));
            }
        }
        Ok(())
    }

    fn value(&mut self) -> Result<Json, String> {
        self.space();
        match self.chars.get(self.pos).copied().ok_or("unexpected end")? {
            'n' => self.expect("null").map(|()| Json::Null),
            't' => self.expect("true").map(|()| Json::Bool(true)),
            'f' => self.expect("false").map(|()| Json::Bool(false)),
            '"' => self.string().map(Json::String),
            '[' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.space();
                    if self.chars.get(self.pos) == Some(&']') {
                        self.pos += 1;
                        return Ok(Json::Array(items));
                    }
                    items.push(self.value()?);
                    self.space();
                    match self.next()? {
                        ',' => {}
                        ']' => return Ok(Json::Array(items)),
                        c => return Err(format!("unexpected {c:?} in an array")),
                    }
                }
            }
            '{' => {
                self.pos += 1;
                let mut entries = Vec::new();
                loop {
                    self.space();
                    if self.chars.get(self.pos) == Some(&'}') {
                        self.pos += 1;
                        return Ok(Json::Object(entries));
                    }
                    let key = self.string()?;
                    self.space();
                    if self.next()? != ':' {
                        return Err("expected ':'".into());
                    }
                    entries.push((key, self.value()?));
                    self.space();
                    match self.next()? {
                        ',' => {}
                        '}' => return Ok(Json::Object(entries)),
                        c => return Err(format!("unexpected {c:?} in an object")),
                    }
                }
            }
            _ => {
                let start = self.pos;
                while self
                    .chars
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_digit() || "+-.eE".contains(*c))
                {
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().collect();
                text.parse()
                    .map(Json::Number)
                    .map_err(|_| format!("bad number {text:?}"))
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.next()? != '"' {
            return Err("expected a string".into());
        }
        let mut out = String::new();
        loop {
            match self.next()? {
                '"' => return Ok(out),
                '\\' => match self.next()? {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    '/' => out.push('/'),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = (0..4).map(|_| self.next()).collect::<Result<_, _>>()?;
                        let code = u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                        out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                    }
                    c => return Err(format!("bad escape {c:?}")),
                },
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_subset() {
        let json =
            Json::parse(r#"{"a": [1, 2], "b": {"c": "x\"y\\z\u00fc"}, "d": null, "e": true}"#)
                .unwrap();
        assert_eq!(
            json.get("a").unwrap().array(),
            &[Json::Number(1.0), Json::Number(2.0)]
        );
        assert_eq!(
            json.get("b").unwrap().get("c").unwrap().string(),
            Some("x\"y\\zü")
        );
        assert_eq!(json.get("d"), Some(&Json::Null));
        assert_eq!(json.get("e"), Some(&Json::Bool(true)));
    }
}
