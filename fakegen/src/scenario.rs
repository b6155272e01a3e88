//! The data of each scenario: dimension records (produced first) and event
//! records, all derived from a seed so the same seed gives the same data.

/// A small deterministic generator (xorshift64*), so runs are reproducible.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// True with probability p.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Which data set to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// user_events + user_profiles (dimension) + transactions (stream).
    UserEvents,
    /// trades keyed by symbol + dim_symbols + dim_traders.
    Trades,
    /// sensor_readings + device_metadata (dimension).
    Iot,
    /// orders + payments (stream-stream join).
    Orders,
}

/// One record to produce.
pub struct Record {
    /// Topic (before any prefix).
    pub topic: &'static str,
    /// Key.
    pub key: String,
    /// JSON value.
    pub value: String,
}

const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
const COUNTRIES: [&str; 5] = ["DE", "FR", "US", "BR", "JP"];
const EVENTS: [&str; 5] = ["click", "view", "purchase", "search", "heartbeat"];
const SECTORS: [&str; 4] = ["Technology", "Energy", "Finance", "Health"];
const DESKS: [&str; 3] = ["Equities", "Derivatives", "Macro"];
const METHODS: [&str; 3] = ["card", "cash", "transfer"];

impl Scenario {
    /// Every topic of the scenario: (name, is a dimension).
    pub fn topics(self) -> &'static [(&'static str, bool)] {
        match self {
            Scenario::UserEvents => &[
                ("user_profiles", true),
                ("user_events", false),
                ("transactions", false),
            ],
            Scenario::Trades => &[
                ("dim_symbols", true),
                ("dim_traders", true),
                ("trades", false),
            ],
            Scenario::Iot => &[("device_metadata", true), ("sensor_readings", false)],
            Scenario::Orders => &[("orders", false), ("payments", false)],
        }
    }

    /// Default partition count of the scenario's topics.
    pub fn default_partitions(self) -> i32 {
        match self {
            Scenario::Trades => 12,
            _ => 1,
        }
    }

    /// Dimension records for `keys` keys; a share `hit_rate` of event keys will find one.
    pub fn dimensions(self, keys: u64, hit_rate: f64, rng: &mut Rng) -> Vec<Record> {
        let with_dim = ((keys as f64) * hit_rate).round() as u64;
        let mut out = Vec::new();
        match self {
            Scenario::UserEvents => {
                for k in 0..with_dim {
                    out.push(Record {
                        topic: "user_profiles",
                        key: format!("u{k}"),
                        value: format!(
                            r#"{{"user_id":"u{k}","plan":"{}","country":"{}"}}"#,
                            PLANS[rng.below(3) as usize],
                            COUNTRIES[rng.below(5) as usize]
                        ),
                    });
                }
            }
            Scenario::Trades => {
                for k in 0..with_dim {
                    out.push(Record {
                        topic: "dim_symbols",
                        key: format!("S{k}"),
                        value: format!(
                            r#"{{"symbol":"S{k}","name":"Company {k}","sector":"{}"}}"#,
                            SECTORS[rng.below(4) as usize]
                        ),
                    });
                }
                for t in 0..(keys / 10).max(1) {
                    out.push(Record {
                        topic: "dim_traders",
                        key: format!("T{t}"),
                        value: format!(
                            r#"{{"trader_id":"T{t}","desk":"{}","region":"{}"}}"#,
                            DESKS[rng.below(3) as usize],
                            COUNTRIES[rng.below(5) as usize]
                        ),
                    });
                }
            }
            Scenario::Iot => {
                for k in 0..with_dim {
                    out.push(Record {
                        topic: "device_metadata",
                        key: format!("d{k}"),
                        value: format!(
                            r#"{{"device_id":"d{k}","location":"site-{}","model":"TX-{}","max_temp":{}}}"#,
                            rng.below(20),
                            rng.below(9),
                            40 + rng.below(50)
                        ),
                    });
                }
            }
            Scenario::Orders => {}
        }
        out
    }

    /// The `i`-th event (may be more than one record: an order and its payment).
    pub fn event(
        self,
        i: u64,
        keys: u64,
        hit_rate: f64,
        now_ms: i64,
        rng: &mut Rng,
        out: &mut Vec<Record>,
    ) {
        let k = rng.below(keys.max(1));
        match self {
            Scenario::UserEvents => {
                out.push(Record {
                    topic: "user_events",
                    key: format!("u{k}"),
                    value: format!(
                        r#"{{"user_id":"u{k}","event_type":"{}","ts":{now_ms}}}"#,
                        EVENTS[rng.below(5) as usize]
                    ),
                });
                if rng.below(10) == 0 {
                    out.push(Record {
                        topic: "transactions",
                        key: format!("u{k}"),
                        value: format!(r#"{{"user_id":"u{k}","amount":{}.{:02}}}"#, rng.below(500), rng.below(100)),
                    });
                }
            }
            Scenario::Trades => out.push(Record {
                topic: "trades",
                key: format!("S{k}"),
                value: format!(
                    r#"{{"trade_id":{i},"symbol":"S{k}","trader_id":"T{}","qty":{},"price":{}.{:02}}}"#,
                    rng.below((keys / 10).max(1)),
                    1 + rng.below(1000),
                    1 + rng.below(900),
                    rng.below(100)
                ),
            }),
            Scenario::Iot => out.push(Record {
                topic: "sensor_readings",
                key: format!("d{k}"),
                value: format!(
                    r#"{{"device_id":"d{k}","temperature":{}.{},"humidity":{}}}"#,
                    rng.below(100),
                    rng.below(10),
                    rng.below(100)
                ),
            }),
            Scenario::Orders => {
                out.push(Record {
                    topic: "orders",
                    key: format!("o{i}"),
                    value: format!(
                        r#"{{"order_id":"o{i}","customer_id":"c{k}","total":{}.0}}"#,
                        1 + rng.below(500)
                    ),
                });
                if rng.chance(hit_rate) {
                    out.push(Record {
                        topic: "payments",
                        key: format!("o{i}"),
                        value: format!(
                            r#"{{"payment_id":"p{i}","order_id":"o{i}","amount":{}.0,"method":"{}"}}"#,
                            1 + rng.below(500),
                            METHODS[rng.below(3) as usize]
                        ),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_data() {
        let gen = |seed| {
            let mut rng = Rng::new(seed);
            let mut out = Vec::new();
            for i in 0..50 {
                Scenario::Orders.event(i, 10, 0.5, 0, &mut rng, &mut out);
            }
            out.into_iter().map(|r| r.value).collect::<Vec<_>>()
        };
        assert_eq!(gen(7), gen(7));
        assert_ne!(gen(7), gen(8));
    }

    #[test]
    fn hit_rate_sets_the_share_of_keys_with_a_dimension() {
        let mut rng = Rng::new(1);
        assert_eq!(
            Scenario::UserEvents.dimensions(1000, 0.95, &mut rng).len(),
            950
        );
        assert_eq!(Scenario::Iot.dimensions(1000, 0.75, &mut rng).len(), 750);
    }
}
