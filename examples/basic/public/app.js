/* global document, location, URLSearchParams, fetch, FormData, setInterval, clearInterval */
// The page: pushwire/client does the socket, the reconnects, the config resends and the
// decoding; this file only renders what it reports. `?token=`, `?encoding=` and `?transport=`
// (`sse` or `auto`: Server-Sent Events, JSON only) in the page's own URL are passed on to it.
import { createPushClient, PushConfigError, PushRefusedError } from './pushwire-client.min.js';

const MAX_ROWS = 200;
const $ = (id) => document.getElementById(id);
const stateEl = $('state');
const alertEl = $('alert');
const reconnectButton = $('reconnect');
const eventsEl = $('events');
const countEl = $('count');
const configEl = $('config');
const configStatusEl = $('config-status');

const query = new URLSearchParams(location.search);
const transport = ['sse', 'auto'].includes(query.get('transport'))
  ? query.get('transport')
  : 'websocket';
// Event streams carry JSON only: the client would refuse MessagePack with them.
const encoding =
  query.get('encoding') === 'msgpack' && transport === 'websocket' ? 'msgpack' : 'json';
const token = query.get('token') ?? undefined;
$('encoding').value = encoding;

const client = createPushClient('/api/events', {
  token,
  encoding,
  transport,
  // Browsers hide a refused handshake's status: the client asks this URL after a failed attempt.
  checkUrl: '/api/events/check',
  // A demo should come back quickly after a restart; the library's default ceiling is 30 s.
  minDelay: 500,
  maxDelay: 5000,
});

// ---- connection state -------------------------------------------------------------------

let reconnectAt = 0;
let lastClose = '';
let countdown;

function showState(state, text) {
  stateEl.dataset.state = state;
  stateEl.textContent = text;
  reconnectButton.hidden = state !== 'reconnecting' && state !== 'refused';
}

function showAlert(text) {
  alertEl.hidden = text === '';
  alertEl.textContent = text;
}

function tick() {
  if (client.state === 'reconnecting') {
    const seconds = Math.max(1, Math.ceil((reconnectAt - Date.now()) / 1000));
    showState('reconnecting', `reconnecting in ${seconds}s${lastClose}`);
  } else if (client.state === 'connecting') {
    showState('connecting', 'connecting…');
  }
  if (client.state !== 'reconnecting' && client.state !== 'connecting') {
    clearInterval(countdown);
    countdown = undefined;
  }
}

let opens = 0;
client.on('open', (open) => {
  opens++;
  const wire = open.transport === 'sse' ? ' · SSE' : '';
  showState('open', `connected · ${encoding === 'msgpack' ? 'MessagePack' : 'JSON'}${wire}`);
  showAlert('');
  // The client has just (re)sent the config; say so, unless the server's error is on show.
  if (client.config !== undefined && configStatusEl.className !== 'error') {
    configStatusEl.className = 'hint';
    configStatusEl.textContent = `${opens > 1 ? 'resent' : 'sent'} at ${formatTime(new Date())}`;
  }
});

client.on('close', (close) => {
  lastClose = close.opened ? ` · closed with ${close.code}` : ' · server unreachable';
});

client.on('reconnecting', ({ delay }) => {
  reconnectAt = Date.now() + delay;
  tick();
  countdown ??= setInterval(tick, 250);
});

client.on('refused', (error) => {
  const first = error.errors[0];
  const title = first ? first.title : 'refused';
  showState('refused', `refused: ${error.status} ${title}`);
  const why = first ? first.description : String(error.body);
  const hint = token === undefined ? '' : ' Check the token given as ?token= in the URL.';
  showAlert(`The server refused this session (${error.status}): ${why}.${hint}`);
});

client.on('error', (error) => {
  if (error instanceof PushConfigError) {
    configStatusEl.className = 'error';
    configStatusEl.textContent = error.error ? error.error.description : error.message;
  } else if (error instanceof PushRefusedError) {
    // A refusal that is retried (503 while the server shuts down): say so; a 401/403 is `refused`.
    lastClose = ` · refused with ${error.status}`;
  } else {
    showAlert(error.message);
  }
});

reconnectButton.addEventListener('click', () => {
  showAlert('');
  client.connect();
  tick();
});

$('encoding').addEventListener('change', (change) => {
  query.set('encoding', change.target.value);
  location.search = query.toString();
});

// ---- events -----------------------------------------------------------------------------

let count = 0;

function formatTime(date) {
  const ms = String(date.getMilliseconds()).padStart(3, '0');
  return `${date.toLocaleTimeString([], { hour12: false })}.${ms}`;
}

function addRow(event) {
  count++;
  countEl.textContent = String(count);
  eventsEl.querySelector('tr.empty')?.remove();
  const row = document.createElement('tr');
  row.className = 'fresh';
  row.dataset.identity = event.identity;
  row.dataset.type = event.type;
  const cells = [
    [formatTime(event.timestamp), 'time'],
    [event.identity, 'identity'],
    [event.type, `type type-${event.type}`],
    [JSON.stringify(event.entity), 'entity'],
  ];
  for (const [text, className] of cells) {
    const cell = document.createElement('td');
    cell.className = className;
    cell.textContent = text;
    row.append(cell);
  }
  eventsEl.prepend(row);
  while (eventsEl.rows.length > MAX_ROWS) eventsEl.deleteRow(-1);
}

client.on('event', addRow);

$('clear').addEventListener('click', () => {
  eventsEl.replaceChildren();
  count = 0;
  countEl.textContent = '0';
});

// ---- push config ------------------------------------------------------------------------

const PRESETS = {
  all: {},
  tasks: { identities: { task: [] } },
  urgent: {
    identities: { task: [] },
    filters: { task: 'status == "open" and priority >= 3' },
  },
};

function applyConfig() {
  let config;
  try {
    config = JSON.parse(configEl.value);
  } catch (error) {
    configStatusEl.className = 'error';
    configStatusEl.textContent = `Not JSON: ${error.message}`;
    return;
  }
  try {
    client.setConfig(config);
  } catch (error) {
    configStatusEl.className = 'error';
    configStatusEl.textContent = error.message;
    return;
  }
  configStatusEl.className = 'hint';
  configStatusEl.textContent =
    client.state === 'open'
      ? `sent at ${formatTime(new Date())}`
      : 'saved: sent as soon as the client connects';
}

for (const button of document.querySelectorAll('[data-preset]')) {
  button.addEventListener('click', () => {
    configEl.value = JSON.stringify(PRESETS[button.dataset.preset], null, 2);
    applyConfig();
  });
}
$('apply').addEventListener('click', applyConfig);
applyConfig();

// ---- publishing -------------------------------------------------------------------------

$('publish').addEventListener('submit', async (submit) => {
  submit.preventDefault();
  const form = new FormData(submit.target);
  const result = $('publish-result');
  let entity;
  try {
    entity = JSON.parse(String(form.get('entity')));
  } catch (error) {
    result.textContent = `entity is not JSON: ${error.message}`;
    return;
  }
  try {
    const response = await fetch('/api/publish', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ identity: form.get('identity'), type: form.get('type'), entity }),
    });
    const body = await response.json().catch(() => ({}));
    result.textContent = response.ok
      ? `published at ${formatTime(new Date())}`
      : `failed: ${body.error ?? response.status}`;
  } catch (error) {
    result.textContent = `failed: ${error.message}`;
  }
});
