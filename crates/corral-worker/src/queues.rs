//! Which queue a worker serving several asks first: in the order given
//! (strict priority), or, with weights, in a weighted random order drawn
//! afresh for every acquire, so `critical=6, default=3, low=1` serves
//! `critical` first about 60% of the time and `low` is never starved.
//!
//! This module only orders names; it never talks to the broker.

use std::collections::HashMap;

use rand::Rng;

/// A worker's queues and how it orders them for each acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOrder {
    queues: Vec<(String, u32)>,
    weighted: bool,
}

impl QueueOrder {
    /// Parses `name` or `name=weight` specs (weights 1 to 1000). With no
    /// weight given anywhere, queues are served strictly in the order
    /// given; with any, every queue is weighted (1 by default).
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self, String> {
        let mut queues: Vec<(String, u32)> = Vec::with_capacity(specs.len());
        let mut weighted = false;
        for spec in specs {
            let spec = spec.as_ref();
            let (name, weight) = match spec.rsplit_once('=') {
                Some((name, w)) => {
                    weighted = true;
                    let w: u32 = w.parse().map_err(|_| {
                        format!("queue `{spec}`: the weight after `=` must be a whole number")
                    })?;
                    if !(1..=1000).contains(&w) {
                        return Err(format!("queue `{spec}`: the weight must be 1 to 1000"));
                    }
                    (name, w)
                }
                None => (spec, 1),
            };
            if name.is_empty() {
                return Err(format!("queue `{spec}`: the name is empty"));
            }
            if queues.iter().any(|(n, _)| n == name) {
                return Err(format!("queue `{name}` is given twice"));
            }
            queues.push((name.to_owned(), weight));
        }
        if queues.is_empty() {
            return Err("no queue given".into());
        }
        Ok(Self { queues, weighted })
    }

    /// `names` weighted by `weights` (1 for a name not there); strict
    /// order when `weights` is empty.
    pub fn new(names: &[String], weights: &HashMap<String, u32>) -> Self {
        Self {
            queues: names
                .iter()
                .map(|n| (n.clone(), weights.get(n).copied().unwrap_or(1).max(1)))
                .collect(),
            weighted: !weights.is_empty(),
        }
    }

    /// The weights, by name (empty when the order is strict).
    pub fn weights(&self) -> HashMap<String, u32> {
        if !self.weighted {
            return HashMap::new();
        }
        self.queues.iter().cloned().collect()
    }

    /// The queue names, in the order given.
    pub fn names(&self) -> Vec<String> {
        self.queues.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Whether the order is drawn by weight.
    pub fn is_weighted(&self) -> bool {
        self.weighted
    }

    /// The order for one acquire: as given, or a weighted random
    /// permutation (each place drawn among the queues left, in proportion
    /// to their weights).
    pub fn draw(&self, rng: &mut impl Rng) -> Vec<String> {
        if !self.weighted {
            return self.names();
        }
        let mut left: Vec<&(String, u32)> = self.queues.iter().collect();
        let mut out = Vec::with_capacity(left.len());
        while !left.is_empty() {
            let total: u32 = left.iter().map(|(_, w)| *w).sum();
            let mut pick = rng.random_range(0..total);
            let mut at = 0;
            for (i, (_, w)) in left.iter().enumerate() {
                if pick < *w {
                    at = i;
                    break;
                }
                pick -= w;
            }
            out.push(left.remove(at).0.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn plain_names_keep_their_order_and_weights_draw_in_proportion() {
        let strict = QueueOrder::parse(&["a", "b"]).unwrap();
        assert!(!strict.is_weighted());
        assert_eq!(strict.draw(&mut rand::rng()), ["a", "b"]);

        let order = QueueOrder::parse(&["critical=6", "default=3", "low"]).unwrap();
        assert_eq!(order.names(), ["critical", "default", "low"]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut first = std::collections::HashMap::new();
        for _ in 0..10_000 {
            *first.entry(order.draw(&mut rng)[0].clone()).or_insert(0) += 1;
        }
        // 6:3:1 of the weight 10, give or take sampling noise.
        let share = |q: &str| f64::from(first[q]) / 10_000.0;
        assert!((share("critical") - 0.6).abs() < 0.03, "{first:?}");
        assert!((share("default") - 0.3).abs() < 0.03, "{first:?}");
        assert!((share("low") - 0.1).abs() < 0.03, "{first:?}");
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [&["a=0"][..], &["a=x"], &["a", "a=2"], &["=3"], &[]] {
            assert!(QueueOrder::parse(bad).is_err(), "{bad:?}");
        }
    }
}
