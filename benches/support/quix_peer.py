"""The peer for the end-to-end benchmark: the IoT enrichment of
pipelines/iot.yaml written with Quix Streams, as a user would write it.

It reads the device metadata topic to its end into a dict (the dimension),
then runs a Quix Streams application over the sensor readings: drop readings
without a temperature or from unknown devices, add location, model and status,
and produce JSON to the output topic, keyed by device id.

usage: quix_peer.py BROKERS TOPIC_PREFIX CONSUMER_GROUP STATE_DIR
"""
import json
import sys

from confluent_kafka import Consumer, KafkaError, TopicPartition
from quixstreams import Application

brokers, prefix, group, state_dir = sys.argv[1:5]

# The dimension, read to its end first (kaflowsql does the same before any output).
# The end is where the fetch reports end-of-partition: Tansu answers ListOffsets
# (get_watermark_offsets) with a wrong, too small high watermark (the base
# offset of the last batch + 1), so stopping there would load only part of it.
devices = {}
c = Consumer({
    "bootstrap.servers": brokers,
    "group.id": group + "-dims",
    "enable.auto.commit": False,
    "enable.partition.eof": True,
})
c.assign([TopicPartition(prefix + "device_metadata", 0, 0)])
idle = 0
while idle < 100:  # 10 s without a record or end-of-partition: give up waiting
    msg = c.poll(0.1)
    if msg is None:
        idle += 1
        continue
    if msg.error():
        if msg.error().code() == KafkaError._PARTITION_EOF:
            break
        raise SystemExit(f"dimension read failed: {msg.error()}")
    idle = 0
    meta = json.loads(msg.value())
    devices[meta["device_id"]] = meta
c.close()


def enrich(reading):
    meta = devices.get(reading.get("device_id"))
    if meta is None or reading.get("temperature") is None:
        return None
    return {
        "device_id": reading["device_id"],
        "temperature": reading["temperature"],
        "humidity": reading.get("humidity"),
        "location": meta.get("location"),
        "model": meta.get("model"),
        "status": "ALERT" if reading["temperature"] > meta.get("max_temp", 0) else "OK",
    }


app = Application(
    broker_address=brokers,
    consumer_group=group,
    auto_offset_reset="earliest",
    state_dir=state_dir,
    use_changelog_topics=False,
    # The same group timing as kaflowsql gets in the benchmark (Tansu makes a
    # first join wait half the session timeout).
    consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "max.poll.interval.ms": 30000},
)
readings = app.topic(prefix + "sensor_readings", value_deserializer="json")
output = app.topic(prefix + "enriched", value_serializer="json")
sdf = app.dataframe(readings)
sdf = sdf.apply(enrich).filter(lambda v: v is not None)
sdf.to_topic(output)
app.run()
