//! Reading what a script answered: every reply of every script goes through
//! here, once.
//!
//! A [`Reply`] reads an array reply front to back, one typed value at a
//! time; each read names the operation and says what it expected, so a
//! reply of the wrong shape (a server that is not Redis, a script of another
//! version, a key damaged by hand) is [`BrokerError::Corrupt`], never a
//! panic. It knows the value shapes scripts use (integers, counts, flags,
//! byte strings that may be absent, scores as text) and the one return-code
//! convention several scripts share ([`Reply::held`]); what each code
//! means to its operation stays with the wrapper in `scripts.rs`.

use redis::Value;

use crate::broker::BrokerError;
use corral_core::task::TaskId;

/// The error for a reply that does not have the shape `op` expects.
pub fn corrupt(op: &'static str, what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Corrupt {
        op,
        reason: format!("unexpected reply from Redis: {what}"),
    }
}

/// An array reply, read front to back.
pub struct Reply {
    op: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Reply {
    /// `value` as an array reply of `op`.
    pub fn new(op: &'static str, value: Value) -> Result<Self, BrokerError> {
        match value {
            Value::Array(items) | Value::Set(items) => Ok(Self {
                op,
                items: items.into_iter(),
            }),
            other => Err(corrupt(op, format!("expected an array, got {other:?}"))),
        }
    }

    /// `value` as an array reply of exactly `len` items.
    pub fn of_len(op: &'static str, value: Value, len: usize) -> Result<Self, BrokerError> {
        let reply = Self::new(op, value)?;
        match reply.remaining() {
            n if n == len => Ok(reply),
            n => Err(corrupt(op, format!("{n} values where {len} were expected"))),
        }
    }

    /// `None` for a nil reply (the script found nothing), else an array.
    pub fn optional(op: &'static str, value: Value) -> Result<Option<Self>, BrokerError> {
        match value {
            Value::Nil => Ok(None),
            value => Self::new(op, value).map(Some),
        }
    }

    /// Values not read yet.
    pub fn remaining(&self) -> usize {
        self.items.len()
    }

    /// The error for this reply's operation.
    pub fn corrupt(&self, what: impl std::fmt::Display) -> BrokerError {
        corrupt(self.op, what)
    }

    /// The next value, whatever it is.
    pub fn value(&mut self) -> Result<Value, BrokerError> {
        self.items
            .next()
            .ok_or_else(|| corrupt(self.op, "short reply"))
    }

    /// The next value, an integer.
    pub fn int(&mut self) -> Result<i64, BrokerError> {
        let v = self.value()?;
        int(self.op, &v)
    }

    /// The next value, a count.
    pub fn count(&mut self) -> Result<usize, BrokerError> {
        let v = self.value()?;
        count(self.op, &v)
    }

    /// The next value, a flag (a non-zero integer is true).
    pub fn flag(&mut self) -> Result<bool, BrokerError> {
        Ok(self.int()? != 0)
    }

    /// The next value, the code of one lease's check: 0 the lease is held
    /// (true), 1 it is not (false).
    pub fn held(&mut self) -> Result<bool, BrokerError> {
        let v = self.value()?;
        held(self.op, &v)
    }

    /// The next value, a byte string that may be absent (nil or false).
    pub fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, BrokerError> {
        match self.value()? {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(b)),
            Value::SimpleString(s) => Ok(Some(s.into_bytes())),
            other => Err(self.corrupt(format!("expected a string, got {other:?}"))),
        }
    }

    /// The next value, a byte string.
    pub fn bytes(&mut self) -> Result<Vec<u8>, BrokerError> {
        self.opt_bytes()?
            .ok_or_else(|| self.corrupt("expected a string, got nil"))
    }

    /// The next value, UTF-8 text.
    pub fn string(&mut self) -> Result<String, BrokerError> {
        String::from_utf8(self.bytes()?).map_err(|_| self.corrupt("expected UTF-8 text"))
    }

    /// The next value, a task id.
    pub fn task_id(&mut self) -> Result<TaskId, BrokerError> {
        self.string()?
            .parse()
            .map_err(|_| self.corrupt("bad task id"))
    }

    /// The next value, a sorted-set score that may be absent, as a whole
    /// number. Scores come back as decimal text; an integral score may
    /// carry an exponent or a fraction, so it is parsed as a float.
    pub fn opt_score(&mut self) -> Result<Option<i64>, BrokerError> {
        match self.opt_bytes()? {
            None => Ok(None),
            Some(b) => {
                let score = std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| self.corrupt("bad score"))?;
                Ok(Some(score as i64))
            }
        }
    }
}

/// A single-value reply of `op`, an integer.
pub fn int(op: &'static str, v: &Value) -> Result<i64, BrokerError> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| corrupt(op, "expected an integer")),
        Value::SimpleString(s) => s.parse().map_err(|_| corrupt(op, "expected an integer")),
        other => Err(corrupt(op, format!("expected an integer, got {other:?}"))),
    }
}

/// A single-value reply of `op`, a count.
pub fn count(op: &'static str, v: &Value) -> Result<usize, BrokerError> {
    usize::try_from(int(op, v)?).map_err(|_| corrupt(op, "expected a count"))
}

/// A single-value reply of `op`, the code of one lease's check: 0 held
/// (true), 1 lost (false).
pub fn held(op: &'static str, v: &Value) -> Result<bool, BrokerError> {
    match int(op, v)? {
        0 => Ok(true),
        1 => Ok(false),
        other => Err(corrupt(op, format!("unknown code {other}"))),
    }
}
