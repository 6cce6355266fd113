"""The RabbitMQ broker the queue tests use is real: it takes, keeps and survives a crash.

This checks the test support itself (tests/support/rabbitmq.py): a message published as
persistent to a durable queue is still there after the node is SIGKILLed and started
again, which the queue-input and RabbitMQ-destination tests rely on.
"""

from __future__ import annotations

import time
import uuid

import pika

from tests.support.rabbitmq import RabbitMQServer


def test_a_persistent_message_survives_a_broker_crash(rabbitmq: RabbitMQServer) -> None:
    queue = f"support-{uuid.uuid4().hex[:8]}"
    body = uuid.uuid4().bytes
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    channel = conn.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True)
    channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    conn.close()
    time.sleep(2)  # RabbitMQ writes the declaration to disk a moment after confirming it

    rabbitmq.kill()
    rabbitmq.start()

    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        method, _properties, got = conn.channel().basic_get(queue, auto_ack=True)
        assert method is not None and got == body
    finally:
        conn.close()
