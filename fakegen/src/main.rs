//! fakegen: the seeded Kafka load generator (see fakegen/src).

fn main() {}
