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

Each row is written as Flink's `json` format writes it (field names in the
query's order, DOUBLE with a fraction or an exponent, DECIMAL as a plain
number, DATE as "2024-01-02", TIMESTAMP as "2024-01-02 03:04:05[.fff]",
ROW as an object, ARRAY as an array, MAP as an object).

Everything runs in the main thread (the planner keeps state per Java thread);
a few jobs run at once in the mini-cluster while the oldest one's rows are read. The process exits when stdin closes; the JVM is its
child and goes with it (the Rust side also kills the whole process group).
"""

import base64
import collections
import datetime
import decimal
import json
import math
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


def enc(v, t=None):
    """The JSON text of one value of Flink type `t`, as Flink's `json` format writes it."""
    if v is None:
        return "null"
    fields = getattr(t, "fields", None)
    if fields is not None:
        # A ROW: an object with its field names, in order. PyFlink hands a
        # nested ROW over as a Row holding one list, its field values.
        values = list(v)
        if len(values) == 1 and isinstance(values[0], list):
            values = values[0]
        return "{" + ",".join(json.dumps(f.name) + ":" + enc(x, f.data_type) for f, x in zip(fields, values)) + "}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            # Flink writes NaN and infinities as strings.
            return json.dumps("NaN" if v != v else ("Infinity" if v > 0 else "-Infinity"))
        return repr(v)
    if isinstance(v, decimal.Decimal):
        return format(v, "f")
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, datetime.datetime):
        text = v.strftime("%Y-%m-%d %H:%M:%S")
        if v.microsecond:
            text += (".%06d" % v.microsecond).rstrip("0")
        return json.dumps(text)
    if isinstance(v, (datetime.date, datetime.time)):
        return json.dumps(v.isoformat())
    if isinstance(v, (bytes, bytearray)):
        return json.dumps(base64.b64encode(bytes(v)).decode())
    if isinstance(v, dict):
        kt, vt = getattr(t, "key_type", None), getattr(t, "value_type", None)
        return "{" + ",".join(json.dumps(enc(k, kt).strip('"')) + ":" + enc(x, vt) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        et = getattr(t, "element_type", None)
        return "[" + ",".join(enc(x, et) for x in v) + "]"
    raise TypeError("no JSON form for %r (%s)" % (v, type(v)))


def row_json(names, types, row):
    return "{" + ",".join(json.dumps(n, ensure_ascii=False) + ":" + enc(v, t) for n, t, v in zip(names, types, row)) + "}"


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
    from pyflink.table import EnvironmentSettings, TableEnvironment
    from pyflink.common import RowKind

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", "1")
    config.set("pipeline.object-reuse", "true")
    # The mini-cluster runs a few jobs at once.
    config.set("taskmanager.numberOfTaskSlots", str(max(workers, 1) * 4))
    import importlib.metadata

    say({"ready": True, "flink": importlib.metadata.version("apache-flink"), "seconds": round(time.time() - started, 1)})

    kinds = {
        RowKind.INSERT: ("+I", 1),
        RowKind.UPDATE_BEFORE: ("-U", -1),
        RowKind.UPDATE_AFTER: ("+U", 1),
        RowKind.DELETE: ("-D", -1),
    }

    def collect(name, result, began):
        try:
            schema = result.get_table_schema()
            names = list(schema.get_field_names())
            types = list(schema.get_field_data_types())
            rows = collections.Counter()
            changes = collections.Counter()
            with result.collect() as it:
                for row in it:
                    kind, sign = kinds[row.get_row_kind()]
                    changes[kind] += 1
                    text = row_json(names, types, row)
                    rows[text] += sign
                    if rows[text] < 0:
                        raise RuntimeError("the changelog retracts a row it never inserted: " + text)
            final = [text for text, n in sorted(rows.items()) for _ in range(n)]
            say({"case": name, "columns": names, "rows": final, "changes": dict(changes),
                 "seconds": round(time.time() - began, 2)})
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
        from pyflink.java_gateway import get_gateway

        get_gateway().shutdown()
    except Exception:
        pass


if __name__ == "__main__":
    main()
