//! A deterministic synthetic card-payments stream: cards that spend at their usual shops in
//! their home country, a share of them stolen and drained in a burst, and chargebacks that come
//! days later.
//!
//! Two event types, as a feature spec reads them (`infra/features/fraud.toml`):
//! - `transaction`: `{id, card, merchant, merchant_category, amount, country}`, the country being
//!   the merchant's;
//! - `chargeback`: `{card, transaction}`, naming the disputed transaction's id.
//!
//! What a model can learn, and only from state: a stolen card is used in a quick burst (velocity
//! over minutes), for amounts far above what that card usually spends (an amount z-score against
//! the card's own history), mostly abroad (a country the card was never used in), at the few
//! merchants and categories thieves favour (merchant and category chargeback rates). None of
//! that is in one transaction's raw fields: a 900 € electronics purchase is normal for one card
//! and alarming for another. Honest cardholders travel too (a new country is not proof), and a
//! few honest transactions are disputed anyway (friendly fraud), so the label is noisy as real
//! labels are.
//!
//! A chargeback comes a day or more after its transaction (one day plus an exponential delay, a
//! mean of [`FraudConfig::chargeback_delay`]); a chargeback that would fall after the stream's end
//! has not happened yet and is not emitted. So the newest transactions of a stream are unlabelled
//! when it ends, as in production.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use freshet::events::CloudEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{cents, domain_event, exponential, in_time_order, standard_normal, weighted_index};

/// The event type of a card payment.
pub const TRANSACTION: &str = "transaction";
/// The event type of a disputed payment.
pub const CHARGEBACK: &str = "chargeback";

/// Countries cards are issued in and merchants trade from.
pub const COUNTRIES: [&str; 10] = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "SE", "PL"];

/// A merchant category: how much of honest spending goes there, how large a typical amount is
/// there relative to the card's usual, and how much thieves favour it.
struct Category {
    name: &'static str,
    honest_share: f64,
    amount_factor: f64,
    thief_appeal: f64,
}

const CATEGORIES: [Category; 8] = [
    Category {
        name: "grocery",
        honest_share: 0.30,
        amount_factor: 1.0,
        thief_appeal: 0.2,
    },
    Category {
        name: "fuel",
        honest_share: 0.15,
        amount_factor: 1.2,
        thief_appeal: 0.5,
    },
    Category {
        name: "restaurants",
        honest_share: 0.25,
        amount_factor: 0.8,
        thief_appeal: 0.3,
    },
    Category {
        name: "travel",
        honest_share: 0.05,
        amount_factor: 5.0,
        thief_appeal: 1.0,
    },
    Category {
        name: "electronics",
        honest_share: 0.08,
        amount_factor: 4.0,
        thief_appeal: 3.0,
    },
    Category {
        name: "jewelry",
        honest_share: 0.02,
        amount_factor: 6.0,
        thief_appeal: 3.0,
    },
    Category {
        name: "gift_cards",
        honest_share: 0.05,
        amount_factor: 2.0,
        thief_appeal: 4.0,
    },
    Category {
        name: "online_gaming",
        honest_share: 0.10,
        amount_factor: 0.7,
        thief_appeal: 3.0,
    },
];

/// The category names, in the order the generator uses them.
pub fn merchant_categories() -> impl Iterator<Item = &'static str> {
    CATEGORIES.iter().map(|c| c.name)
}

/// Share of merchants (of the categories thieves like) where stolen cards are mostly spent.
const COMPLICIT_SHARE: f64 = 0.05;
/// How many times more a complicit merchant draws a thief than another of its category.
const COMPLICIT_PULL: f64 = 8.0;
/// Shops a card returns to.
const REGULAR_MERCHANTS: usize = 8;
/// Share of honest payments at a card's regular shops; most of the rest at other shops at home.
const REGULAR_SHARE: f64 = 0.8;
/// Share of honest payments made abroad (travel, online shops elsewhere).
const ABROAD_SHARE: f64 = 0.04;
/// Share of a thief's payments made abroad.
const THIEF_ABROAD_SHARE: f64 = 0.7;
/// Share of stolen-card payments disputed by the cardholder.
const FRAUD_DISPUTED: f64 = 0.85;
/// Share of honest payments disputed anyway.
const FRIENDLY_FRAUD: f64 = 0.002;
/// Mean gap between a thief's payments.
const BURST_GAP: std::time::Duration = std::time::Duration::from_secs(240);

/// Settings of the payments stream.
#[derive(Debug, Clone, PartialEq)]
pub struct FraudConfig {
    pub cards: usize,
    pub merchants: usize,
    /// Honest transactions; the thieves' come on top (a few percent).
    pub transactions: usize,
    pub seed: u64,
    /// Event time of the stream's start, and the event time its transactions span.
    pub start: DateTime<Utc>,
    pub span: std::time::Duration,
    /// Share of cards stolen at some point of the span.
    pub stolen_share: f64,
    /// Mean delay of a chargeback beyond the first day after its transaction.
    pub chargeback_delay: std::time::Duration,
}

impl FraudConfig {
    /// `transactions` honest payments of `cards` cards over 30 days from `start`, one card in ten
    /// stolen, chargebacks a mean of 5 days after the first day.
    pub fn new(start: DateTime<Utc>, cards: usize, transactions: usize, seed: u64) -> Self {
        FraudConfig {
            cards,
            merchants: (cards / 3).max(CATEGORIES.len()),
            transactions,
            seed,
            start,
            span: std::time::Duration::from_secs(30 * 24 * 3600),
            stolen_share: 0.1,
            chargeback_delay: std::time::Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// The stream and what really happened in it.
#[derive(Debug, Clone)]
pub struct FraudStory {
    pub events: Vec<CloudEvent>,
    /// Ids of the transactions made with a stolen card (disputed or not).
    pub fraudulent: BTreeSet<String>,
}

struct Merchant {
    id: String,
    category: usize,
    country: usize,
    complicit: bool,
}

struct Card {
    id: String,
    home: usize,
    /// How often the card is used, relative to others.
    activity: f64,
    /// The card's usual amount (before the category's factor).
    usual_amount: f64,
    regulars: Vec<usize>,
}

struct Payment {
    id: String,
    card: usize,
    merchant: usize,
    amount: f64,
    at: DateTime<Utc>,
    stolen: bool,
}

/// Generates the stream (see the module documentation).
pub fn generate(config: &FraudConfig) -> FraudStory {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let start = config.start;
    let span = Duration::from_std(config.span).unwrap_or(Duration::days(30));
    let end = start + span;
    let merchants = new_merchants(config.merchants.max(1), &mut rng);
    let cards = new_cards(config.cards.max(1), &merchants, &mut rng);
    let mut payments = Vec::with_capacity(config.transactions + config.transactions / 10);
    let tx_id = |n: usize| format!("tx-{}-{}-{n}", config.seed, start.timestamp());

    // Honest spending: a Poisson process over the span, each payment by a card drawn by activity.
    let activity: Vec<f64> = cards.iter().map(|c| c.activity).collect();
    for _ in 0..config.transactions {
        let at =
            start + Duration::milliseconds(rng.random_range(0..span.num_milliseconds().max(1)));
        let card = weighted_index(&activity, &mut rng);
        let merchant = honest_merchant(&cards[card], &merchants, &mut rng);
        let amount = cards[card].usual_amount
            * CATEGORIES[merchants[merchant].category].amount_factor
            * (0.5 * standard_normal(&mut rng)).exp();
        payments.push(Payment {
            id: tx_id(payments.len()),
            card,
            merchant,
            amount: cents(amount.max(0.5)),
            at,
            stolen: false,
        });
    }

    // Theft: a card is tested with a small payment, then drained in a burst minutes apart.
    let stolen = ((config.cards as f64) * config.stolen_share).round() as usize;
    let appeal: Vec<f64> = merchants
        .iter()
        .map(|m| {
            CATEGORIES[m.category].thief_appeal * if m.complicit { COMPLICIT_PULL } else { 1.0 }
        })
        .collect();
    for card in rand::seq::index::sample(&mut rng, cards.len(), stolen.min(cards.len())) {
        let mut at =
            start + Duration::milliseconds(rng.random_range(0..span.num_milliseconds().max(1)));
        let burst = rng.random_range(2..=8);
        for n in 0..burst {
            let abroad = rng.random_bool(THIEF_ABROAD_SHARE);
            let merchant = thief_merchant(&merchants, &appeal, cards[card].home, abroad, &mut rng);
            let amount = if n == 0 {
                rng.random_range(1.0..3.0)
            } else {
                cards[card].usual_amount
                    * CATEGORIES[merchants[merchant].category].amount_factor
                    * rng.random_range(3.0..12.0)
            };
            payments.push(Payment {
                id: tx_id(payments.len()),
                card,
                merchant,
                amount: cents(amount),
                at,
                stolen: true,
            });
            at += exponential(BURST_GAP, &mut rng);
        }
    }

    let mut events = Vec::with_capacity(payments.len() + payments.len() / 20);
    let mut fraudulent = BTreeSet::new();
    for payment in &payments {
        if payment.at > end {
            continue;
        }
        let card = &cards[payment.card];
        let merchant = &merchants[payment.merchant];
        events.push((
            payment.at,
            domain_event(
                String::new(),
                TRANSACTION,
                payment.at,
                json!({
                    "id": payment.id,
                    "card": card.id,
                    "merchant": merchant.id,
                    "merchant_category": CATEGORIES[merchant.category].name,
                    "amount": payment.amount,
                    "country": COUNTRIES[merchant.country],
                }),
            ),
        ));
        if payment.stolen {
            fraudulent.insert(payment.id.clone());
        }
        let disputed = rng.random_bool(if payment.stolen {
            FRAUD_DISPUTED
        } else {
            FRIENDLY_FRAUD
        });
        let disputed_at =
            payment.at + Duration::days(1) + exponential(config.chargeback_delay, &mut rng);
        if disputed && disputed_at <= end {
            events.push((
                disputed_at,
                domain_event(
                    String::new(),
                    CHARGEBACK,
                    disputed_at,
                    json!({"card": card.id, "transaction": payment.id}),
                ),
            ));
        }
    }
    FraudStory {
        events: in_time_order(events, config.seed, start),
        fraudulent,
    }
}

fn new_merchants(count: usize, rng: &mut StdRng) -> Vec<Merchant> {
    let honest: Vec<f64> = CATEGORIES.iter().map(|c| c.honest_share).collect();
    (0..count)
        .map(|n| {
            // Every category has a merchant; the rest follow where honest money goes.
            let category = if n < CATEGORIES.len() {
                n
            } else {
                weighted_index(&honest, rng)
            };
            Merchant {
                id: format!("m{:04}", n + 1),
                category,
                country: rng.random_range(0..COUNTRIES.len()),
                complicit: CATEGORIES[category].thief_appeal >= 1.0
                    && rng.random_bool(COMPLICIT_SHARE),
            }
        })
        .collect()
}

fn new_cards(count: usize, merchants: &[Merchant], rng: &mut StdRng) -> Vec<Card> {
    let honest: Vec<f64> = merchants
        .iter()
        .map(|m| CATEGORIES[m.category].honest_share)
        .collect();
    (0..count)
        .map(|n| {
            let home = rng.random_range(0..COUNTRIES.len());
            let at_home: Vec<f64> = merchants
                .iter()
                .zip(&honest)
                .map(|(m, w)| if m.country == home { *w } else { 0.0 })
                .collect();
            let pool = if at_home.iter().any(|w| *w > 0.0) {
                &at_home
            } else {
                &honest
            };
            Card {
                id: format!("c{:05}", n + 1),
                home,
                activity: (0.7 * standard_normal(rng)).exp(),
                usual_amount: (3.3 + 0.5 * standard_normal(rng)).exp(),
                regulars: (0..REGULAR_MERCHANTS)
                    .map(|_| weighted_index(pool, rng))
                    .collect(),
            }
        })
        .collect()
}

/// Where an honest cardholder pays: a regular shop, another shop at home, or now and then abroad.
fn honest_merchant(card: &Card, merchants: &[Merchant], rng: &mut StdRng) -> usize {
    if rng.random_bool(REGULAR_SHARE) {
        return card.regulars[rng.random_range(0..card.regulars.len())];
    }
    let abroad = rng.random_bool(ABROAD_SHARE / (1.0 - REGULAR_SHARE));
    let weights: Vec<f64> = merchants
        .iter()
        .map(|m| {
            let here = m.country == card.home;
            if here != abroad {
                CATEGORIES[m.category].honest_share
            } else {
                0.0
            }
        })
        .collect();
    if weights.iter().all(|w| *w == 0.0) {
        return card.regulars[0];
    }
    weighted_index(&weights, rng)
}

/// Where a thief pays: by the appeal of the shop, abroad or in the card's home country.
fn thief_merchant(
    merchants: &[Merchant],
    appeal: &[f64],
    home: usize,
    abroad: bool,
    rng: &mut StdRng,
) -> usize {
    let weights: Vec<f64> = merchants
        .iter()
        .zip(appeal)
        .map(|(m, w)| {
            if (m.country != home) == abroad {
                *w
            } else {
                0.0
            }
        })
        .collect();
    if weights.iter().all(|w| *w == 0.0) {
        return weighted_index(appeal, rng);
    }
    weighted_index(&weights, rng)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    fn story() -> FraudStory {
        let start = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .to_utc();
        generate(&FraudConfig::new(start, 300, 20_000, 7))
    }

    fn str_field<'a>(event: &'a CloudEvent, name: &str) -> &'a str {
        event.data[name].as_str().unwrap()
    }

    #[test]
    fn the_same_settings_give_the_same_stream() {
        let a = story();
        let b = story();
        assert_eq!(a.events, b.events);
        assert_eq!(a.fraudulent, b.fraudulent);
        let start = DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
            .unwrap()
            .to_utc();
        let elsewhere = generate(&FraudConfig::new(start, 300, 20_000, 7));
        assert!(
            elsewhere
                .events
                .iter()
                .all(|e| a.events.iter().all(|f| f.id != e.id))
        );
    }

    #[test]
    fn chargebacks_name_earlier_transactions_of_their_card_and_mostly_stolen_ones() {
        let story = story();
        let mut seen: HashMap<&str, (&str, DateTime<Utc>)> = HashMap::new();
        let (mut disputes, mut of_stolen) = (0, 0);
        let mut times = Vec::new();
        for event in &story.events {
            let time = event.time.unwrap();
            times.push(time);
            match event.event_type.as_str() {
                TRANSACTION => {
                    let amount = event.data["amount"].as_f64().unwrap();
                    assert!(amount.is_finite() && amount > 0.0);
                    seen.insert(str_field(event, "id"), (str_field(event, "card"), time));
                }
                CHARGEBACK => {
                    let tx = str_field(event, "transaction");
                    let (card, at) = seen[tx];
                    assert_eq!(card, str_field(event, "card"));
                    assert!(
                        time >= at + Duration::days(1),
                        "a chargeback a day or more later"
                    );
                    disputes += 1;
                    of_stolen += usize::from(story.fraudulent.contains(tx));
                }
                other => panic!("unexpected event type {other}"),
            }
        }
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
        let fraud_share = story.fraudulent.len() as f64 / seen.len() as f64;
        assert!(
            (0.005..0.05).contains(&fraud_share),
            "fraud share {fraud_share}"
        );
        assert!(
            disputes > 50 && of_stolen * 10 > disputes * 7,
            "{of_stolen} of {disputes}"
        );
    }

    /// The signal is in state: a stolen card's payments stand far from that card's own usual
    /// amounts and in countries it was not used in before, much more often than honest ones.
    #[test]
    fn stolen_cards_stand_out_against_their_own_history_only() {
        let story = story();
        let mut history: BTreeMap<&str, (Vec<f64>, BTreeSet<&str>)> = BTreeMap::new();
        let (mut stolen, mut honest) = ([0usize; 3], [0usize; 3]); // payments, far amounts, new countries
        for event in story.events.iter().filter(|e| e.event_type == TRANSACTION) {
            let (amounts, countries) = history.entry(str_field(event, "card")).or_default();
            let amount = event.data["amount"].as_f64().unwrap().ln();
            let country = str_field(event, "country");
            if amounts.len() >= 5 {
                let mean = amounts.iter().sum::<f64>() / amounts.len() as f64;
                let sd = (amounts.iter().map(|a| (a - mean).powi(2)).sum::<f64>()
                    / amounts.len() as f64)
                    .sqrt()
                    .max(0.1);
                let tally = if story.fraudulent.contains(str_field(event, "id")) {
                    &mut stolen
                } else {
                    &mut honest
                };
                tally[0] += 1;
                tally[1] += usize::from((amount - mean) / sd > 2.0);
                tally[2] += usize::from(!countries.contains(country));
            }
            amounts.push(amount);
            countries.insert(country);
        }
        let rate = |t: [usize; 3], i: usize| t[i] as f64 / t[0].max(1) as f64;
        assert!(stolen[0] > 100, "{stolen:?}");
        assert!(
            rate(stolen, 1) > 5.0 * rate(honest, 1),
            "far amounts {stolen:?} {honest:?}"
        );
        assert!(
            rate(stolen, 2) > 5.0 * rate(honest, 2),
            "new countries {stolen:?} {honest:?}"
        );
    }
}
