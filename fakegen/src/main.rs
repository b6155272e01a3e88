//! fakegen: a seeded Kafka load generator for kaflowsql's benchmarks and demo.
//!
//! `fakegen --scenario user-events --rate 50000 --duration 10m --brokers localhost:9092`
//! produces the scenario's dimensions first, then events at a steady rate (a
//! token bucket; `--rate 0` is as fast as possible), prints a progress line
//! every second and a summary, and exits non-zero if any delivery failed.
//! Every event's Kafka timestamp is its production time, so end-to-end
//! latency can be measured from it.

mod avro;
mod scenario;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use scenario::{Record, Rng, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "fakegen",
    version,
    about = "Seeded Kafka load generator for kaflowsql"
)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FAKEGEN_BROKERS", default_value = "localhost:9092")]
    brokers: String,
    /// Which data set.
    #[arg(
        long,
        env = "FAKEGEN_SCENARIO",
        value_enum,
        default_value = "user-events"
    )]
    scenario: Scenario,
    /// Only these topics of the scenario (comma-separated), as in the guide's example.
    #[arg(long, env = "FAKEGEN_TOPICS", value_delimiter = ',')]
    topics: Vec<String>,
    /// Events per second; 0 is as fast as possible.
    #[arg(long, env = "FAKEGEN_RATE", default_value_t = 1000)]
    rate: u64,
    /// How long to produce events (500ms, 30s, 10m, 1h); ignored with --count.
    #[arg(long, env = "FAKEGEN_DURATION", default_value = "10s")]
    duration: String,
    /// Produce exactly this many events.
    #[arg(long, env = "FAKEGEN_COUNT")]
    count: Option<u64>,
    /// Number of distinct keys.
    #[arg(long, env = "FAKEGEN_KEYS", default_value_t = 10_000)]
    keys: u64,
    /// Share of events whose key has a match (dimension row or payment).
    #[arg(long, env = "FAKEGEN_HIT_RATE", default_value_t = 0.95)]
    hit_rate: f64,
    /// Partitions of created topics (default: the scenario's, 12 for trades).
    #[arg(long, env = "FAKEGEN_PARTITIONS")]
    partitions: Option<i32>,
    /// Create the topics first (existing ones are kept).
    #[arg(long, env = "FAKEGEN_CREATE_TOPICS")]
    create_topics: bool,
    /// Prefix added to every topic name.
    #[arg(long, env = "FAKEGEN_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// Seed: the same seed gives the same data.
    #[arg(long, env = "FAKEGEN_SEED", default_value_t = 42)]
    seed: u64,
    /// A librdkafka property for the admin client and the producer, as
    /// `name=value` (repeatable): TLS and SASL to a secured cluster, for
    /// example `-X security.protocol=SSL -X ssl.ca.location=ca.pem`.
    #[arg(short = 'X', long = "property", value_name = "NAME=VALUE", value_parser = property)]
    properties: Vec<(String, String)>,
    /// Value format: `json`, or `avro` in Confluent's wire format with
    /// each topic's schema registered in the schema registry.
    #[arg(long, env = "FAKEGEN_FORMAT", value_enum, default_value = "json")]
    format: Format,
    /// The schema registry of `--format avro`.
    #[arg(
        long,
        env = "FAKEGEN_SCHEMA_REGISTRY",
        default_value = "http://localhost:8081"
    )]
    schema_registry: String,
    /// Skip the dimension records.
    #[arg(long, env = "FAKEGEN_NO_DIMENSIONS")]
    no_dimensions: bool,
}

/// How record values are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// The scenario's JSON objects.
    Json,
    /// Avro (Confluent's wire format) through the schema registry.
    Avro,
}

/// The value bytes of each record in the chosen format.
struct Values {
    avro: Option<avro::AvroTopics>,
    buf: Vec<u8>,
}

impl Values {
    fn of<'a>(&'a mut self, topic: &str, r: &'a Record) -> anyhow::Result<&'a [u8]> {
        match &mut self.avro {
            None => Ok(r.value.as_bytes()),
            Some(a) => {
                a.encode(topic, &r.value, &mut self.buf)?;
                Ok(&self.buf)
            }
        }
    }
}

#[derive(Default)]
struct Delivery {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Counting(Arc<Delivery>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("`{text}` is not a duration such as 30s or 10m"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1_000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => bail!("`{text}` has no unit; write 500ms, 30s, 10m, 1h or 7d"),
    };
    Ok(Duration::from_millis(ms))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn create_topics(args: &Args, names: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = with_properties(ClientConfig::new(), args)
        .set("bootstrap.servers", &args.brokers)
        .create()
        .context("cannot create the Kafka admin client")?;
    let partitions = args
        .partitions
        .unwrap_or(args.scenario.default_partitions());
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for the admin client")?;
    let results = rt
        .block_on(admin.create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .with_context(|| format!("cannot create topics on {}", args.brokers))?;
    for r in results {
        match r {
            Ok(t) => eprintln!("fakegen: created topic {t} ({partitions} partitions)"),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                eprintln!("fakegen: topic {t} exists")
            }
            Err((t, e)) => bail!("cannot create topic {t}: {e}"),
        }
    }
    Ok(())
}

fn send(
    producer: &BaseProducer<Counting>,
    topic: &str,
    r: &Record,
    value: &[u8],
    ts: i64,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic)
        .key(&r.key)
        .payload(value)
        .timestamp(ts);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                producer.poll(Duration::from_millis(5));
                record = back;
            }
            Err((e, _)) => bail!("cannot produce to {topic}: {e}"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.hit_rate) {
        bail!(
            "--hit-rate is a share between 0 and 1, not {}",
            args.hit_rate
        );
    }
    let all = args.scenario.topics();
    for t in &args.topics {
        if !all.iter().any(|(n, _)| n == t) {
            let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
            bail!(
                "topic `{t}` is not part of scenario {:?}; its topics are {}",
                args.scenario,
                names.join(", ")
            );
        }
    }
    let wanted = |t: &str| args.topics.is_empty() || args.topics.iter().any(|x| x == t);
    let name = |t: &str| format!("{}{t}", args.topic_prefix);
    if args.create_topics {
        let names: Vec<String> = all
            .iter()
            .filter(|(t, _)| wanted(t))
            .map(|(t, _)| name(t))
            .collect();
        create_topics(&args, &names)?;
    }
    let delivery = Arc::new(Delivery::default());
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000");
    let producer: BaseProducer<Counting> = with_properties(config, &args)
        .create_with_context(Counting(delivery.clone()))
        .context("cannot create the producer")?;
    let mut rng = Rng::new(args.seed);
    let mut values = Values {
        avro: (args.format == Format::Avro).then(|| avro::AvroTopics::new(&args.schema_registry)),
        buf: Vec::new(),
    };
    let started = Instant::now();

    let mut dims = 0u64;
    if !args.no_dimensions {
        for r in args.scenario.dimensions(args.keys, args.hit_rate, &mut rng) {
            if wanted(r.topic) {
                let topic = name(r.topic);
                let value = values.of(&topic, &r)?;
                send(&producer, &topic, &r, value, now_ms())?;
                dims += 1;
                producer.poll(Duration::ZERO);
            }
        }
        producer
            .flush(Duration::from_secs(60))
            .context("dimension records were not delivered within 60 s")?;
        eprintln!("fakegen: {dims} dimension records delivered");
    }

    let limit = match args.count {
        Some(n) => (Some(n), None),
        None => (None, Some(parse_duration(&args.duration)?)),
    };
    let events_started = Instant::now();
    let mut sent = 0u64;
    let mut records = 0u64;
    let mut i = 0u64;
    let mut batch = Vec::new();
    let mut last_report = Instant::now();
    let mut behind_reported = false;
    loop {
        if let Some(n) = limit.0 {
            if i >= n {
                break;
            }
        }
        if let Some(d) = limit.1 {
            if events_started.elapsed() >= d {
                break;
            }
        }
        // Token bucket: event i is due at i / rate seconds after the start.
        if args.rate > 0 {
            let due = Duration::from_secs_f64(i as f64 / args.rate as f64);
            let elapsed = events_started.elapsed();
            if due > elapsed {
                producer.poll(Duration::ZERO);
                std::thread::sleep((due - elapsed).min(Duration::from_millis(2)));
                continue;
            }
            if elapsed - due > Duration::from_secs(1) && !behind_reported {
                eprintln!(
                    "fakegen: cannot keep {} events/s; falling behind",
                    args.rate
                );
                behind_reported = true;
            }
        }
        batch.clear();
        args.scenario
            .event(i, args.keys, args.hit_rate, now_ms(), &mut rng, &mut batch);
        let ts = now_ms();
        for r in &batch {
            if wanted(r.topic) {
                let topic = name(r.topic);
                let value = values.of(&topic, r)?;
                send(&producer, &topic, r, value, ts)?;
                records += 1;
            }
        }
        i += 1;
        sent += 1;
        if sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let secs = events_started.elapsed().as_secs_f64();
            eprintln!(
                "fakegen: {sent} events ({records} records) in {secs:.1}s, {:.0} events/s, {} delivered, {} errors",
                sent as f64 / secs,
                delivery.ok.load(Ordering::Relaxed),
                delivery.failed.load(Ordering::Relaxed)
            );
            last_report = Instant::now();
        }
    }
    let flushed = producer.flush(Duration::from_secs(60));
    let secs = events_started.elapsed().as_secs_f64().max(1e-9);
    let failed = delivery.failed.load(Ordering::Relaxed);
    println!(
        "fakegen: done: scenario {:?}, {sent} events ({records} records) + {dims} dimension records in {:.2}s ({:.0} events/s), {} delivered, {failed} failed",
        args.scenario,
        started.elapsed().as_secs_f64(),
        sent as f64 / secs,
        delivery.ok.load(Ordering::Relaxed)
    );
    if failed > 0 || flushed.is_err() {
        bail!("{failed} records failed delivery (or the final flush timed out)");
    }
    Ok(())
}

/// `name=value` of `-X`.
fn property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

/// `config` with the `-X` properties on top.
fn with_properties(mut config: ClientConfig, args: &Args) -> ClientConfig {
    for (name, value) in &args.properties {
        config.set(name, value);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_name_equals_value() {
        assert_eq!(
            property("ssl.ca.location=/a=b.pem"),
            Ok(("ssl.ca.location".to_string(), "/a=b.pem".to_string()))
        );
        assert!(property("security.protocol").is_err());
        assert!(property("=x").is_err());
    }
}
