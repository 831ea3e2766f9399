//! Generators: tasks, args maps, JSON values and text, built from
//! [`Unstructured`] input, plus mutators of bytes and JSON.
//!
//! They aim at the edges a tenant can reach: odd Unicode (controls, NUL,
//! bidi overrides, non-characters, astral planes), huge strings, deep
//! nesting, many keys, numbers at the ends of their ranges, timestamps far
//! from now. Sizes are bounded by the caller, never by the input alone.

use arbitrary::{Result, Unstructured};
use chrono::{DateTime, Utc};
use corral::broker::Checkpoint;
use corral::task::{ArgsMap, Task, TaskError, TaskId, TaskState};
use serde_json::{Map, Number, Value};
use uuid::Uuid;

/// Pieces of awkward text, glued together by [`text`].
const PIECES: &[&str] = &[
    "a",
    "Hello, World",
    " ",
    "\0",
    "\u{1}",
    "\u{1b}[31m",
    "\n",
    "\r\n",
    "\t",
    "\u{7f}",
    "\u{85}",
    "\u{a0}",
    "\u{2028}",
    "\u{2029}",
    "\u{200b}",
    "\u{200d}",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "\u{fffe}",
    "\u{ffff}",
    "\u{d7ff}",
    "\u{e000}",
    "\u{10ffff}",
    "\u{1f600}",
    "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}",
    "e\u{301}\u{301}\u{301}",
    "日本語",
    "שלום",
    "\\",
    "\"",
    "\\u0000",
    "\\ud800",
    "{\"a\":",
    "]",
    "</script>",
    "%00",
    "${x}",
    "1e999",
    "-0",
    "null",
];

/// Text of at most `max` bytes: arbitrary UTF-8, awkward pieces glued
/// together, or (rarely) one piece repeated up to the bound.
pub fn text(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let mut out = String::new();
    match u.int_in_range(0u8..=9)? {
        0..=3 => {
            let s: &str = u.arbitrary()?;
            out.push_str(s);
        }
        4..=8 => {
            let n = u.int_in_range(0..=16)?;
            for _ in 0..n {
                out.push_str(u.choose(PIECES)?);
            }
        }
        _ => {
            let piece = u.choose(PIECES)?;
            let times = u.int_in_range(0..=max / piece.len().max(1))?;
            out = piece.repeat(times);
        }
    }
    let mut end = out.len().min(max);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    Ok(out)
}

/// A name no check refuses: text that is not blank and at most 64 bytes.
pub fn name(u: &mut Unstructured<'_>) -> Result<String> {
    let mut s = text(u, 64)?;
    if s.trim().is_empty() {
        s.insert(0, 'n');
    }
    Ok(s)
}

/// A JSON number at the ends of its ranges as often as in between.
fn number(u: &mut Unstructured<'_>) -> Result<Number> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => Number::from(u.arbitrary::<i64>()?),
        1 => Number::from(u.arbitrary::<u64>()?),
        2 => Number::from(*u.choose(&[i64::MIN, i64::MAX, -1, 0, 1 << 53, (1 << 53) + 1])?),
        3 => Number::from(u64::MAX),
        4..=5 => {
            // Any finite double, from its bits.
            let x = f64::from_bits(u.arbitrary()?);
            Number::from_f64(x).unwrap_or_else(|| Number::from(0))
        }
        _ => {
            let x = *u.choose(&[
                0.1,
                -0.0,
                1e308,
                -1e-308,
                5e-324,
                f64::MAX,
                f64::MIN_POSITIVE,
                f64::EPSILON,
                1.0 / 3.0,
                9007199254740993.0,
            ])?;
            Number::from_f64(x).unwrap_or_else(|| Number::from(0))
        }
    })
}

/// Limits on one generated JSON value.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Deepest nesting of arrays and objects.
    pub depth: usize,
    /// Most bytes in one string.
    pub string: usize,
}

impl Shape {
    /// Small values: what most args look like.
    pub const SMALL: Shape = Shape {
        depth: 6,
        string: 256,
    };
}

/// A JSON value within `shape`; `budget` counts nodes left across calls.
pub fn value(u: &mut Unstructured<'_>, shape: Shape, budget: &mut usize) -> Result<Value> {
    value_at(u, shape, budget, 0)
}

fn value_at(
    u: &mut Unstructured<'_>,
    shape: Shape,
    budget: &mut usize,
    depth: usize,
) -> Result<Value> {
    *budget = budget.saturating_sub(1);
    let nest = depth < shape.depth && *budget > 0;
    let kinds = if nest { 7 } else { 4 };
    Ok(match u.int_in_range(0..=kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Number(number(u)?),
        3 | 4 => Value::String(text(u, shape.string)?),
        5 | 6 => {
            let n = u.int_in_range(0..=8)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(value_at(u, shape, budget, depth + 1)?);
            }
            Value::Array(items)
        }
        _ => {
            let n = u.int_in_range(0..=8)?;
            let mut map = Map::new();
            for _ in 0..n {
                let key = text(u, 32)?;
                map.insert(key, value_at(u, shape, budget, depth + 1)?);
            }
            Value::Object(map)
        }
    })
}

/// `leaf` wrapped in exactly `depth` arrays and objects (chosen by `u`).
pub fn nested(u: &mut Unstructured<'_>, depth: usize, leaf: Value) -> Result<Value> {
    let mut v = leaf;
    for _ in 0..depth {
        v = if u.arbitrary()? {
            Value::Array(vec![v])
        } else {
            let mut map = Map::new();
            map.insert("k".into(), v);
            Value::Object(map)
        };
    }
    Ok(v)
}

/// How deep a value nests arrays and objects (a scalar is 0, `[]` is 1):
/// the tests' own count, to check the host's against.
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Limits on one generated args map.
#[derive(Debug, Clone, Copy)]
pub struct ArgsShape {
    /// Most keys of an ordinary map.
    pub keys: usize,
    /// Most keys of a map with many (rarely chosen).
    pub many_keys: usize,
    /// Deepest nesting of a deliberately deep value (rarely chosen).
    pub deep: usize,
    /// Most bytes of a deliberately huge string (rarely chosen).
    pub huge: usize,
}

/// An args map: usually a handful of small values; sometimes many keys, a
/// value nested up to `shape.deep`, or a string of up to `shape.huge`
/// bytes.
pub fn args(u: &mut Unstructured<'_>, shape: ArgsShape) -> Result<ArgsMap> {
    let mut map = ArgsMap::new();
    let n = if u.ratio(1, 16)? {
        u.int_in_range(0..=shape.many_keys)?
    } else {
        u.int_in_range(0..=shape.keys)?
    };
    let mut budget = 256;
    for i in 0..n {
        let key = if i >= 64 || u.ratio(1, 8)? {
            // Many keys: cheap distinct ones.
            format!("k{i}")
        } else {
            text(u, 48)?
        };
        map.insert(key, value(u, Shape::SMALL, &mut budget)?);
    }
    if u.ratio(1, 8)? {
        // Exactly `d` levels: the leaf is a scalar.
        let d = u.int_in_range(0..=shape.deep)?;
        let leaf = value(
            u,
            Shape {
                depth: 0,
                ..Shape::SMALL
            },
            &mut 1,
        )?;
        map.insert(text(u, 16)?, nested(u, d, leaf)?);
    }
    if u.ratio(1, 8)? {
        let len = u.int_in_range(0..=shape.huge)?;
        let piece = u.choose(PIECES)?;
        let mut s = piece.repeat(len / piece.len().max(1));
        s.push_str(&text(u, 64)?);
        map.insert(text(u, 16)?, Value::String(s));
    }
    Ok(map)
}

/// A time: mostly near now, sometimes anywhere chrono can represent
/// (before 1970, past 9999).
pub fn time(u: &mut Unstructured<'_>) -> Result<DateTime<Utc>> {
    let us: i64 = match u.int_in_range(0u8..=3)? {
        0 => u.int_in_range(
            DateTime::<Utc>::MIN_UTC.timestamp_micros()
                ..=DateTime::<Utc>::MAX_UTC.timestamp_micros(),
        )?,
        // 1970 to 2100.
        _ => u.int_in_range(0..=4_102_444_800_000_000)?,
    };
    Ok(DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::UNIX_EPOCH))
}

/// A task's stored error.
pub fn task_error(u: &mut Unstructured<'_>) -> Result<TaskError> {
    Ok(TaskError {
        kind: text(u, 32)?,
        message: text(u, 4096)?,
        retryable: u.arbitrary()?,
        handler_index: u.arbitrary()?,
    })
}

/// Any state.
pub fn state(u: &mut Unstructured<'_>) -> Result<TaskState> {
    Ok(*u.choose(&TaskState::ALL)?)
}

/// A task that [`Task::validate`] accepts, with every field generated;
/// its args maps follow `shape`.
pub fn task(u: &mut Unstructured<'_>, shape: ArgsShape) -> Result<Task> {
    let original = args(u, shape)?;
    let mut task = Task::new(name(u)?, original.clone());
    // Never the nil id: a task JSON naming it reads as naming none.
    task.task_id = TaskId(Uuid::from_u128(u.arbitrary::<u128>()?.max(1)));
    task.created_at = time(u)?;
    task.updated_at = time(u)?;
    task.queue_name = name(u)?;
    task.tenant = name(u)?;
    task.args_map = if u.arbitrary()? {
        original
    } else {
        args(u, shape)?
    };
    task.current_handler_index = u.arbitrary()?;
    task.result_log = text(u, 4096)?;
    task.state = state(u)?;
    task.attempt = u.arbitrary()?;
    task.max_attempts = u.int_in_range(1..=u32::MAX)?;
    task.run_at = if u.arbitrary()? { Some(time(u)?) } else { None };
    task.deadline = if u.arbitrary()? { Some(time(u)?) } else { None };
    task.timeout_ms = u.arbitrary()?;
    task.job_version = u.arbitrary()?;
    task.error = if u.arbitrary()? {
        Some(task_error(u)?)
    } else {
        None
    };
    task.log = text(u, 4096)?;
    Ok(task)
}

/// A checkpoint a worker could write.
pub fn checkpoint(u: &mut Unstructured<'_>, shape: ArgsShape) -> Result<Checkpoint> {
    Ok(Checkpoint {
        current_handler_index: u.arbitrary()?,
        args_map: args(u, shape)?,
        result_log: text(u, 4096)?,
        log: text(u, 4096)?,
        metering: {
            let mut m = corral::metering::TaskMetering::default();
            for _ in 0..u.int_in_range(0..=3)? {
                m.record(
                    u.arbitrary()?,
                    u.arbitrary()?,
                    corral::metering::CallMetering {
                        fuel: u.arbitrary()?,
                        peak_memory_bytes: u.arbitrary()?,
                        wall_us: u.arbitrary()?,
                        instantiate_us: u.arbitrary()?,
                    },
                );
            }
            m
        },
    })
}

/// Damages `bytes` a few times: flips, overwrites, cuts, duplicates and
/// inserts (`splice` supplies inserted text, e.g. JSON tokens).
pub fn mutate_bytes(u: &mut Unstructured<'_>, bytes: &mut Vec<u8>, splice: &[&[u8]]) -> Result<()> {
    let rounds = u.int_in_range(1..=4)?;
    for _ in 0..rounds {
        let len = bytes.len();
        let at = if len == 0 {
            0
        } else {
            u.int_in_range(0..=len - 1)?
        };
        match u.int_in_range(0u8..=6)? {
            0 if len > 0 => bytes[at] ^= 1 << u.int_in_range(0..=7)?,
            1 if len > 0 => bytes[at] = u.arbitrary()?,
            2 => bytes.truncate(at),
            3 if len > 0 => {
                let end = u.int_in_range(at..=len)?;
                bytes.drain(at..end);
            }
            4 if len > 0 => {
                let end = u.int_in_range(at..=len.min(at + 256))?;
                let copy = bytes[at..end].to_vec();
                let to = u.int_in_range(0..=len)?;
                bytes.splice(to..to, copy);
            }
            5 if !splice.is_empty() => {
                let piece = u.choose(splice)?;
                bytes.splice(at..at, piece.iter().copied());
            }
            _ => {
                let n = u.int_in_range(0..=16)?;
                let noise = u.bytes(n.min(u.len()))?.to_vec();
                bytes.splice(at..at, noise);
            }
        }
    }
    Ok(())
}

/// JSON tokens worth splicing into JSON text.
pub const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\udc00",
    b"null",
    b"true",
    b"-",
    b"1e999",
    b"-1e999",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"0.",
    b".5",
    b"01",
    b"NaN",
    b"Infinity",
    b"\"task_id\":",
    b"\"oops\":1,",
    b"\"args_map\":",
    b"\"tenant\":\"\",",
    b"\"max_attempts\":0,",
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\x00",
];

/// Damages a JSON object's structure: drops or retypes a field, adds an
/// unknown one, nests a value deep.
pub fn mutate_value(u: &mut Unstructured<'_>, v: &mut Value) -> Result<()> {
    let Value::Object(map) = v else {
        return Ok(());
    };
    let keys: Vec<String> = map.keys().cloned().collect();
    let key = if keys.is_empty() {
        "k".to_owned()
    } else {
        u.choose(&keys)?.clone()
    };
    match u.int_in_range(0u8..=5)? {
        0 => {
            map.remove(&key);
        }
        1 => {
            let mut budget = 16;
            map.insert(key, value(u, Shape::SMALL, &mut budget)?);
        }
        2 => {
            map.insert(text(u, 16)?, Value::Null);
        }
        3 => {
            let d = u.int_in_range(100..=140)?;
            let leaf = Value::Null;
            map.insert(key, nested(u, d, leaf)?);
        }
        4 => {
            map.insert(key, Value::Number(number(u)?));
        }
        _ => {
            map.insert(key, Value::String(text(u, 64)?));
        }
    }
    Ok(())
}

/// Where two serializable things differ, as `path: left != right` lines
/// (values cut short): readable where a task's `Debug` runs to pages.
pub fn diff<T: serde::Serialize>(left: &T, right: &T) -> String {
    fn cut(v: &Value) -> String {
        let s = v.to_string();
        match s.char_indices().nth(200) {
            Some((at, _)) => format!("{}…", &s[..at]),
            None => s,
        }
    }
    fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        if out.len() >= 8 || a == b {
            return;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    let (l, r) = (
                        x.get(key).unwrap_or(&Value::Null),
                        y.get(key).unwrap_or(&Value::Null),
                    );
                    walk(&format!("{path}.{key:?}"), l, r, out);
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (l, r)) in x.iter().zip(y).enumerate() {
                    walk(&format!("{path}[{i}]"), l, r, out);
                }
            }
            _ => out.push(format!("{path}: {} != {}", cut(a), cut(b))),
        }
    }
    let (a, b) = match (serde_json::to_value(left), serde_json::to_value(right)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => return format!("not comparable as JSON: {a:?} / {b:?}"),
    };
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    if out.is_empty() {
        "equal as JSON, unequal as values (a float that is not one)".to_owned()
    } else {
        out.join("\n")
    }
}
