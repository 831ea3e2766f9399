//! List answers bounded in bytes as well as rows.
//!
//! A list route serializes its rows one at a time into a [`BoundedList`],
//! which stops taking rows once the next would take the body past the API's
//! `max_list_bytes`, and says so: `"truncated": true` (and, where the route
//! pages, a `next` cursor to ask for the rest). The first row is always
//! taken, so paging makes progress whatever the budget; every row the routes
//! list is bounded on its own (task rows are summaries with clipped text,
//! job rows are bounded by the tenant's quotas). This module owns the body's
//! shape and size, never what goes in a row.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::errors::ApiError;

/// Bytes kept free for what follows the rows (`truncated`, a cursor of at
/// most a few hundred bytes once JSON-escaped).
const TAIL_RESERVE: usize = 1024;

/// A JSON object `{"<key>": [rows…], "truncated": …, …}` being written.
pub struct BoundedList {
    body: Vec<u8>,
    budget: usize,
    rows: usize,
    truncated: bool,
}

impl BoundedList {
    /// A list under `key`, its whole body at most `budget` bytes (beyond a
    /// first row larger than that).
    pub fn new(key: &str, budget: usize) -> Result<Self, ApiError> {
        let mut body = Vec::with_capacity(budget.min(64 << 10));
        body.push(b'{');
        serde_json::to_writer(&mut body, key).map_err(|e| ApiError::internal("listing", e))?;
        body.extend_from_slice(b":[");
        Ok(Self {
            body,
            budget: budget.saturating_sub(TAIL_RESERVE),
            rows: 0,
            truncated: false,
        })
    }

    /// Adds `row` if it fits; `false` (and the list marked truncated) when
    /// it does not, after which nothing more is taken.
    pub fn push<T: Serialize>(&mut self, row: &T) -> Result<bool, ApiError> {
        if self.truncated {
            return Ok(false);
        }
        let mark = self.body.len();
        if self.rows > 0 {
            self.body.push(b',');
        }
        serde_json::to_writer(&mut self.body, row).map_err(|e| ApiError::internal("listing", e))?;
        if self.rows > 0 && self.body.len() > self.budget {
            self.body.truncate(mark);
            self.truncated = true;
            return Ok(false);
        }
        self.rows += 1;
        Ok(true)
    }

    /// Rows taken so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether a row was left out for want of room.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Closes the list with `truncated` and the `extra` fields; the answer
    /// is 200 with the JSON body.
    pub fn finish(mut self, extra: &[(&str, serde_json::Value)]) -> Result<Response, ApiError> {
        let fail = |e: serde_json::Error| ApiError::internal("listing", e);
        self.body.extend_from_slice(b"],\"truncated\":");
        self.body
            .extend_from_slice(if self.truncated { b"true" } else { b"false" });
        for (key, value) in extra {
            self.body.push(b',');
            serde_json::to_writer(&mut self.body, key).map_err(fail)?;
            self.body.push(b':');
            serde_json::to_writer(&mut self.body, value).map_err(fail)?;
        }
        self.body.push(b'}');
        let mut response = (StatusCode::OK, self.body).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(response)
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(list: BoundedList, extra: &[(&str, serde_json::Value)]) -> serde_json::Value {
        let response = list.finish(extra).unwrap();
        let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            response.into_body(),
            usize::MAX,
        ))
        .unwrap()
        .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn rows_stop_at_the_budget_and_say_so() {
        let mut list = BoundedList::new("rows", TAIL_RESERVE + 100).unwrap();
        let row = "x".repeat(40);
        let taken = (0..10).take_while(|_| list.push(&row).unwrap()).count();
        assert_eq!(taken, 2);
        assert!(list.truncated() && !list.push(&"y").unwrap());
        let json = body(list, &[("next", serde_json::json!("b\"c"))]);
        assert_eq!(json["rows"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["truncated"], true);
        assert_eq!(json["next"], "b\"c");
    }

    #[test]
    fn the_first_row_is_taken_whatever_its_size() {
        let mut list = BoundedList::new("rows", 10).unwrap();
        assert!(list.push(&"z".repeat(5000)).unwrap());
        assert!(!list.push(&"z").unwrap());
        let json = body(list, &[]);
        assert_eq!(json["rows"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn an_empty_list_is_not_truncated() {
        let json = body(BoundedList::new("rows", 0).unwrap(), &[]);
        assert_eq!(json, serde_json::json!({"rows": [], "truncated": false}));
    }

    #[test]
    fn clipping_keeps_whole_characters() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("", 0), "");
    }
}
