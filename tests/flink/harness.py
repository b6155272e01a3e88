"""The Flink SQL side of the differential suite (tests/flink_differential.rs).

One process, one JVM: a PyFlink streaming TableEnvironment (local mini-cluster,
parallelism 1) runs every case the Rust test sends. The protocol is JSON lines:

  stdout, first:  {"ready": true, "flink": "2.0.0", "seconds": ...}
  stdin:          {"case": NAME, "tables": [TABLE, ...], "query": SQL}   (one per case)
                  {"end": true}                                           (no more cases)
  stdout:         {"case": NAME, "columns": [...], "rows": [JSON, ...],
                   "changes": {"+I": n, "-U": n, "+U": n, "-D": n}, "seconds": s}
                  or {"case": NAME, "error": "..."}
  stdout, last:   {"done": true}

TABLE is {"name", "topic", "dimension": bool, "key": column or null,
"columns": [[name, flink type], ...], "rowtime": bool, "end_offset": n}:

- an event stream is a `kafka` table (JSON values); with "rowtime" it also has
  `kf_time TIMESTAMP_LTZ(3)` from the record timestamp and a watermark one hour
  behind it (so that nothing the suite produces is late: interval joins compare
  only the interval bound);
- a dimension is an `upsert-kafka` table whose PRIMARY KEY is "key", read from
  the Kafka key as text (`raw`): the latest value per key, a tombstone deletes.

Every table is bounded by `scan.bounded.mode = specific-offsets` at "end_offset"
(partition 0): Tansu answers the latest offset wrongly, so `latest-offset`
would stop early. The job ends when every source reaches its end.

Rows are the final rows of the query: the changelog that `collect()` returns is
materialised (+I and +U add a row, -U and -D remove one), so a regular join's
retractions (a LEFT join row replaced once its match arrives, a dimension
update) leave only what a Flink sink with upserts would hold at the end.

Each row is written by Flink's own `json` format (its
JsonRowDataSerializationSchema with the format's defaults: TIMESTAMP as
"2024-01-02 03:04:05", NULL fields written, ROW as an object in its fields'
order), from the rows as Flink holds them (`collectInternal`): the text a
Flink job writing the query's rows to Kafka as JSON would write. (PyFlink's
own conversion of rows to Python fails on a NULL inside a ROW or an ARRAY.)

Everything runs in the main thread (the planner keeps state per Java thread);
a few jobs run at once in the mini-cluster while the oldest one's rows are read. The process exits when stdin closes; the JVM is its
child and goes with it (the Rust side also kills the whole process group).
"""

import collections
import importlib.metadata
import json
import os
import sys
import time
import traceback

def say(obj):
    """Writes one JSON line to stdout (the protocol channel)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def log(*parts):
    print("flink-harness:", *parts, file=sys.stderr, flush=True)


def quote(name):
    return "`" + name.replace("`", "``") + "`"


def ddl(table, brokers, group):
    """CREATE TEMPORARY TABLE for one source of a case."""
    cols = ["%s %s" % (quote(n), t) for n, t in table["columns"]]
    bounded = (
        "'scan.bounded.mode' = 'specific-offsets',"
        "'scan.bounded.specific-offsets' = 'partition:0,offset:%d'" % table["end_offset"]
    )
    common = (
        "'topic' = '%s', 'properties.bootstrap.servers' = '%s', 'properties.group.id' = '%s', %s"
        % (table["topic"], brokers, group, bounded)
    )
    if table["dimension"]:
        cols.append("PRIMARY KEY (%s) NOT ENFORCED" % quote(table["key"]))
        options = (
            "'connector' = 'upsert-kafka', 'key.format' = 'raw', 'value.format' = 'json', "
            "'value.fields-include' = 'ALL', " + common
        )
    else:
        if table.get("rowtime"):
            cols.append("kf_time TIMESTAMP_LTZ(3) METADATA FROM 'timestamp'")
            cols.append("WATERMARK FOR kf_time AS kf_time - INTERVAL '1' HOUR")
        options = (
            "'connector' = 'kafka', 'format' = 'json', 'scan.startup.mode' = 'earliest-offset', " + common
        )
    return "CREATE TEMPORARY TABLE %s (\n  %s\n) WITH (%s)" % (quote(table["name"]), ",\n  ".join(cols), options)


def main():
    brokers = os.environ.get("KAFLOWSQL_TEST_BROKERS", "127.0.0.1:9092")
    workers = int(os.environ.get("KAFLOWSQL_FLINK_JOBS", "3"))
    started = time.time()
    from pyflink.java_gateway import get_gateway
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", "1")
    config.set("pipeline.object-reuse", "true")
    # The mini-cluster runs a few jobs at once.
    config.set("taskmanager.numberOfTaskSlots", str(max(workers, 1) * 4))
    say({"ready": True, "flink": importlib.metadata.version("apache-flink"), "seconds": round(time.time() - started, 1)})

    jvm = get_gateway().jvm
    json_format = jvm.org.apache.flink.formats.json
    sql_timestamps = jvm.org.apache.flink.formats.common.TimestampFormat.SQL
    map_null_key_fail = json_format.JsonFormatOptions.MapNullKeyMode.FAIL

    def collect(name, result, began):
        try:
            j = result._j_table_result
            row_type = j.getResolvedSchema().toPhysicalRowDataType().getLogicalType()
            # The `json` format's serializer with its defaults: what a Flink
            # job writing these rows to Kafka as JSON would write.
            writer = json_format.JsonRowDataSerializationSchema(
                row_type, sql_timestamps, map_null_key_fail, "null", False, False)
            writer.open(None)
            rows = collections.Counter()
            changes = collections.Counter()
            it = j.collectInternal()
            try:
                while it.hasNext():
                    row = it.next()
                    kind = row.getRowKind().shortString()
                    changes[kind] += 1
                    text = bytes(writer.serialize(row)).decode("utf-8")
                    rows[text] += 1 if kind in ("+I", "+U") else -1
                    if rows[text] < 0:
                        raise RuntimeError("the changelog retracts a row it never inserted: " + text)
            finally:
                it.close()
            final = [text for text, n in sorted(rows.items()) for _ in range(n)]
            say({"case": name, "columns": list(j.getResolvedSchema().getColumnNames()), "rows": final,
                 "changes": dict(changes), "seconds": round(time.time() - began, 2)})
        except Exception as e:  # reported to the Rust side, which fails the case
            say({"case": name, "error": "%s\n%s" % (e, traceback.format_exc()[-4000:])})

    # Everything goes through this one Python thread: Py4J then keeps one
    # connection, served by one Java thread, the one that created the planner
    # (Flink's planner keeps Calcite state per thread; planning from another
    # thread fails with "NullPointerException: metadataHandlerProvider").
    # Jobs still run at once: up to `workers` are submitted while the oldest
    # one's rows are read.
    pending = collections.deque()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        if req.get("end"):
            break
        name = req["case"]
        began = time.time()
        try:
            for t in req["tables"]:
                env.execute_sql("DROP TEMPORARY TABLE IF EXISTS %s" % quote(t["name"]))
                env.execute_sql(ddl(t, brokers, "kf-flink-" + t["topic"]))
            result = env.execute_sql(req["query"])
        except Exception as e:
            say({"case": name, "error": "%s\n%s" % (e, traceback.format_exc()[-4000:])})
            continue
        pending.append((name, result, began))
        if len(pending) >= max(workers, 1):
            collect(*pending.popleft())
    while pending:
        collect(*pending.popleft())
    say({"done": True, "seconds": round(time.time() - started, 1)})
    # The gateway JVM is a child of this process: closing the gateway ends it.
    try:
        get_gateway().shutdown()
    except Exception:
        pass


if __name__ == "__main__":
    main()
