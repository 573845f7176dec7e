// MQTT.js over wss:// with a client certificate: a device publishes an event that an
// application receives, both over MQTT over WebSockets.
//
// usage: node mqttjs_ws.js URL SERVER_PEM DEV_CERT DEV_KEY APP_CERT APP_KEY ORG
// Prints "event <topic> <payload>"; exits 0 on success, 1 on failure or timeout.
const fs = require('fs');
const mqtt = require('mqtt');

const [url, serverPem, devCert, devKey, appCert, appKey, org] = process.argv.slice(2);
const tls = (cert, key) => ({
  ca: fs.readFileSync(serverPem),
  cert: fs.readFileSync(cert),
  key: fs.readFileSync(key),
  rejectUnauthorized: true,
  protocolVersion: 4,
  reconnectPeriod: 0,
  connectTimeout: 10000,
});

const fail = (why) => {
  console.log('error', why);
  process.exit(1);
};
setTimeout(() => fail('timeout'), 15000);

const app = mqtt.connect(url, { ...tls(appCert, appKey), clientId: `a:${org}:dash` });
app.on('error', (e) => fail(`app: ${e.message}`));
app.on('connect', () => {
  app.subscribe('iot-2/type/+/id/+/evt/+/fmt/+', { qos: 1 }, (err) => {
    if (err) fail(`subscribe: ${err.message}`);
    const dev = mqtt.connect(url, { ...tls(devCert, devKey), clientId: `d:${org}:sensor:dev1` });
    dev.on('error', (e) => fail(`device: ${e.message}`));
    dev.on('connect', () => dev.publish('iot-2/evt/temp/fmt/json', '{"t":21}', { qos: 1 }));
  });
});
app.on('message', (topic, payload) => {
  console.log('event', topic, payload.toString());
  process.exit(0);
});
