// Drives Debian's headless Chromium (playwright-core, no downloaded browser) through one
// scenario against running tidings servers; tests/browser.rs starts the servers and runs it:
//
//   node run.mjs SCENARIO BASE_URL [OTHER_URL...]
//
// The Rust test owns the servers' application side (its Hub), so this script asks it for what
// only the server can do, one JSON line each on stdout, and reads the answer, one JSON line, on
// stdin:
//
//   {"ask":"publish","items":[{"topic":..,"data":..,"json":bool,"event":..}]} → {"cursors":[..]}
//   {"ask":"close","transport":"ws"|"sse","then":[items]}  closes every open connection of that
//       transport server-side, then publishes `then` while none is open → {"closed":[..],"cursors":[..]}
//   {"ask":"connections"} → {"connections":[{"conn","transport","last_event_id","origin"}..]}
//   {"ask":"request","conn":N,"event":..,"data":..} the application asks a client → {"answer"|"error"}
//
// The last line it prints is {"result": ...}: what the browser saw, which the Rust test checks.
// It exits 0 when the scenario ran to its end, 1 on a failure (a timeout waiting for the
// browser, an uncaught error in a page), 3 when the whole run takes longer than 90 s. Nothing
// sleeps: every wait is for a condition in the page (waitForFunction, waitForSelector), bounded.
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const [scenario, base, ...others] = process.argv.slice(2);
if (!scenario || !base) {
  console.error('usage: node run.mjs SCENARIO BASE_URL [OTHER_URL...]');
  process.exit(64);
}

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
// A server certificate to trust (made by the test, PEM): Chromium trusts it by the hash of its
// public key, as it would a certificate of a CA in its store.
if (process.env.TIDINGS_TRUST_CERT) {
  const cert = new X509Certificate(readFileSync(process.env.TIDINGS_TRUST_CERT));
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  FLAGS.push(`--ignore-certificate-errors-spki-list=${createHash('sha256').update(spki).digest('base64')}`);
}
const WAIT_MS = 15000;

setTimeout(() => {
  console.error(`scenario ${scenario}: no result within 90 s`);
  process.exit(3);
}, 90000).unref();

// ---- talking to the Rust test ---------------------------------------------------------------

const lines = readline.createInterface({ input: process.stdin });
const queued = [];
let waiting = null;
lines.on('line', (line) => {
  const value = JSON.parse(line);
  if (waiting) {
    const w = waiting;
    waiting = null;
    w(value);
  } else queued.push(value);
});

/** Asks the Rust test for something only the server side can do; resolves with its answer. */
function ask(question) {
  process.stdout.write(JSON.stringify(question) + '\n');
  if (queued.length > 0) return Promise.resolve(queued.shift());
  return new Promise((resolve) => {
    waiting = resolve;
  });
}

const text = (topic, data, extra = {}) => ({ topic, data, json: false, ...extra });

// ---- the browser ----------------------------------------------------------------------------

const userDataDir = mkdtempSync(join(tmpdir(), 'tidings-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.TIDINGS_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: FLAGS,
  timeout: 30000,
});
context.setDefaultTimeout(WAIT_MS);
const pageErrors = [];

/** A page at `url`; uncaught errors in it fail the scenario, as do console errors unless
 * `refusals` is set (a page the server refuses logs them). */
async function newPage(url, { refusals = false } = {}) {
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${url}: ${e.stack ?? e}`));
  page.on('console', (m) => {
    if (refusals) return;
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) {
      pageErrors.push(`${url}: console: ${m.text()}`);
    }
  });
  await page.goto(url);
  return page;
}

/** Waits until `expr` (a function run in the page, with `arg`) is truthy. */
function until(page, fn, arg) {
  return page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 'raf' });
}

// ---- scenarios ------------------------------------------------------------------------------

const scenarios = {
  /** (a) The demo page: subscribe with wildcards, receive, publish, drop and reconnect. */
  async demo() {
    const page = await newPage(base + '/');
    await page.waitForSelector('#state.open');
    await page.fill('#topics', 'demo.* news.>');
    await page.click('#subscribe');
    await page.waitForSelector('#subs li[data-pattern="demo.*"][data-ready]');
    await page.waitForSelector('#subs li[data-pattern="news.>"][data-ready]');
    const fromServer = await ask({
      ask: 'publish',
      items: [
        text('demo.server', 'from the server'),
        text('other.topic', 'not subscribed'),
        { topic: 'news.eu.fr', data: '{"n":1}', json: true, event: 'headline' },
      ],
    });
    await until(page, (n) => document.querySelectorAll('#log tr[data-kind=event]').length >= n, 2);
    // Publish through the form.
    await page.fill('#pub-topic', 'demo.ui');
    await page.fill('#pub-event', 'note');
    await page.fill('#pub-data', '{"text": "hi from the UI"}');
    await page.click('#publish');
    await page.waitForSelector('#pub-result[data-cursor]');
    await until(page, (n) => document.querySelectorAll('#log tr[data-kind=event]').length >= n, 3);
    // Drop the connection: it comes back by itself.
    await page.click('#drop');
    await page.waitForSelector('#state.reconnecting');
    await page.waitForSelector('#state.open');
    const after = await ask({ ask: 'publish', items: [text('demo.after', 'after the reconnect')] });
    await until(page, (n) => document.querySelectorAll('#log tr[data-kind=event]').length >= n, 4);
    // Unsubscribe from news.> with its × button: its events stop, demo.* still arrives.
    await page.click('#subs li[data-pattern="news.>"] button');
    await page.waitForSelector('#subs li[data-pattern="news.>"]', { state: 'detached' });
    const last = await ask({
      ask: 'publish',
      items: [text('news.late', 'unsubscribed'), text('demo.last', 'still subscribed')],
    });
    await until(page, (n) => document.querySelectorAll('#log tr[data-kind=event]').length >= n, 5);
    const rows = await page.$$eval('#log tr', (trs) =>
      trs.reverse().map((tr) => ({
        kind: tr.dataset.kind,
        cells: [...tr.children].slice(2).map((td) => td.textContent),
      })),
    );
    return {
      published: [...fromServer.cursors, ...after.cursors, ...last.cursors],
      ui_cursor: await page.getAttribute('#pub-result', 'data-cursor'),
      ui_result: await page.textContent('#pub-result'),
      rows,
      state: await page.textContent('#state'),
      cursor: await page.textContent('#cursor'),
      reconnects: await page.textContent('#reconnects'),
    };
  },

  /** (b) tidings.js after the server drops its WebSocket: exactly the events missed, in order. */
  async resume() {
    // Any page of the server's origin will do; /healthz is a plain one with nothing running.
    const page = await newPage(base + '/healthz');
    const conn = await page.evaluate(async () => {
      const { Tidings } = await import('/tidings.js');
      window.got = [];
      window.states = [];
      const client = new Tidings({ reconnect: { jitter: 0.5 } });
      window.client = client;
      client.on('state', (s) =>
        states.push({
          state: s.state,
          conn: s.conn,
          resumedFrom: s.resumedFrom,
          error: s.error?.code,
        }),
      );
      client.on('gap', (g) => got.push({ gap: g }));
      const sub = client.subscribe(['r.*', 'q.>'], (ev) =>
        got.push({ topic: ev.topic, cursor: ev.cursor, data: ev.data }),
      );
      await sub.ready;
      return client.welcome.conn;
    });
    const before = await ask({
      ask: 'publish',
      items: [text('r.a', 'one'), text('q.x.y', 'two'), text('s.no', 'not subscribed')],
    });
    await until(page, () => got.length >= 2);
    const cursorBefore = await page.evaluate(() => client.cursor);
    const drop = await ask({
      ask: 'close',
      transport: 'ws',
      then: [
        text('r.b', 'three'),
        { topic: 'q.z', data: '{"four":4}', json: true },
        text('s.no', 'not subscribed'),
        text('r.c', 'five'),
      ],
    });
    await until(page, () => got.length >= 5 && states.at(-1).state === 'open');
    const live = await ask({ ask: 'publish', items: [text('r.d', 'six, live')] });
    await until(page, () => got.length >= 6);
    return {
      conn,
      cursor_before: cursorBefore,
      published: [...before.cursors, ...drop.cursors, ...live.cursors],
      closed: drop.closed,
      got: await page.evaluate(() => got),
      states: await page.evaluate(() => states),
      cursor: await page.evaluate(() => client.cursor),
      connections: (await ask({ ask: 'connections' })).connections,
    };
  },

  /** (c) A plain EventSource reconnects by itself with Last-Event-ID after the stream ends. */
  /**
   * (g) Over https:// with HTTP/2: the demo page loads, ten EventSources of one page are open
   * at once on its origin (over HTTP/1.1 a browser allows six connections per origin), each
   * gets a live event, and after the server ends every stream each resumes with its
   * Last-Event-ID and gets exactly the events it missed.
   */
  async https() {
    const page = await newPage(base + '/');
    const protocol = await page.evaluate(
      () => performance.getEntriesByType('navigation')[0].nextHopProtocol,
    );
    await page.evaluate(() => {
      window.streams = [];
      for (let i = 0; i < 10; i++) {
        const s = { opens: 0, got: [] };
        const es = new EventSource('/sse?topic=h.*');
        es.onopen = () => s.opens++;
        es.onmessage = (e) => s.got.push({ data: e.data, id: e.lastEventId });
        streams.push(s);
      }
    });
    await until(page, () => streams.every((s) => s.opens === 1));
    const live = await ask({ ask: 'publish', items: [text('h.a', 'to all ten')] });
    await until(page, () => streams.every((s) => s.got.length === 1));
    const drop = await ask({
      ask: 'close',
      transport: 'sse',
      then: [text('h.b', 'missed one'), text('h.c', 'missed two')],
    });
    await until(page, () => streams.every((s) => s.opens === 2 && s.got.length === 3));
    return {
      protocol,
      title: await page.title(),
      published: [...live.cursors, ...drop.cursors],
      closed: drop.closed,
      streams: await page.evaluate(() => streams),
    };
  },

  async eventsource() {
    const page = await newPage(base + '/healthz');
    await page.evaluate(() => {
      window.got = [];
      window.opens = 0;
      window.errors = 0;
      window.notices = [];
      const es = new EventSource('/sse?topic=e.*');
      const record = (e) => got.push({ type: e.type, data: e.data, id: e.lastEventId });
      es.onmessage = record;
      es.addEventListener('note', record);
      es.addEventListener('tidings-error', (e) => notices.push(JSON.parse(e.data)));
      es.onopen = () => opens++;
      es.onerror = () => errors++;
    });
    await until(page, () => opens === 1);
    const before = await ask({
      ask: 'publish',
      items: [text('e.a', 'one'), text('e.b', 'two', { event: 'note' }), text('x.y', 'other')],
    });
    await until(page, () => got.length >= 2);
    const drop = await ask({
      ask: 'close',
      transport: 'sse',
      then: [text('e.c', 'three\nlines'), text('e.d', 'four', { event: 'note' })],
    });
    await until(page, () => got.length >= 4 && opens === 2);
    const live = await ask({ ask: 'publish', items: [text('e.e', 'five, live')] });
    await until(page, () => got.length >= 5);
    return {
      published: [...before.cursors, ...drop.cursors, ...live.cursors],
      closed: drop.closed,
      got: await page.evaluate(() => got),
      opens: await page.evaluate(() => opens),
      errors: await page.evaluate(() => errors),
      notices: await page.evaluate(() => notices),
      connections: (await ask({ ask: 'connections' })).connections,
    };
  },

  /**
   * (d) Pages of another origin: the allowed one reads /sse (a plain EventSource and the
   * helper, imported cross-origin) and publishes with fetch; a page of an origin the server does
   * not allow gets nothing.
   */
  async cors() {
    const [allowed, refused] = others;
    const page = await newPage(allowed + '/healthz');
    await page.evaluate(async (server) => {
      const { TidingsEventSource } = await import(server + '/tidings.js');
      window.plain = [];
      window.helper = [];
      window.opened = 0;
      const es = new EventSource(server + '/sse?topic=c.*');
      es.onopen = () => opened++;
      es.onmessage = (e) => plain.push({ data: e.data, id: e.lastEventId });
      window.sse = new TidingsEventSource('c.>', { events: ['note'] });
      sse.on('state', (s) => s.state === 'open' && opened++);
      sse.on('event', (e) => helper.push(e));
    }, base);
    await until(page, () => opened === 2);
    const pub = await page.evaluate(async (server) => {
      const r = await fetch(server + '/publish?topic=c.web&event=note', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ from: 'a page of another origin' }),
      });
      return { status: r.status, body: await r.json() };
    }, base);
    const server = await ask({ ask: 'publish', items: [text('c.server', 'hello')] });
    await until(page, () => plain.length >= 1 && helper.length >= 2);
    const refusedPage = await newPage(refused + '/healthz', { refusals: true });
    const denied = await refusedPage.evaluate(async (server) => {
      const es = new EventSource(server + '/sse?topic=c.*');
      // A refused EventSource fails for good: readyState CLOSED after its error event.
      const state = await new Promise((resolve) => {
        es.onopen = () => resolve('open');
        es.onerror = () => resolve(es.readyState === EventSource.CLOSED ? 'closed' : 'retrying');
      });
      let fetched;
      try {
        const r = await fetch(server + '/publish?topic=c.web', { method: 'POST', body: 'x' });
        fetched = `status ${r.status}`;
      } catch (e) {
        fetched = e.name;
      }
      return { state, fetched };
    }, base);
    return {
      publish: pub,
      published: server.cursors,
      plain: await page.evaluate(() => plain),
      helper: await page.evaluate(() => helper),
      helper_cursor: await page.evaluate(() => sse.cursor),
      denied,
      connections: (await ask({ ask: 'connections' })).connections,
    };
  },

  /**
   * (e) Gaps, with a server that retains 3 events: tidings.js resumes after a drop during which
   * 5 were published; the EventSource helper starts from an evicted cursor.
   */
  async gaps() {
    const page = await newPage(base + '/healthz');
    await page.evaluate(async () => {
      const { Tidings } = await import('/tidings.js');
      window.got = [];
      window.client = new Tidings();
      client.on('gap', (g) => got.push({ gap: g }));
      await client.subscribe('g.*', (ev) => got.push({ cursor: ev.cursor, data: ev.data })).ready;
    });
    const first = await ask({ ask: 'publish', items: [text('g.a', '1')] });
    await until(page, () => got.length >= 1);
    const drop = await ask({
      ask: 'close',
      transport: 'ws',
      then: ['2', '3', '4', '5', '6'].map((n) => text('g.a', n)),
    });
    await until(page, () => got.length >= 5);
    const sse = await page.evaluate(async (from) => {
      const { TidingsEventSource } = await import('/tidings.js');
      const seen = [];
      const helper = new TidingsEventSource(['g.*'], { from });
      helper.on('gap', (g) => seen.push({ gap: g, cursor: helper.cursor }));
      await new Promise((resolve) => {
        helper.on('event', (e) => {
          seen.push({ cursor: e.cursor, data: e.data });
          if (seen.length === 4) resolve();
        });
      });
      helper.close();
      return { seen, cursor: helper.cursor };
    }, first.cursors[0]);
    return {
      published: [...first.cursors, ...drop.cursors],
      got: await page.evaluate(() => got),
      cursor: await page.evaluate(() => client.cursor),
      sse,
    };
  },

  /**
   * (f) The rest of the API between two tidings.js clients: requests with an answer, an error
   * and a client-side timeout; answering the application's request; direct and named sends;
   * presence.
   */
  async api() {
    const page = await newPage(base + '/healthz');
    const out = await page.evaluate(async () => {
      const { Tidings, TidingsError } = await import('/tidings.js');
      const alice = new Tidings();
      const bob = new Tidings();
      window.alice = alice;
      const inbox = [];
      alice.on('message', (m) => inbox.push({ via: 'message', ...m }));
      alice.onRequest('confirm', (data) => ({ confirmed: data.amount }));
      await alice.identify('alice');
      const jobs = [];
      await alice.subscribe('jobs.*', (d) => jobs.push(d), { name: 'worker' }).ready;
      const echo = await bob.request('echo', { x: [1, 2] });
      const failure = await bob.request('missing', null).catch((e) => [e instanceof TidingsError, e.code]);
      const started = performance.now();
      const timeout = await bob
        .request('never', null, { timeout: 300 })
        .catch((e) => [e.code, performance.now() - started >= 290]);
      await bob.send({ to: 'alice' }, 'psst', { event: 'dm' });
      await bob.send({ topic: 'jobs.eu', name: 'worker' }, { job: 1 });
      const nobody = await bob.send({ to: 'carol' }, 1).catch((e) => e.code);
      const presence = await bob.presence('jobs.eu');
      // Presence notices: bob watches a room; carol comes and goes.
      const notices = [];
      let noticed = () => {};
      const watch = await bob.watchPresence('room.w', (n) => {
        notices.push(n);
        noticed();
      });
      const nth = (k) =>
        new Promise((resolve) => {
          noticed = () => notices.length >= k && resolve();
          noticed();
        });
      const carol = new Tidings({ clientId: 'carol' });
      await carol.subscribe('room.*', () => {}).ready;
      await nth(1);
      carol.close();
      await nth(2);
      // bob's connection drops: the watch is asked again on the next one (a resync).
      bob.drop();
      await nth(3);
      await watch.stop();
      const watched = { start: watch.presence, notices };
      const bad = await bob.publish('a..b', 1).catch((e) => e.code);
      const rtt = await bob.ping();
      // A client made with connect: false waits for connect(); after close() it refuses work.
      const lazy = new Tidings({ connect: false });
      const lifecycle = { before: lazy.state, states: [] };
      lazy.on('state', (st) => lifecycle.states.push(st.state));
      await new Promise((resolve) => {
        lazy.on('state', (st) => st.state === 'open' && resolve());
        lazy.connect();
      });
      lazy.close();
      lifecycle.afterClose = await lazy.publish('a.b', 1).catch((e) => e.code);
      return {
        conn: alice.welcome.conn,
        echo,
        failure,
        timeout,
        nobody,
        presence,
        watched,
        bad,
        rtt: rtt >= 0,
        inbox,
        jobs,
        lifecycle,
      };
    });
    const answered = await ask({ ask: 'request', conn: out.conn, event: 'confirm', data: { amount: 5 } });
    const unhandled = await ask({ ask: 'request', conn: out.conn, event: 'nobody-handles', data: null });
    return { ...out, answered, unhandled };
  },
};

// ---- run ------------------------------------------------------------------------------------

let code = 0;
try {
  const run = scenarios[scenario];
  if (!run) throw new Error(`no scenario ${scenario}; have ${Object.keys(scenarios)}`);
  const result = await run();
  if (pageErrors.length > 0) throw new Error(`errors in the page:\n${pageErrors.join('\n')}`);
  process.stdout.write(JSON.stringify({ result }) + '\n');
} catch (e) {
  console.error(`scenario ${scenario} failed: ${e.stack ?? e}`);
  code = 1;
} finally {
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(code);
