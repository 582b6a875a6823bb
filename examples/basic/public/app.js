// The page's client: a WebSocket to /api/events in JSON (the `encoding`
// parameter, since a browser cannot set headers), reconnecting with backoff,
// resending the push config after every reconnect.
const stateEl = document.getElementById('state');
const eventsEl = document.getElementById('events');
const countEl = document.getElementById('count');
const configEl = document.getElementById('config');
const configErrorEl = document.getElementById('config-error');
const MAX_ROWS = 200;

let socket;
let attempt = 0;
let count = 0;
let config = readConfig();

function readConfig() {
  try {
    configErrorEl.textContent = '';
    return JSON.parse(configEl.value);
  } catch (error) {
    configErrorEl.textContent = `Not JSON: ${error.message}`;
    return undefined;
  }
}

function setState(name, text) {
  stateEl.className = `state ${name}`;
  stateEl.textContent = text;
}

function connect() {
  const url = new URL('/api/events', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('encoding', 'json');
  url.searchParams.set('enableErrors', 'true');
  setState('connecting', attempt === 0 ? 'connecting…' : `reconnecting (attempt ${attempt})…`);
  socket = new WebSocket(url);
  socket.addEventListener('open', () => {
    attempt = 0;
    setState('open', 'connected');
    if (config) socket.send(JSON.stringify(config));
  });
  socket.addEventListener('message', (message) => {
    const event = JSON.parse(message.data);
    if (event.type === 'error') {
      configErrorEl.textContent = event.entity.description;
    }
    addRow(event);
  });
  socket.addEventListener('close', (close) => {
    setState('closed', `disconnected (${close.code})`);
    // Exponential backoff with jitter, at most 10 s.
    const delay = Math.min(10_000, 250 * 2 ** attempt) * (0.5 + Math.random() / 2);
    attempt++;
    setTimeout(connect, delay);
  });
}

function addRow(event) {
  count++;
  countEl.textContent = String(count);
  const row = document.createElement('tr');
  row.className = event.type === 'error' ? 'fresh error' : 'fresh';
  const time = new Date(event.timestamp).toLocaleTimeString();
  for (const [text, cls] of [
    [time, ''],
    [event.identity || '—', ''],
    [event.type, ''],
    [JSON.stringify(event.entity), 'entity'],
  ]) {
    const cell = document.createElement('td');
    cell.textContent = text;
    if (cls) cell.className = cls;
    row.appendChild(cell);
  }
  eventsEl.prepend(row);
  while (eventsEl.rows.length > MAX_ROWS) eventsEl.deleteRow(-1);
}

document.getElementById('apply').addEventListener('click', () => {
  config = readConfig();
  if (config && socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(config));
});

document.getElementById('clear').addEventListener('click', () => {
  eventsEl.replaceChildren();
  count = 0;
  countEl.textContent = '0';
});

document.getElementById('publish').addEventListener('submit', async (submit) => {
  submit.preventDefault();
  const form = new FormData(submit.target);
  const result = document.getElementById('publish-result');
  let entity;
  try {
    entity = JSON.parse(String(form.get('entity')));
  } catch (error) {
    result.textContent = `entity is not JSON: ${error.message}`;
    return;
  }
  const response = await fetch('/api/publish', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ identity: form.get('identity'), type: form.get('type'), entity }),
  });
  result.textContent = response.ok ? 'published' : `failed: ${(await response.json()).error}`;
});

connect();
