"""Stream workers on a NATS JetStream cluster (docs/scale-out.md).

`topology` declares the streams and buckets, `leases` decides which worker owns which
partition, `state` moves a sensor's state with its partition, `source` feeds the service's
batch handler from JetStream as `MqttSource` does from mosquitto.
"""
