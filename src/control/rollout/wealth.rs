//! A guard's wealth as a fixed mixture of hedged e-processes fed the same blocks, so one
//! block that disagrees with a bet costs a bounded amount and a change mid-step is followed.
//!
//! Owns: the parts, their weights and fractions, and the arithmetic of the mixture. Must not
//! touch: the blocks' factors themselves (`stats` computes them), tallies, state or files.

/// One part of a guard's wealth: the share of the starting wealth it gets, the fraction `l`
/// of its wealth it bets (a block's factor `F` becomes `1 - l + l F`), and whether it takes
/// its alternative from the recent answers rather than from the whole step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Part {
    pub prior: f64,
    pub fraction: f64,
    pub recent: bool,
}

/// The parts: half the wealth bets everything on the step's rates (the single plug-in test
/// of before), 0.4 everything on the recent rates, 0.1 half on the recent rates.
pub const PARTS: [Part; 3] = [
    Part {
        prior: 0.5,
        fraction: 1.0,
        recent: false,
    },
    Part {
        prior: 0.4,
        fraction: 1.0,
        recent: true,
    },
    Part {
        prior: 0.1,
        fraction: 0.5,
        recent: true,
    },
];

/// A guard's wealth: ln of the wealth of each part (all start at 1). The guard's e-value is
/// their mixture `sum PARTS[j].prior * exp(parts[j])`.
///
/// Why it stays valid: each part's fraction and alternative are fixed before its block, and
/// `E[F] <= 1` under the null for every block and every alternative (the projection in `stats`),
/// so `E[1 - l + l F] <= 1` too: each part is a test supermartingale, and a mixture of them
/// with fixed weights summing to 1 is one as well, to which Ville's inequality applies. What
/// it buys: a block that disagrees with a bet costs the hedged part at most `-ln(1 - l)` =
/// 0.69 nats however extreme the bet, so the mixture loses at most `ln(1 / (0.1 * 0.5))` =
/// 3.0 nats on the first such block and 0.69 on each later one; and the recent parts follow
/// a regression that starts mid-step. What it costs on stationary data is at most
/// `ln(1 / 0.5)` nats against the all-in step part alone, and in the simulations nothing
/// measurable, since the recent all-in part grows as fast while the step is young.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wealth(pub [f64; 3]);

impl Default for Wealth {
    fn default() -> Self {
        Wealth([0.0; 3])
    }
}

impl Wealth {
    /// ln of the mixture's wealth (the guard's statistic).
    pub fn total(&self) -> f64 {
        let top = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !top.is_finite() {
            return top;
        }
        let sum: f64 = self
            .0
            .iter()
            .zip(PARTS)
            .map(|(w, p)| p.prior * (w - top).exp())
            .sum();
        top + sum.ln()
    }

    /// Every part after a block whose all-in log factor is `step` betting on the step's
    /// rates, and `recent` betting on the recent ones.
    pub fn bet(&mut self, step: f64, recent: f64) {
        for (w, p) in self.0.iter_mut().zip(PARTS) {
            *w += hedged(p.fraction, if p.recent { recent } else { step });
        }
    }
}

/// `ln(1 - l + l exp(x))`, without overflow for large `x`.
fn hedged(l: f64, x: f64) -> f64 {
    if l >= 1.0 {
        x
    } else if x > 0.0 {
        x + (l + (1.0 - l) * (-x).exp()).ln()
    } else {
        (1.0 - l + l * x.exp()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspecified_block_costs_the_hedged_wealth_a_bounded_amount() {
        let mut w = Wealth::default();
        w.bet(-1_000.0, -1_000.0);
        assert!((w.total() - (0.1f64 * 0.5).ln()).abs() < 1e-9, "{w:?}");
        w.bet(-1_000.0, -1_000.0);
        assert!((w.total() - (0.1f64 * 0.25).ln()).abs() < 1e-9, "{w:?}");
        // Where every bet wins, the mixture keeps at least half the all-in growth's wealth.
        let mut w = Wealth::default();
        for _ in 0..20 {
            w.bet(0.5, 0.5);
        }
        assert!(
            w.total() >= 10.0 + 0.5f64.ln() && w.total() <= 10.0,
            "{w:?}"
        );
        assert_eq!(Wealth::default().total(), 0.0);
        assert!((hedged(0.5, 800.0) - (800.0 + 0.5f64.ln())).abs() < 1e-9);
    }
}
