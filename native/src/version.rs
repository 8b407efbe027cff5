//! The version bytes of `operators/versions.py` from a Debezium `source` block (Postgres and
//! SQL Server connectors); anything else is declined. A Postgres change is encoded only when its
//! `source.sequence` names the commit its transaction follows: snapshot rows and the first
//! transaction after a snapshot rank by the partition's snapshot point, which Python keeps.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::json::json_int;

const INT64_BIAS: i128 = 1 << 63;
/// `source.snapshot` of a snapshot row, as JSON (`formats/debezium/postgres.py` SNAPSHOT_ROWS).
const SNAPSHOT_ROWS: [&str; 5] = [
    "\"true\"",
    "\"first\"",
    "\"first_in_data_collection\"",
    "\"last_in_data_collection\"",
    "\"last\"",
];

#[derive(Deserialize)]
pub struct Source<'a> {
    #[serde(borrow, default)]
    connector: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    lsn: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sequence: Option<&'a RawValue>,
    #[serde(borrow, default)]
    snapshot: Option<&'a RawValue>,
    #[serde(borrow, default)]
    commit_lsn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    change_lsn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event_serial_no: Option<&'a RawValue>,
}

impl Source<'_> {
    /// None: not a source block this module encodes (Python decides, e.g. `bad_version`).
    pub fn version(&self) -> Option<Vec<u8>> {
        match self.connector.as_deref()? {
            "postgresql" => {
                if let Some(snapshot) = self.snapshot.map(RawValue::get) {
                    if snapshot.contains('\\') || SNAPSHOT_ROWS.contains(&snapshot) {
                        return None; // a snapshot row (or an escaped spelling Python reads)
                    }
                }
                let after = last_commit_lsn(self.sequence?.get())?;
                let lsn: u64 = self.lsn?.get().parse().ok()?;
                let mut version = Vec::with_capacity(17);
                version.push(0x01);
                version.extend_from_slice(&after.to_be_bytes());
                version.extend_from_slice(&lsn.to_be_bytes());
                Some(version)
            }
            "sqlserver" => {
                let mut version = vec![0x02];
                for lsn in [&self.commit_lsn, &self.change_lsn] {
                    match lsn {
                        None => version.push(0x00),
                        Some(text) => {
                            version.push(0x01);
                            version.extend_from_slice(&sqlserver_lsn(text)?);
                        }
                    }
                }
                match self.event_serial_no.map(RawValue::get) {
                    None | Some("null") => version.push(0x00),
                    Some(text) => {
                        let serial = json_int(text)?;
                        if serial >= INT64_BIAS {
                            return None;
                        }
                        version.push(0x01);
                        version.extend_from_slice(&((serial + INT64_BIAS) as u64).to_be_bytes());
                    }
                }
                Some(version)
            }
            _ => None,
        }
    }
}

/// `source.sequence` as Debezium writes it, the JSON string `"[\"<last commit>\",\"<lsn>\"]"`
/// → the last commit LSN; None for a null one, and for any other spelling (Python reads it).
fn last_commit_lsn(raw: &str) -> Option<u64> {
    let (last, lsn) = raw
        .strip_prefix("\"[")?
        .strip_suffix("]\"")?
        .split_once(',')?;
    if lsn != "null" {
        escaped_digits(lsn)?;
    }
    escaped_digits(last)?.parse().ok()
}

/// `\"123\"` (a JSON string inside a JSON string) → `123`.
fn escaped_digits(text: &str) -> Option<&str> {
    let digits = text.strip_prefix("\\\"")?.strip_suffix("\\\"")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// `00000027:00000758:0005` → its 10 bytes.
fn sqlserver_lsn(text: &str) -> Option<[u8; 10]> {
    let raw = text.as_bytes();
    if raw.len() != 22 || raw[8] != b':' || raw[17] != b':' {
        return None;
    }
    let mut digits = raw[..8].iter().chain(&raw[9..17]).chain(&raw[18..]);
    let mut lsn = [0u8; 10];
    for byte in lsn.iter_mut() {
        let high = (*digits.next()? as char).to_digit(16)?;
        let low = (*digits.next()? as char).to_digit(16)?;
        *byte = (high * 16 + low) as u8;
    }
    Some(lsn)
}
