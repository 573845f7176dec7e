"""Eclipse Paho (Python) against certmq: a device event reaches an application, and the
application's command reaches the device, over mTLS with SNI from the host name.

usage: paho_roundtrip.py HOST PORT SERVER_PEM DEV_CERT DEV_KEY APP_CERT APP_KEY [websockets]
With "websockets" both clients use MQTT over WebSockets (path /mqtt) instead of TCP.
Prints "event <topic>" and "command <topic>"; exits 0 on success, 1 on timeout.
"""
import ssl
import sys
import threading

import paho.mqtt.client as mqtt

host, port, server_pem, dev_cert, dev_key, app_cert, app_key = sys.argv[1:8]
port = int(port)
transport = sys.argv[8] if len(sys.argv) > 8 else "tcp"
done = threading.Event()


def make(client_id, cert, key):
    try:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport)
    except AttributeError:  # paho-mqtt 1.x
        c = mqtt.Client(client_id=client_id, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    c.tls_set(ca_certs=server_pem, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return c


subscribed = {"app": threading.Event(), "dev": threading.Event()}
app = make("a:acme:dash", app_cert, app_key)
dev = make("d:acme:sensor:dev1", dev_cert, dev_key)


def on_app_message(client, userdata, msg):
    print("event", msg.topic, flush=True)
    client.publish("iot-2/type/sensor/id/dev1/cmd/reboot/fmt/json", b"{}", qos=1)


def on_dev_message(client, userdata, msg):
    print("command", msg.topic, flush=True)
    done.set()


app.on_message = on_app_message
dev.on_message = on_dev_message
app.on_subscribe = lambda *a, **k: subscribed["app"].set()
dev.on_subscribe = lambda *a, **k: subscribed["dev"].set()

app.connect(host, port)
app.loop_start()
app.subscribe("iot-2/type/+/id/+/evt/+/fmt/+", qos=1)
dev.connect(host, port)
dev.loop_start()
dev.subscribe("iot-2/cmd/+/fmt/+", qos=1)
if not (subscribed["app"].wait(10) and subscribed["dev"].wait(10)):
    print("subscribe timed out", flush=True)
    sys.exit(1)
dev.publish("iot-2/evt/temp/fmt/json", b'{"t":21}', qos=1)
ok = done.wait(10)
app.loop_stop()
dev.loop_stop()
sys.exit(0 if ok else 1)
