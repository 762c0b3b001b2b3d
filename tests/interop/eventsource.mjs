// Drives the npm `eventsource` package (a WHATWG EventSource for Node) against a tidings server.
//
//   node eventsource.mjs URL COUNT [EVENT_TYPE...]
//
// Prints one JSON line per happening: {"kind":"open"}, {"kind":"error"}, and for every event
// {"kind":"event","type":..,"data":..,"lastEventId":..}. Listens for `message` and for each named
// EVENT_TYPE (EventSource only hands named events to listeners of that name). Exits 0 after COUNT
// events, 2 if they do not come within 20 s. Reconnection (with the Last-Event-ID header) is the
// library's own, which is the point of the test.
import { EventSource } from 'eventsource';

const [url, countArg, ...types] = process.argv.slice(2);
const count = Number(countArg);
if (!url || !Number.isInteger(count)) {
  console.error('usage: node eventsource.mjs URL COUNT [EVENT_TYPE...]');
  process.exit(64);
}

const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const source = new EventSource(url);
let seen = 0;
const onEvent = (e) => {
  print({ kind: 'event', type: e.type, data: e.data, lastEventId: e.lastEventId });
  seen += 1;
  if (seen >= count) {
    source.close();
    process.exit(0);
  }
};
source.addEventListener('open', () => print({ kind: 'open' }));
source.addEventListener('error', () => print({ kind: 'error' }));
source.addEventListener('message', onEvent);
for (const type of types) source.addEventListener(type, onEvent);
setTimeout(() => {
  console.error(`timed out after ${seen} of ${count} events`);
  process.exit(2);
}, 20000);
