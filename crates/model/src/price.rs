//! What model calls cost: a price per model, in integer micro-units of the
//! currency the plans' caps use (USD), per million tokens. No floating
//! point touches money, and a model without a price is refused, never free.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One model's price, in micro-units per million tokens
/// (`input = 150000` is $0.15 per million input tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: u64,
    pub output: u64,
}

impl Price {
    /// What a call cost, in micro-units, rounded up: a call is never
    /// cheaper than its tokens.
    pub fn cost(&self, tokens_in: u64, tokens_out: u64) -> u64 {
        let micro = (u128::from(tokens_in) * u128::from(self.input))
            .saturating_add(u128::from(tokens_out) * u128::from(self.output));
        u64::try_from(micro.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// Every model's price, by the name calls use (`[prices]` in the server's
/// configuration).
pub type PriceTable = BTreeMap<String, Price>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_exact_integers_rounded_up() {
        let mini = Price { input: 150_000, output: 600_000 };
        assert_eq!(mini.cost(1_000_000, 0), 150_000);
        assert_eq!(mini.cost(7, 5), 5); // 1.05 + 3.0 micro-units, rounded up
        assert_eq!(mini.cost(0, 0), 0);
        assert_eq!(Price { input: u64::MAX, output: u64::MAX }.cost(u64::MAX, u64::MAX), u64::MAX);
    }
}
