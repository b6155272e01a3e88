"""The iot scenario's enrichment in Flink SQL 2.0, the e2e benchmark's peer
(benches/support/e2e_harness.rs, `flink_peer`).

    flink_peer.py BROKERS PREFIX GROUP PARALLELISM

Reads PREFIX + sensor_readings and PREFIX + device_metadata (JSON, from the
earliest offset), runs the same query as pipelines/iot.yaml as a regular
INNER JOIN (the device records are an append-only `kafka` table: one record
per device, so every reading gives exactly one row), and writes JSON rows to
PREFIX + enriched. Runs until killed; the harness counts the outputs.

Its best honest configuration here: a local mini-cluster, PARALLELISM tasks,
object reuse on, checkpointing off (none configured), idle state kept 5 min
(the pipeline's TTL), the consumer's fetch wait 10 ms, the producer's
linger 5 ms and lz4, delivery guarantee none (kaflowsql's sink is
at-least-once; Flink's at-least-once sink needs checkpoints, which cost more).
"""

import sys

from pyflink.table import EnvironmentSettings, TableEnvironment


def main():
    brokers, prefix, group, parallelism = sys.argv[1:5]
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", parallelism)
    config.set("taskmanager.numberOfTaskSlots", parallelism)
    config.set("pipeline.object-reuse", "true")
    config.set("table.exec.state.ttl", "5 min")
    source = (
        "'connector' = 'kafka', 'format' = 'json', 'scan.startup.mode' = 'earliest-offset', "
        "'properties.bootstrap.servers' = '%s', 'properties.group.id' = '%s', "
        "'properties.fetch.max.wait.ms' = '10', 'json.ignore-parse-errors' = 'false'"
    ) % (brokers, group)
    env.execute_sql(
        "CREATE TABLE readings (device_id STRING, temperature DOUBLE, humidity BIGINT) "
        "WITH ('topic' = '%ssensor_readings', %s)" % (prefix, source)
    )
    env.execute_sql(
        "CREATE TABLE devices (device_id STRING, location STRING, `model` STRING, max_temp BIGINT) "
        "WITH ('topic' = '%sdevice_metadata', %s)" % (prefix, source)
    )
    env.execute_sql(
        "CREATE TABLE enriched (device_id STRING, temperature DOUBLE, humidity BIGINT, "
        "location STRING, `model` STRING, status STRING) WITH ("
        "'connector' = 'kafka', 'format' = 'json', 'topic' = '%senriched', "
        "'properties.bootstrap.servers' = '%s', 'properties.linger.ms' = '5', "
        "'properties.compression.type' = 'lz4', 'sink.delivery-guarantee' = 'none')"
        % (prefix, brokers)
    )
    result = env.execute_sql(
        "INSERT INTO enriched "
        "SELECT r.device_id, r.temperature, r.humidity, m.location, m.`model`, "
        "CASE WHEN r.temperature > m.max_temp THEN 'ALERT' ELSE 'OK' END AS status "
        "FROM readings r JOIN devices m ON r.device_id = m.device_id "
        "WHERE r.temperature IS NOT NULL"
    )
    print("flink-peer: job submitted", file=sys.stderr, flush=True)
    result.wait()


if __name__ == "__main__":
    main()
