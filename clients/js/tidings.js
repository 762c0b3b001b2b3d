/**
 * tidings.js: the browser client of tidings, one dependency-free ES module.
 *
 * - {@link Tidings}: the native WebSocket protocol (`/ws`, docs/PROTOCOL.md): subscribe with
 *   wildcards, publish, requests with a timeout, direct and named sends, answering the server's
 *   requests; reconnects with exponential back-off and jitter, then resubscribes and resumes from
 *   its cursor, so that every retained event arrives exactly once and in order, or a gap notice
 *   says what was lost.
 * - {@link TidingsEventSource}: a small helper over the browser's own `EventSource` for `/sse`
 *   that tracks the cursor (the last event id) and surfaces `tidings-gap` notices.
 *
 * Served by the tidings server at `/tidings.js`; by default both connect to the server that
 * served the module (`/ws` and `/sse` next to it), so under a mount (`/realtime/tidings.js`)
 * they use `/realtime/ws` and `/realtime/sse`.
 *
 * ```js
 * import { Tidings } from '/tidings.js';
 * const client = new Tidings();
 * client.on('state', (s) => console.log('connection', s.state));
 * client.on('gap', (gap) => console.warn('missed events', gap));
 * const sub = client.subscribe('chat.*', (ev) => console.log(ev.topic, ev.cursor, ev.data));
 * await sub.ready;
 * const cursor = await client.publish('chat.lobby', { text: 'hi' });
 * ```
 *
 * @module tidings
 */

/** The native protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/**
 * Close reasons (error codes of the server's last frame) after which the client reconnects and
 * resumes (PROTOCOL.md §18). Any other code sent by the server as it closes (`forbidden`, an
 * application's own code) stops the client: it does not reconnect blindly.
 */
const RECONNECT_CODES = new Set([
  'shutting_down',
  'slow_consumer',
  'idle',
  'overloaded',
  'frame_too_large',
  'not_utf8',
]);

/**
 * An operation failed: the server's error (`code` as in PROTOCOL.md §17), or one of the
 * client's own codes: `timeout` (no answer in time), `disconnected` (the connection dropped
 * before the answer came; the operation may or may not have taken effect), `closed` (the client
 * was closed), `protocol` (the server speaks another protocol version).
 */
export class TidingsError extends Error {
  /**
   * @param {string} code machine-readable code
   * @param {string} message for humans
   */
  constructor(code, message) {
    super(message);
    this.name = 'TidingsError';
    /** @type {string} */
    this.code = code;
  }
}

/**
 * Whether `topic` matches the subscription `pattern`: `*` matches one segment, `>` (last
 * segment only) one or more (PROTOCOL.md §5.3).
 *
 * @param {string} pattern e.g. `chat.*`, `orders.>`
 * @param {string} topic e.g. `chat.lobby`
 * @returns {boolean}
 */
export function topicMatches(pattern, topic) {
  const p = pattern.split('.');
  const t = topic.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return i === p.length - 1 && t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== '*' && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

/** `path` next to this module, as an http(s) or ws(s) URL. */
function besideModule(path, websocket) {
  const url = new URL(path, import.meta.url);
  if (websocket) url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url;
}

/** A tiny event emitter: `on(type, fn)` returns the function that removes `fn`. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /**
   * Adds a listener; returns a function that removes it.
   *
   * @param {string} type
   * @param {Function} fn
   * @returns {() => void}
   */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  _emit(type, value) {
    for (const fn of [...(this._listeners.get(type) ?? [])]) {
      try {
        fn(value);
      } catch (e) {
        // A listener's bug must not break the connection; report it like any uncaught error.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

/** Exponential back-off with jitter: `attempt` 1 waits about `initial`. */
function backoff(attempt, { initial, max, factor, jitter }) {
  const delay = Math.min(max, initial * factor ** Math.max(0, attempt - 1));
  return Math.round(delay * (1 - jitter * Math.random()));
}

/**
 * @typedef {object} ReconnectOptions
 * @property {number} [initialDelay] first delay in ms (default: the server's `retry_ms` from
 *   `welcome`, else 1000)
 * @property {number} [maxDelay=30000] longest delay in ms
 * @property {number} [factor=2] growth per failed attempt
 * @property {number} [jitter=0.5] the delay is shortened by a random fraction of up to this much
 */

/**
 * @typedef {object} TidingsOptions
 * @property {string|(() => string|Promise<string>)} [token] a JWT, sent as the `token` query
 *   parameter (browsers cannot set headers on a WebSocket); a function is called before every
 *   connection attempt, so a fresh token can be fetched
 * @property {string} [clientId] claimed with `identify` on every connection
 * @property {string} [cursor] resume from this cursor (e.g. one kept in `sessionStorage`)
 * @property {ReconnectOptions|false} [reconnect] back-off settings, or `false` not to reconnect
 * @property {number} [timeout=10000] ms to wait for the answer to an operation
 * @property {boolean} [connect=true] connect at once (otherwise call {@link Tidings#connect})
 * @property {typeof WebSocket} [WebSocket] the WebSocket constructor (default: the global one)
 */

/**
 * A delivered event (`type: 'event'`, retained, with a cursor) or a named message
 * (`type: 'message'`), as the server sent it (PROTOCOL.md §7.2, §7.3).
 *
 * @typedef {object} Delivery
 * @property {'event'|'message'} type
 * @property {string} [topic]
 * @property {string} [cursor] events only: their position; the client resumes after it
 * @property {string} [event] the event name, if the publisher gave one
 * @property {string} [from] the publisher's client id, if it identified
 * @property {string} [name] named messages: the subscription name
 * @property {string} [room] room messages: the room
 * @property {*} data the payload: a string for text payloads, the JSON value otherwise
 */

/**
 * A gap notice (PROTOCOL.md §10): events after `from` up to `to` may be missing; delivery is
 * exact again after `to` (the client's new cursor).
 *
 * @typedef {object} Gap
 * @property {string|null} from
 * @property {string} to
 * @property {string} reason `evicted`, `epoch`, `slow_consumer` (or a newer one)
 * @property {number} droppedMessages messages (not retained) lost on the connection
 */

/**
 * A connection state change.
 *
 * - `connecting`: a socket is being opened (or the first `welcome` is awaited);
 * - `open`: connected, subscriptions (re)established;
 * - `reconnecting`: the connection dropped; the next attempt comes after `delay` ms;
 * - `closed`: {@link Tidings#close} was called, or the server closed with a reason the client
 *   must not retry blindly (`error` says which).
 *
 * @typedef {object} StateChange
 * @property {'connecting'|'open'|'reconnecting'|'closed'} state
 * @property {number} [attempt] reconnecting: the number of the coming attempt
 * @property {number} [delay] reconnecting: ms until it
 * @property {TidingsError} [error] why the connection ended, when the server said
 * @property {number} [conn] open: the server's connection id
 * @property {string|null} [resumedFrom] open: the cursor the subscriptions resumed from
 */

/**
 * A subscription made with {@link Tidings#subscribe}.
 */
export class Subscription {
  /** @internal */
  constructor(client, patterns, handler, name) {
    this._client = client;
    /** The patterns, as given. @type {string[]} */
    this.patterns = patterns;
    /** The subscription name (named routing), if any. @type {string|undefined} */
    this.name = name;
    this._handler = handler;
    /** @type {Set<string>} patterns the server has not yet confirmed */
    this._waiting = new Set(patterns);
    this._active = true;
    /**
     * Settles when the server has confirmed every pattern: resolves with the hub's cursor at
     * that moment, rejects with a {@link TidingsError} (`invalid_topic`, `forbidden`,
     * `limit_reached`, ...), after which the subscription is gone.
     *
     * @type {Promise<string|undefined>}
     */
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // not awaiting it is fine
  }

  /** Whether it is still subscribed. @returns {boolean} */
  get active() {
    return this._active;
  }

  /**
   * Stops the deliveries at once; the server unsubscribes the patterns no other subscription of
   * this client holds.
   *
   * @returns {Promise<void>}
   */
  unsubscribe() {
    return this._client._unsubscribe(this);
  }
}

/**
 * The native WebSocket client (docs/PROTOCOL.md). One instance keeps one connection open,
 * reconnecting as needed; subscriptions, the client id and the cursor survive reconnects.
 *
 * Events: `client.on(type, fn)` with `state` ({@link StateChange}), `gap` ({@link Gap}),
 * `event` (every {@link Delivery} of type `event`), `message` (direct, room and named messages),
 * `error` ({@link TidingsError}: errors the server reported without a request id, and failed
 * resubscriptions), `welcome` (the server's `welcome` frame).
 */
export class Tidings extends Emitter {
  /**
   * @param {string|URL|TidingsOptions} [url] the `/ws` URL (default: next to this module);
   *   or the options
   * @param {TidingsOptions} [options]
   */
  constructor(url, options) {
    super();
    if (url && typeof url === 'object' && !(url instanceof URL)) {
      options = url;
      url = undefined;
    }
    const o = options ?? {};
    /** The WebSocket URL. @type {string} */
    this.url = String(url ?? besideModule('ws', true));
    this._token = o.token;
    this._clientId = o.clientId;
    this._timeout = o.timeout ?? 10000;
    this._reconnect =
      o.reconnect === false
        ? null
        : { maxDelay: 30000, factor: 2, jitter: 0.5, ...(o.reconnect ?? {}) };
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    /** @type {string|null} */
    this._cursor = o.cursor ?? null;
    this._state = o.connect === false ? 'closed' : 'connecting';
    this._ws = null;
    this._welcome = null;
    this._nextId = 1;
    /** @type {Map<number, {resolve: Function, reject: Function, timer: any, frame: object, sent: boolean, onOk?: Function, onError?: Function}>} */
    this._pending = new Map();
    /** Patterns held (or to hold) on the server: pattern → {name, subs}. */
    this._patterns = new Map();
    /** @type {Map<string, Function>} */
    this._requestHandlers = new Map();
    /** Presence watches: topic → callbacks. @type {Map<string, Set<Function>>} */
    this._watches = new Map();
    this._attempt = 0;
    this._retryTimer = null;
    this._tick = null;
    this._stopped = o.connect === false;
    this._connections = 0;
    this._closeError = null;
    this._lastReceived = 0;
    this._lastSent = 0;
    // After the caller's synchronous code, so that its listeners see every state (operations
    // made meanwhile wait for the connection).
    if (!this._stopped) {
      queueMicrotask(() => {
        if (!this._stopped && !this._ws && !this._retryTimer) this._open();
      });
    }
  }

  /** The connection state. @returns {'connecting'|'open'|'reconnecting'|'closed'} */
  get state() {
    return this._state;
  }

  /**
   * The cursor the client resumes from: the last event's cursor, or a gap's `to` (PROTOCOL.md
   * §9.1); `null` before anything was subscribed. Keep it (e.g. in `sessionStorage`) and pass
   * it as `options.cursor` to resume across page loads.
   *
   * @returns {string|null}
   */
  get cursor() {
    return this._cursor;
  }

  /** The server's `welcome` frame of the current connection, or `null`. @returns {object|null} */
  get welcome() {
    return this._welcome;
  }

  /** How many connections were established (a `welcome` received) so far. @returns {number} */
  get connections() {
    return this._connections;
  }

  /** Opens the connection (when made with `connect: false`, or after {@link Tidings#close}). */
  connect() {
    if (!this._stopped) return;
    this._stopped = false;
    this._attempt = 0;
    this._open();
  }

  /**
   * Closes the connection for good: no reconnect; operations waiting for an answer fail with
   * `closed`. {@link Tidings#connect} starts again (subscriptions and cursor are kept).
   */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._detach();
    if (ws) ws.close(1000, 'closed by the client');
    for (const held of this._patterns.values()) held.confirmed = false;
    this._failPending(new TidingsError('closed', 'the client was closed'), true);
    this._setState({ state: 'closed' });
  }

  /**
   * Drops the current connection as a network failure would: the client reconnects after the
   * back-off delay and resumes from its cursor. For trying out (and testing) resumption.
   */
  drop() {
    const ws = this._ws;
    if (!ws) return;
    this._closeError = null;
    ws.close(4000, 'dropped by the client');
    this._lost(ws, null);
  }

  /**
   * Subscribes to one or more patterns (wildcards `*` and `>` allowed). The handler gets every
   * matching event once (also when several of the patterns match), and, for a named
   * subscription, the messages sent to that name. After a reconnect the patterns are resumed
   * from the client's cursor: nothing retained is lost or delivered twice.
   *
   * @param {string|string[]} patterns
   * @param {(delivery: Delivery) => void} handler
   * @param {{name?: string}} [options] `name`: a subscription name for named routing
   * @returns {Subscription}
   */
  subscribe(patterns, handler, options = {}) {
    const list = [...new Set(Array.isArray(patterns) ? patterns : [patterns])];
    const sub = new Subscription(this, list, handler, options.name);
    if (list.length === 0) {
      sub._active = false;
      sub._reject(new TidingsError('bad_field', 'subscribe needs at least one pattern'));
      return sub;
    }
    for (const p of list) {
      const held = this._patterns.get(p);
      if (held && held.name !== options.name) {
        sub._active = false;
        sub._reject(
          new TidingsError(
            'bad_field',
            `"${p}" is already subscribed ${held.name ? `with the name "${held.name}"` : 'without a name'}`,
          ),
        );
        return sub;
      }
    }
    const added = [];
    for (const p of list) {
      let held = this._patterns.get(p);
      if (!held) {
        held = { name: options.name, subs: new Set(), confirmed: false };
        this._patterns.set(p, held);
        added.push(p);
      }
      held.subs.add(sub);
      if (held.confirmed) sub._waiting.delete(p);
    }
    if (sub._waiting.size === 0) {
      sub._resolve(undefined);
    } else if (added.length > 0 && this._welcome) {
      this._sendSubscribe(added, options.name, this._resumeFrom());
    }
    // Otherwise the next connection's resubscription sends them.
    return sub;
  }

  /**
   * Publishes an event; resolves with its cursor.
   *
   * @param {string} topic a topic (no wildcards)
   * @param {*} data a string (text payload) or any JSON value
   * @param {{event?: string, timeout?: number}} [options] `event`: an event name
   * @returns {Promise<string>}
   */
  publish(topic, data, options = {}) {
    const frame = { op: 'publish', topic, data: data === undefined ? null : data };
    if (options.event !== undefined) frame.event = options.event;
    return this._call(frame, options.timeout).then((ok) => ok.cursor);
  }

  /**
   * Sends a message that is not retained: to a client id (`{to}`) or to the subscriptions named
   * `name` whose patterns match `topic` (`{topic, name}`). Resolves when the server handed it to
   * at least one connection (`no_recipient` otherwise).
   *
   * @param {{to: string}|{topic: string, name: string}} target
   * @param {*} data
   * @param {{event?: string, timeout?: number}} [options]
   * @returns {Promise<void>}
   */
  send(target, data, options = {}) {
    const frame = { op: 'send', ...target, data: data === undefined ? null : data };
    if (options.event !== undefined) frame.event = options.event;
    return this._call(frame, options.timeout).then(() => undefined);
  }

  /**
   * Asks the server-side application (a handler registered with `hub.on(event, ..)`); resolves
   * with its answer, rejects with its error, or with `timeout` when no answer comes within
   * `timeout` ms (default: the server's `request_timeout_ms` plus a second, else the client's
   * timeout). Exactly one of these happens.
   *
   * @param {string} event the handler's name
   * @param {*} [data]
   * @param {{timeout?: number}} [options]
   * @returns {Promise<*>}
   */
  request(event, data, options = {}) {
    const frame = { op: 'request', event, data: data === undefined ? null : data };
    const serverTimeout = this._welcome?.request_timeout_ms;
    const timeout = options.timeout ?? (serverTimeout ? serverTimeout + 1000 : this._timeout);
    return this._call(frame, timeout).then((ok) => ok.data);
  }

  /**
   * Who is subscribed to `topic` now (every node's, in a cluster): resolves with
   * `{topic, connections, anonymous, clients: [{client_id, connections}], truncated, nodes}`
   * (PROTOCOL.md §6.7a); `forbidden` without the right to subscribe to the topic.
   *
   * @param {string} topic a topic, not a pattern
   * @param {{timeout?: number}} [options]
   * @returns {Promise<{topic: string, connections: number, anonymous: number, clients: {client_id: string, connections: number}[], truncated: boolean, nodes: number}>}
   */
  presence(topic, options = {}) {
    return this._call({ op: 'presence', topic }, options.timeout).then((ok) => ok.data);
  }

  /**
   * Watches the presence of `topic` (PROTOCOL.md §6.7b): resolves with `{presence, stop}`, the
   * presence now (as `presence()` resolves) and a function that ends the watch; then calls
   * `callback` with each join and leave, one per connection:
   * `{topic, action: 'join'|'leave', client_id?, info?}` (`client_id` absent for an anonymous
   * connection; `info` what its token says, if anything). The watch lasts across reconnects:
   * it is asked again on every new connection and `callback` gets
   * `{topic, action: 'resync', presence}`, the presence the later notices continue from (joins
   * and leaves while disconnected are not replayed). Rejects with `forbidden` without the
   * right to subscribe to the topic, `limit_reached` past `max_subscriptions` watches.
   *
   * @param {string} topic a topic, not a pattern
   * @param {(notice: {topic: string, action: string, client_id?: string, info?: *, presence?: object}) => void} callback
   * @param {{timeout?: number}} [options]
   * @returns {Promise<{presence: object, stop: () => Promise<void>}>}
   */
  watchPresence(topic, callback, options = {}) {
    let callbacks = this._watches.get(topic);
    if (!callbacks) {
      callbacks = new Set();
      this._watches.set(topic, callbacks);
    }
    callbacks.add(callback);
    return this._call({ op: 'presence', topic, watch: true }, options.timeout).then(
      (ok) => ({ presence: ok.data, stop: () => this._unwatch(topic, callback) }),
      (e) => {
        callbacks.delete(callback);
        if (callbacks.size === 0 && this._watches.get(topic) === callbacks) {
          this._watches.delete(topic);
        }
        throw e;
      },
    );
  }

  /** Ends one `watchPresence`; the server's watch ends with the topic's last callback. */
  _unwatch(topic, callback) {
    const callbacks = this._watches.get(topic);
    if (!callbacks || !callbacks.delete(callback) || callbacks.size > 0) return Promise.resolve();
    this._watches.delete(topic);
    if (!this._welcome) return Promise.resolve();
    return this._call({ op: 'presence', topic, watch: false }, undefined, true).then(() => undefined);
  }

  /** Calls the callbacks of a watched topic with a notice. */
  _notify(topic, notice) {
    for (const callback of this._watches.get(topic) ?? []) {
      try {
        callback(notice);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  /**
   * Claims a client id, now and on every reconnect, so that others can `send` to it and its
   * publications carry it as `from`.
   *
   * @param {string} clientId
   * @returns {Promise<void>}
   */
  identify(clientId) {
    this._clientId = clientId;
    return this._call({ op: 'identify', client_id: clientId }).then(() => undefined);
  }

  /**
   * Answers the application's requests named `event` (emit-with-ack, PROTOCOL.md §14): the
   * handler's return value (or resolved promise) is the answer, a throw (or rejection) a
   * failure. Requests without a handler are refused at once. Returns the function that removes
   * the handler.
   *
   * @param {string} event
   * @param {(data: *, request: {id: number, event: string}) => *} handler
   * @returns {() => void}
   */
  onRequest(event, handler) {
    this._requestHandlers.set(event, handler);
    return () => {
      if (this._requestHandlers.get(event) === handler) this._requestHandlers.delete(event);
    };
  }

  /**
   * Checks that the server answers; resolves with the round trip in ms.
   *
   * @param {{timeout?: number}} [options]
   * @returns {Promise<number>}
   */
  ping(options = {}) {
    const start = performance.now();
    return this._call({ op: 'ping' }, options.timeout).then(() => performance.now() - start);
  }

  // ---- internals ------------------------------------------------------------------------------

  _setState(change) {
    this._state = change.state;
    this._emit('state', change);
  }

  _resumeFrom() {
    // Only the connection's first subscribe resumes (PROTOCOL.md §9.3).
    if (this._resumeSent) return null;
    this._resumeSent = true;
    return this._cursor;
  }

  async _open() {
    this._setState({ state: 'connecting' });
    let url = this.url;
    if (this._token !== undefined) {
      let token;
      try {
        token = typeof this._token === 'function' ? await this._token() : this._token;
      } catch (e) {
        this._emit('error', new TidingsError('unauthorized', `the token function failed: ${e}`));
        this._retry(null);
        return;
      }
      if (this._stopped) return;
      const u = new URL(url);
      u.searchParams.set('token', token);
      url = String(u);
    }
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (e) {
      this._stopped = true;
      this._setState({ state: 'closed', error: new TidingsError('bad_url', String(e)) });
      return;
    }
    this._ws = ws;
    this._welcome = null;
    this._closeError = null;
    this._resumeSent = false;
    ws.onmessage = (e) => {
      if (ws === this._ws) this._receive(e.data);
    };
    ws.onclose = (e) => {
      if (ws === this._ws) this._lost(ws, e);
    };
    ws.onerror = () => {}; // a close event follows
  }

  /** Forgets the current socket (its late events are ignored) and its timers. */
  _detach() {
    const ws = this._ws;
    this._ws = null;
    this._welcome = null;
    clearInterval(this._tick);
    this._tick = null;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
    }
  }

  /** The connection `ws` ended (closed by the server, the network, or dropped). */
  _lost(ws, closeEvent) {
    if (ws !== this._ws) return;
    this._detach();
    this._failPending(
      new TidingsError('disconnected', 'the connection dropped before the answer came'),
      false,
    );
    for (const held of this._patterns.values()) held.confirmed = false;
    if (this._stopped) return;
    // The server's reason is its last frame, an error without id, followed by a close frame
    // (1006: no close frame, the network failed).
    const error = closeEvent?.code === 1006 ? null : this._closeError;
    if (error && !RECONNECT_CODES.has(error.code)) {
      // The server said why and it is not something a retry fixes (PROTOCOL.md §18).
      this._stopped = true;
      this._failPending(error, true);
      this._setState({ state: 'closed', error });
      return;
    }
    this._retry(error);
  }

  _retry(error) {
    if (!this._reconnect) {
      this._stopped = true;
      this._failPending(new TidingsError('closed', 'the connection dropped'), true);
      this._setState({ state: 'closed', error: error ?? undefined });
      return;
    }
    this._attempt += error?.code === 'overloaded' ? 3 : 1;
    const initial = this._reconnect.initialDelay ?? this._retryMs ?? 1000;
    const delay = backoff(this._attempt, { ...this._reconnect, initial, max: this._reconnect.maxDelay });
    this._setState({ state: 'reconnecting', attempt: this._attempt, delay, error: error ?? undefined });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (!this._stopped) this._open();
    }, delay);
  }

  /** Rejects operations waiting for an answer (and, if `queued`, those not sent yet). */
  _failPending(error, queued) {
    for (const [id, p] of [...this._pending]) {
      if (!p.sent && !queued) continue;
      this._pending.delete(id);
      clearTimeout(p.timer);
      p.reject(error);
    }
  }

  _write(frame) {
    this._ws.send(JSON.stringify(frame));
    this._lastSent = Date.now();
  }

  /**
   * Sends a frame with a fresh id (now if connected, else once connected); resolves with the
   * `ok` (or `pong`), rejects with the `error` or a timeout.
   */
  _call(frame, timeout, internal) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      frame = { ...frame, id };
      const max = this._welcome?.limits?.max_frame_bytes;
      if (max && new TextEncoder().encode(JSON.stringify(frame)).length > max) {
        reject(new TidingsError('frame_too_large', `the frame is larger than ${max} bytes`));
        return;
      }
      if (this._stopped && !internal) {
        reject(new TidingsError('closed', 'the client is closed'));
        return;
      }
      const entry = { resolve, reject, frame, sent: false, timer: null };
      const ms = timeout ?? this._timeout;
      entry.timer = setTimeout(() => {
        if (this._pending.get(id) !== entry) return;
        this._pending.delete(id);
        reject(new TidingsError('timeout', `no answer within ${ms} ms`));
      }, ms);
      this._pending.set(id, entry);
      if (this._welcome) {
        entry.sent = true;
        this._write(frame);
      }
    });
  }

  _sendSubscribe(patterns, name, from) {
    const frame = { op: 'subscribe', topics: patterns };
    if (name !== undefined) frame.name = name;
    if (from) frame.from = from;
    const call = this._call(frame, undefined, true);
    call.then(
      (ok) => {
        // No cursor yet and no resume: the hub's position is where this client starts.
        if (this._cursor === null && !from && ok.cursor) this._cursor = ok.cursor;
        const orphans = patterns.filter((p) => !this._patterns.has(p));
        if (orphans.length > 0 && this._welcome) {
          // Unsubscribed while the subscribe was on its way.
          this._call({ op: 'unsubscribe', topics: orphans }, undefined, true).catch(() => {});
        }
        for (const p of patterns) {
          const held = this._patterns.get(p);
          if (!held) continue;
          held.confirmed = true;
          for (const sub of held.subs) {
            sub._waiting.delete(p);
            if (sub._waiting.size === 0) sub._resolve(ok.cursor);
          }
        }
      },
      (error) => {
        if (error.code === 'disconnected' || error.code === 'closed') return; // resent later
        // Refused: these patterns are not subscribed, and neither are the subscriptions that
        // needed them.
        const failed = new Set();
        for (const p of patterns) {
          for (const sub of this._patterns.get(p)?.subs ?? []) failed.add(sub);
          this._patterns.delete(p);
        }
        for (const sub of failed) {
          if (sub._waiting.size === 0) this._emit('error', error); // it had been working
          this._drop(sub);
          sub._reject(error);
        }
      },
    );
    return call;
  }

  /** Removes a subscription locally; returns the patterns no longer held by anything. */
  _drop(sub) {
    sub._active = false;
    const freed = [];
    for (const p of sub.patterns) {
      const held = this._patterns.get(p);
      if (!held) continue;
      held.subs.delete(sub);
      if (held.subs.size === 0) {
        this._patterns.delete(p);
        if (held.confirmed) freed.push(p);
      }
    }
    return freed;
  }

  _unsubscribe(sub) {
    if (!sub._active) return Promise.resolve();
    const freed = this._drop(sub);
    if (freed.length === 0 || !this._welcome) return Promise.resolve();
    return this._call({ op: 'unsubscribe', topics: freed }, undefined, true).then(
      () => undefined,
      (e) => {
        if (e.code !== 'disconnected' && e.code !== 'closed') throw e;
      },
    );
  }

  /** After `welcome`: identify, resubscribe (resuming), then send what waited. */
  _established(welcome) {
    this._welcome = welcome;
    this._connections += 1;
    this._retryMs = welcome.retry_ms;
    this._lastReceived = Date.now();
    this._lastSent = Date.now();
    this._tick = setInterval(() => this._keepAlive(), 1000);
    this._emit('welcome', welcome);
    if (this._clientId !== undefined) {
      // Retried by the application if it fails (client_id_taken right after a reconnect).
      this._call({ op: 'identify', client_id: this._clientId }, undefined, true).catch((e) =>
        this._emit('error', e),
      );
    }
    const from = this._patterns.size > 0 ? this._resumeFrom() : null;
    const byName = new Map();
    for (const [p, held] of this._patterns) {
      if (!byName.has(held.name)) byName.set(held.name, []);
      byName.get(held.name).push(p);
    }
    const subscribed = [...byName].map(([name, patterns]) =>
      this._sendSubscribe(patterns, name, from),
    );
    // The presence watches, asked again: their new starting presence as a `resync`.
    const rewatches = this._connections > 1 ? [...this._watches.keys()] : [];
    for (const topic of rewatches) {
      this._call({ op: 'presence', topic, watch: true }, undefined, true).then(
        (ok) => this._notify(topic, { topic, action: 'resync', presence: ok.data }),
        (e) => this._emit('error', e),
      );
    }
    for (const p of this._pending.values()) {
      if (!p.sent) {
        p.sent = true;
        this._write(p.frame);
      }
    }
    const ws = this._ws;
    Promise.allSettled(subscribed).then(() => {
      if (ws !== this._ws) return;
      this._attempt = 0;
      this._setState({ state: 'open', conn: welcome.conn, resumedFrom: from });
    });
  }

  /** Keep-alive duties (PROTOCOL.md §12): find a dead server; ping when the server will not. */
  _keepAlive() {
    const w = this._welcome;
    if (!w || !this._ws) return;
    const now = Date.now();
    if (w.keepalive_ms && now - this._lastReceived > 2 * w.keepalive_ms + 1000) {
      this.drop(); // nothing for two keep-alive periods: the server or the network is gone
      return;
    }
    const idle = w.idle_timeout_ms;
    if (idle && !(w.keepalive_ms < idle) && now - this._lastSent > idle / 2) {
      this._write({ op: 'ping' });
    }
  }

  _receive(text) {
    this._lastReceived = Date.now();
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      this._emit('error', new TidingsError('bad_frame', 'the server sent a frame that is not JSON'));
      return;
    }
    // Only the very last frame before a close can be its reason.
    if (f.type !== 'error' || f.id !== undefined) this._closeError = null;
    switch (f.type) {
      case 'welcome':
        if (f.protocol !== PROTOCOL_VERSION) {
          const error = new TidingsError(
            'protocol',
            `the server speaks protocol ${f.protocol}, this client ${PROTOCOL_VERSION}`,
          );
          this._closeError = error;
          const ws = this._ws;
          ws.close(4002, 'unsupported protocol version');
          this._lost(ws, null);
          return;
        }
        this._established(f);
        return;
      case 'event':
        this._cursor = f.cursor;
        this._deliver(f, () => true);
        this._emit('event', f);
        return;
      case 'message':
        if (f.topic !== undefined && f.name !== undefined) {
          this._deliver(f, (held) => held.name === f.name);
        }
        this._emit('message', f);
        return;
      case 'gap':
        this._cursor = f.to;
        this._emit('gap', {
          from: f.from ?? null,
          to: f.to,
          reason: f.reason,
          droppedMessages: f.dropped_messages ?? 0,
        });
        return;
      case 'ok':
      case 'pong':
      case 'error': {
        const p = f.id !== undefined ? this._pending.get(f.id) : undefined;
        if (p) {
          this._pending.delete(f.id);
          clearTimeout(p.timer);
          if (f.type === 'error') p.reject(new TidingsError(f.code, f.message));
          else p.resolve(f);
        } else if (f.type === 'error' && f.id === undefined) {
          // Without an id: a report about a frame without one, or the reason of a close.
          // (An answer to an operation that already timed out is ignored.)
          const error = new TidingsError(f.code, f.message);
          this._closeError = error;
          this._emit('error', error);
        }
        return;
      }
      case 'presence':
        this._notify(f.topic, {
          topic: f.topic,
          action: f.action,
          ...(f.client_id !== undefined ? { client_id: f.client_id } : {}),
          ...(f.info !== undefined ? { info: f.info } : {}),
        });
        return;
      case 'ping':
        this._write({ op: 'pong' });
        return;
      case 'request':
        this._answer(f);
        return;
      default:
      // Unknown frame types are ignored (PROTOCOL.md §3.2).
    }
  }

  /** Calls each subscription whose patterns match the delivery's topic, once. */
  _deliver(f, accept) {
    const subs = new Set();
    for (const [p, held] of this._patterns) {
      if (accept(held) && topicMatches(p, f.topic)) for (const s of held.subs) subs.add(s);
    }
    for (const sub of subs) {
      try {
        sub._handler(f);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  async _answer(f) {
    const ws = this._ws;
    const handler = this._requestHandlers.get(f.event);
    let reply;
    if (!handler) {
      reply = { op: 'reply', id: f.id, error: `no handler for ${f.event}` };
    } else {
      try {
        const data = await handler(f.data, { id: f.id, event: f.event });
        reply = { op: 'reply', id: f.id, data: data === undefined ? null : data };
      } catch (e) {
        reply = { op: 'reply', id: f.id, error: String(e?.message ?? e) };
      }
    }
    // Server request ids belong to the connection that received them.
    if (ws === this._ws && this._ws) this._write(reply);
  }
}

/**
 * @typedef {object} SseOptions
 * @property {string|URL} [url] the `/sse` URL (default: next to this module)
 * @property {string} [from] resume after this cursor
 * @property {string[]} [events] event names to receive besides unnamed events (`EventSource`
 *   hands named events only to listeners of that name)
 * @property {string} [token] a JWT, sent as the `token` query parameter
 * @property {boolean} [withCredentials=false] send cookies cross-origin (the server must list
 *   the page's origin in `http.cors_origins`)
 * @property {ReconnectOptions} [reconnect] back-off for the rare case where the browser gives up
 *   (it reconnects by itself otherwise)
 * @property {typeof EventSource} [EventSource] the constructor (default: the global one)
 */

/**
 * An SSE event as delivered by {@link TidingsEventSource}.
 *
 * @typedef {object} SseEvent
 * @property {string} type the event name (`message` when the publisher gave none)
 * @property {string} data the payload as text (JSON payloads as their JSON text)
 * @property {string|null} cursor its cursor (`null` for messages, which have none)
 */

/**
 * A helper over the browser's own `EventSource` for `/sse`: tracks the cursor (the last event
 * id, which the browser also sends as `Last-Event-ID` when it reconnects by itself), surfaces
 * `tidings-gap` notices as `gap` and `tidings-error` as `error`, and, should the browser give up
 * (an HTTP error, a network failure at the first connection), opens a new `EventSource` after a
 * back-off, resuming from the cursor.
 *
 * Events: `on('event', fn)` ({@link SseEvent}), `on('gap', fn)` ({@link Gap}),
 * `on('state', fn)` (`{state}`: `connecting`, `open`, `reconnecting`, `closed`),
 * `on('error', fn)` ({@link TidingsError}: the server's reason for ending a stream).
 *
 * ```js
 * const sse = new TidingsEventSource(['chat.*'], { events: ['msg'] });
 * sse.on('event', (e) => console.log(e.type, e.cursor, e.data));
 * sse.on('gap', (gap) => console.warn('missed', gap));
 * ```
 */
export class TidingsEventSource extends Emitter {
  /**
   * @param {string|string[]} topics topics or patterns
   * @param {SseOptions} [options]
   */
  constructor(topics, options = {}) {
    super();
    this._topics = Array.isArray(topics) ? topics : [topics];
    this._url = String(options.url ?? besideModule('sse', false));
    this._events = options.events ?? [];
    this._token = options.token;
    this._withCredentials = options.withCredentials ?? false;
    this._reconnect = { maxDelay: 30000, factor: 2, jitter: 0.5, initialDelay: 1000, ...(options.reconnect ?? {}) };
    this._EventSource = options.EventSource ?? globalThis.EventSource;
    /** @type {string|null} */
    this._cursor = options.from ?? null;
    this._state = 'connecting';
    this._attempt = 0;
    this._timer = null;
    /** The current `EventSource`. @type {EventSource|null} */
    this.source = null;
    this._open();
  }

  /**
   * The cursor of the last event (or gap) received; `null` before any. Pass it as `from` to
   * resume later.
   *
   * @returns {string|null}
   */
  get cursor() {
    return this._cursor;
  }

  /** @returns {'connecting'|'open'|'reconnecting'|'closed'} */
  get state() {
    return this._state;
  }

  /** Closes the stream for good. */
  close() {
    clearTimeout(this._timer);
    this.source?.close();
    this.source = null;
    this._setState('closed');
  }

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit('state', { state });
  }

  _open() {
    const url = new URL(this._url, globalThis.location?.href);
    for (const t of this._topics) url.searchParams.append('topic', t);
    if (this._cursor) url.searchParams.set('last_event_id', this._cursor);
    if (this._token !== undefined) url.searchParams.set('token', this._token);
    const source = new this._EventSource(String(url), { withCredentials: this._withCredentials });
    this.source = source;
    const onEvent = (e) => {
      if (e.lastEventId) this._cursor = e.lastEventId;
      this._emit('event', { type: e.type, data: e.data, cursor: e.lastEventId || null });
    };
    source.addEventListener('open', () => {
      this._attempt = 0;
      this._setState('open');
    });
    source.addEventListener('message', onEvent);
    for (const name of this._events) source.addEventListener(name, onEvent);
    source.addEventListener('tidings-gap', (e) => {
      let gap;
      try {
        gap = JSON.parse(e.data);
      } catch {
        return;
      }
      this._cursor = e.lastEventId || gap.to;
      this._emit('gap', {
        from: gap.from ?? null,
        to: gap.to,
        reason: gap.reason,
        droppedMessages: gap.dropped_messages ?? 0,
      });
    });
    source.addEventListener('tidings-error', (e) => {
      try {
        const { code, message } = JSON.parse(e.data);
        this._emit('error', new TidingsError(code, message));
      } catch {
        // not ours
      }
    });
    source.addEventListener('error', () => {
      if (source !== this.source) return;
      if (source.readyState === 0) {
        this._setState('reconnecting'); // the browser retries by itself, with Last-Event-ID
        return;
      }
      // The browser gave up: start a new EventSource from the cursor after a back-off.
      source.close();
      this._attempt += 1;
      const delay = backoff(this._attempt, {
        initial: this._reconnect.initialDelay,
        max: this._reconnect.maxDelay,
        factor: this._reconnect.factor,
        jitter: this._reconnect.jitter,
      });
      this._setState('reconnecting');
      this._timer = setTimeout(() => {
        if (this.source === source) this._open();
      }, delay);
    });
  }
}
