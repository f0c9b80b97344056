//! A ramp from 5% to 50% through config reloads between the turns of 200 conversations: with
//! pins, no conversation changes cohort; without, exactly those whose bucket lies in
//! [5000, 9500) (the canary band at 50% less the one at 5%) move, each at the step whose band
//! first takes its bucket.

use std::collections::BTreeSet;

use crate::common::*;
use crate::support::TestProxy;

const STEPS: [u32; 6] = [5, 10, 20, 30, 40, 50];
const CONVERSATIONS: usize = 200;

/// Runs the ramp, one turn of every conversation per step (the first at 5%), with the pin in
/// a cookie or with pinning off; each conversation's turns, and the proxy.
async fn ramp(pins: bool) -> (Vec<Conversation>, Vec<Vec<Turn>>, TestProxy, Backends) {
    let b = backends().await;
    let (stable, canary, secret) = (&b.stable, &b.canary, &b.secret);
    let pin = pins.then_some((secret.as_str(), Carrier::Cookie));
    let at = |p: u32| config(stable.addr, canary.addr, &p.to_string(), pin, &[]);
    let proxy = TestProxy::start(&at(STEPS[0])).await;
    let mut conversations: Vec<Conversation> = (0..CONVERSATIONS)
        .map(|i| Conversation::new(format!("conversation-{i}"), Carrier::Cookie))
        .collect();
    let mut turns: Vec<Vec<Turn>> = (0..CONVERSATIONS).map(|_| Vec::new()).collect();
    for (s, percent) in STEPS.iter().enumerate() {
        if s > 0 {
            reload(&proxy, &at(*percent)).await;
        }
        for (c, t) in conversations.iter_mut().zip(&mut turns) {
            t.push(c.turn(&proxy.client, proxy.public).await);
        }
    }
    (conversations, turns, proxy, b)
}

/// Those whose band at 50% differs from their band at 5%, by the public formula.
fn movers(conversations: &[Conversation]) -> BTreeSet<String> {
    conversations
        .iter()
        .filter(|c| (5000..9500).contains(&bucket(&c.key)))
        .map(|c| c.key.clone())
        .collect()
}

#[tokio::test]
async fn with_pins_no_conversation_changes_cohort_during_the_ramp() {
    let (conversations, turns, proxy, _backends) = ramp(true).await;
    let movers = movers(&conversations);
    // The ramp would have moved a share of them: about 45%, exactly these.
    assert!((60..=120).contains(&movers.len()), "{}", movers.len());
    let mut on_canary = 0;
    for (c, t) in conversations.iter().zip(&turns) {
        let first = &t[0];
        assert_eq!(first.cohort, band(&c.key, 5), "{}", c.key);
        on_canary += usize::from(first.cohort == "canary");
        let issued = first.pin.as_deref().unwrap().split('~').nth(4).unwrap();
        for (s, turn) in t.iter().enumerate() {
            assert_eq!(
                turn.cohort, first.cohort,
                "{} changed cohort at step {s}",
                c.key
            );
            let pin = turn.pin.as_deref().expect("every response carries the pin");
            assert_eq!(pinned_cohort(pin), turn.cohort);
            // Re-issues keep the conversation's first issue time.
            assert_eq!(pin.split('~').nth(4), Some(issued), "{pin}");
            assert_eq!(
                turn.set_cookie.as_deref(),
                Some(
                    format!("{COOKIE}={pin}; Path=/; Max-Age=1800; HttpOnly; SameSite=Lax")
                        .as_str()
                )
            );
        }
    }
    // The ramp did happen: new conversations now take the 50% bands.
    let mut late_canary = 0;
    for i in 0..CONVERSATIONS {
        let mut c = Conversation::new(format!("late-{i}"), Carrier::Cookie);
        let turn = c.turn(&proxy.client, proxy.public).await;
        assert_eq!(turn.cohort, band(&c.key, 50), "{}", c.key);
        late_canary += usize::from(turn.cohort == "canary");
    }
    assert!(late_canary > on_canary * 3, "{late_canary} vs {on_canary}");

    let scrape = proxy.scrape().await;
    scrape.assert_well_formed();
    let later_turns = (STEPS.len() - 1) as f64;
    let issued_canary = (on_canary + late_canary) as f64;
    let mut expected = vec![
        (
            "cohort_pinned_requests_total",
            "canary",
            on_canary as f64 * later_turns,
        ),
        (
            "cohort_pinned_requests_total",
            "stable",
            (CONVERSATIONS - on_canary) as f64 * later_turns,
        ),
        ("cohort_pins_issued_total", "canary", issued_canary),
        (
            "cohort_pins_issued_total",
            "stable",
            2.0 * CONVERSATIONS as f64 - issued_canary,
        ),
    ];
    for reason in ["malformed", "forged", "expired", "foreign", "inactive"] {
        expected.push(("cohort_pin_rejected_total", reason, 0.0));
    }
    assert_counts(&scrape, &expected);
}

#[tokio::test]
async fn without_pins_exactly_the_expected_conversations_change_cohort() {
    let (conversations, turns, proxy, _backends) = ramp(false).await;
    let mut moved = BTreeSet::new();
    for (c, t) in conversations.iter().zip(&turns) {
        for (turn, percent) in t.iter().zip(STEPS) {
            assert_eq!(
                turn.cohort,
                band(&c.key, percent),
                "{} at {percent}%",
                c.key
            );
            assert_eq!(turn.pin, None, "no pin without `pin:`");
        }
        if t.iter().any(|turn| turn.cohort != t[0].cohort) {
            moved.insert(c.key.clone());
        }
    }
    assert_eq!(moved, movers(&conversations));
    assert!(!moved.is_empty());
    let scrape = proxy.scrape().await;
    assert!(scrape.series("cohort_pinned_requests_total").is_empty());
}

#[tokio::test]
async fn a_rollback_by_reload_overrides_canary_pins_at_once_and_a_promotion_the_baselines() {
    let b = backends().await;
    let (stable, canary, secret) = (&b.stable, &b.canary, &b.secret);
    let pin = Some((secret.as_str(), Carrier::Cookie));
    let at = |p: &str| config(stable.addr, canary.addr, p, pin, &[]);
    let proxy = TestProxy::start(&at("50")).await;
    let mut conversations: Vec<Conversation> = (0..100)
        .map(|i| Conversation::new(format!("rollback-{i}"), Carrier::Cookie))
        .collect();
    let mut on_canary = 0;
    for c in &mut conversations {
        let turn = c.turn(&proxy.client, proxy.public).await;
        on_canary += usize::from(turn.cohort == "canary");
    }
    assert!((25..=75).contains(&on_canary), "{on_canary}");

    // Rolled back: every canary conversation is on stable at its next turn, with a stable pin.
    reload(&proxy, &at("0")).await;
    for c in &mut conversations {
        let turn = c.turn(&proxy.client, proxy.public).await;
        assert_eq!(turn.cohort, "stable", "{}", c.key);
        assert_eq!(pinned_cohort(turn.pin.as_deref().unwrap()), "stable");
    }
    let rejected = |s: &crate::support::Scrape| {
        s.metric(
            "cohort_pin_rejected_total",
            &[("route", "agent"), ("reason", "inactive")],
        )
    };
    assert_eq!(rejected(&proxy.scrape().await), on_canary as f64);

    // Promoted: the baseline at 0%, so now every pin (all stable) gives way to the canary.
    reload(&proxy, &at("100")).await;
    for c in &mut conversations {
        assert_eq!(c.turn(&proxy.client, proxy.public).await.cohort, "canary");
    }
    assert_eq!(rejected(&proxy.scrape().await), (on_canary + 100) as f64);
}
