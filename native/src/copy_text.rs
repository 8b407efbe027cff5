//! Postgres `COPY ... FROM STDIN` text rows, written the way psycopg writes the Python values
//! (`TextFormatter.write_row` with the text dumpers), and the key's JSON the way
//! `operators/keys.key_json` (orjson) writes it. Byte for byte, but for a float whose shortest
//! digits tie (Python rounds the last digit to even, Rust's formatter up; both read back as the
//! same number). The key's JSON is exact: it is part of the state key
//! (`tests/integration/test_native_copy.py` and `tests/unit/test_native_decode.py` compare).

use std::fmt::Write;

use crate::values::Val;

/// Appends one field; false if the value has no native text form: one for a Python converter,
/// text with a NUL, which psycopg refuses itself (so the writer's error stays the same), or a
/// float that is not finite (Python writes `nan`, `inf`; a cell value can be one).
pub fn write_field(out: &mut String, value: &Val) -> bool {
    match value {
        Val::Str(v) if v.contains('\0') => return false,
        Val::Float(v) if !v.is_finite() => return false,
        Val::Null => out.push_str("\\N"),
        Val::Int(v) => write!(out, "{v}").unwrap(),
        Val::Bool(v) => out.push(if *v { 't' } else { 'f' }),
        Val::Float(v) => python_float_repr(out, *v),
        Val::Str(v) => escape_copy(out, v),
        Val::Bytes(v) => write_bytea(out, v),
        Val::Date(d) => write!(out, "{:04}-{:02}-{:02}", d.year, d.month, d.day).unwrap(),
        Val::DateTime(d, t) => {
            write!(out, "{:04}-{:02}-{:02} ", d.year, d.month, d.day).unwrap();
            write_clock(out, t.hour, t.minute, t.second, t.micro);
        }
        Val::Time(t) => write_clock(out, t.hour, t.minute, t.second, t.micro),
        Val::Decimal { unscaled, scale } => python_decimal_str(out, *unscaled, *scale),
        Val::Deferred(_) => return false,
    }
    true
}

/// Appends a `bytea` field: hex input, its backslash escaped for COPY.
pub fn write_bytea(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\\\x");
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

/// A stage row: the columns' text (`fields`, each followed by a tab), the key's JSON and the
/// version, as the writer's `COPY` into its stage takes them.
pub fn write_stage_row(out: &mut String, fields: &str, key_json: &str, version: &[u8]) {
    out.push_str(fields);
    escape_copy(out, key_json);
    out.push('\t');
    write_bytea(out, version);
    out.push('\n');
}

/// COPY text escaping of one field's text, as psycopg does it. Runs of bytes that need no escape
/// are copied whole: most fields (numbers, JSON of cell versions) have none.
pub fn escape_copy(out: &mut String, text: &str) {
    let mut start = 0;
    for (i, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0b => "\\v",
            0x0c => "\\f",
            b'\r' => "\\r",
            _ => continue,
        };
        // an ASCII byte never falls inside a multi-byte character: the slices are whole chars
        out.push_str(&text[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&text[start..]);
}

/// The JSON array of a key whose values are integers or strings, as orjson writes it; None for
/// other key values (Python computes those).
pub fn key_json(key: &[Val]) -> Option<String> {
    let mut out = String::from("[");
    for (i, value) in key.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match value {
            Val::Int(v) => write!(out, "{v}").unwrap(),
            Val::Str(v) => json_string(&mut out, v),
            _ => return None,
        }
    }
    out.push(']');
    Some(out)
}

pub fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `str()` of a `datetime.time`: `HH:MM:SS`, with `.ffffff` when there are microseconds.
fn write_clock(out: &mut String, hour: u8, minute: u8, second: u8, micro: u32) {
    write!(out, "{hour:02}:{minute:02}:{second:02}").unwrap();
    if micro != 0 {
        write!(out, ".{micro:06}").unwrap();
    }
}

/// Python's `repr(float)`: the shortest digits that read back, fixed notation for decimal
/// exponents -4..15, else `d.ddde±XX`.
fn python_float_repr(out: &mut String, v: f64) {
    let shortest = format!("{v:e}"); // e.g. "-1.2345e-5": Rust's shortest round-trip digits
    let (mantissa, exponent) = shortest.split_once('e').expect("LowerExp has an exponent");
    let exponent: i32 = exponent.parse().expect("LowerExp exponent is an integer");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exponent) {
        if exponent < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exponent - 1) as usize));
            out.push_str(&digits);
        } else {
            let point = exponent as usize + 1;
            if digits.len() <= point {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', point - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        write!(
            out,
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.abs()
        )
        .unwrap();
    }
}

/// `str(Decimal(f"{unscaled}E{-scale}"))`: Python's to-scientific-string.
fn python_decimal_str(out: &mut String, unscaled: i128, scale: i64) {
    let coefficient = unscaled.unsigned_abs().to_string();
    let exponent = -scale;
    let left_digits = exponent + coefficient.len() as i64;
    let dot = if exponent <= 0 && left_digits > -6 {
        left_digits
    } else {
        1
    };
    if unscaled < 0 {
        out.push('-');
    }
    if dot <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-dot) as usize));
        out.push_str(&coefficient);
    } else if dot as usize >= coefficient.len() {
        out.push_str(&coefficient);
        out.extend(std::iter::repeat_n('0', dot as usize - coefficient.len()));
    } else {
        out.push_str(&coefficient[..dot as usize]);
        out.push('.');
        out.push_str(&coefficient[dot as usize..]);
    }
    if left_digits != dot {
        write!(out, "E{:+}", left_digits - dot).unwrap();
    }
}
