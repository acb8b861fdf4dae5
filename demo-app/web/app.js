// The board page: renders every snapshot the app pushes on /api/events (server-sent events)
// and posts each edit to the app's API. No framework, no build step.
'use strict';

const $ = (selector) => document.querySelector(selector);
const board = $('#board');
const template = $('#item-template');
let current = null;  // the latest snapshot

function showError(message) {
  const error = $('#error');
  error.textContent = message || '';
  error.hidden = !message;
}

// POSTs an edit; the answer is the new snapshot.
async function post(path, params) {
  try {
    const response = await fetch(path, {
      method: 'POST',
      headers: {'Content-Type': 'application/x-www-form-urlencoded'},
      body: new URLSearchParams(params),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    showError('');
    render(body);
  } catch (e) {
    showError(e.message);
  }
}

function itemElement(item) {
  const li = template.content.firstElementChild.cloneNode(true);
  li.dataset.id = item.id;
  li.querySelector('.done-toggle').addEventListener('change', (e) =>
    post('/api/done', {id: item.id, done: e.target.checked ? '1' : '0'}));
  const title = li.querySelector('.title-input');
  title.addEventListener('change', () => {
    if (title.value.trim()) post('/api/rename', {id: item.id, title: title.value.trim()});
  });
  title.addEventListener('keydown', (e) => { if (e.key === 'Enter') title.blur(); });
  // Schema version 2 only (hidden on version 1: the board has no such columns).
  const due = li.querySelector('.due-input');
  due.addEventListener('change', () => post('/api/due', {id: item.id, due: due.value}));
  const assignee = li.querySelector('.assignee-input');
  assignee.addEventListener('change', () =>
    post('/api/assign', {id: item.id, assignee: assignee.value.trim()}));
  assignee.addEventListener('keydown', (e) => { if (e.key === 'Enter') assignee.blur(); });
  li.querySelector('.vote-button').addEventListener('click', () => post('/api/vote', {id: item.id}));
  li.querySelector('.delete').addEventListener('click', () => post('/api/delete', {id: item.id}));
  li.querySelector('.up').addEventListener('click', () => move(item.id, -1));
  li.querySelector('.down').addEventListener('click', () => move(item.id, +1));
  return li;
}

// Up: after the item two above (or to the top). Down: after the item below.
function move(id, direction) {
  const ids = current.items.map((item) => item.id);
  const i = ids.indexOf(id);
  if (direction < 0 && i > 0) post('/api/move', {id, after: i >= 2 ? ids[i - 2] : ''});
  if (direction > 0 && i >= 0 && i + 1 < ids.length) post('/api/move', {id, after: ids[i + 1]});
}

function render(state) {
  current = state;
  document.title = `${state.device} · lattice-todo`;
  document.body.dataset.state = state.state;
  $('#device').textContent = state.device;
  $('#sync-state').textContent = state.state;
  $('#pending').textContent = state.pending;
  $('#schema-version').textContent = state.schema_version;
  document.body.classList.toggle('v1', state.schema_version < 2);
  const toggle = $('#offline-toggle');
  toggle.checked = state.offline;
  toggle.disabled = !state.has_relay;
  if (state.last_error && state.state !== 'live' && !state.offline) showError(state.last_error);

  const existing = new Map([...board.children].map((li) => [li.dataset.id, li]));
  state.items.forEach((item, index) => {
    let li = existing.get(item.id);
    if (!li) li = itemElement(item);
    existing.delete(item.id);
    li.classList.toggle('done', item.done);
    li.querySelector('.done-toggle').checked = item.done;
    const title = li.querySelector('.title-input');
    if (document.activeElement !== title) title.value = item.title;
    const due = li.querySelector('.due-input');
    if (document.activeElement !== due) due.value = item.due || '';
    const assignee = li.querySelector('.assignee-input');
    if (document.activeElement !== assignee) assignee.value = item.assignee || '';
    li.querySelector('.votes').textContent = item.votes;
    if (board.children[index] !== li) board.insertBefore(li, board.children[index] || null);
  });
  for (const li of existing.values()) li.remove();
  $('#empty').hidden = state.items.length > 0;
}

$('#add-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $('#new-title');
  const title = input.value.trim();
  if (!title) return;
  input.value = '';
  post('/api/add', {title});
});

$('#offline-toggle').addEventListener('change', (e) =>
  post('/api/offline', {offline: e.target.checked ? '1' : '0'}));

// EventSource reconnects by itself when the app restarts.
const events = new EventSource('/api/events');
events.onmessage = (e) => { showError(''); render(JSON.parse(e.data)); };
events.onerror = () => {
  document.body.dataset.state = 'unreachable';
  $('#sync-state').textContent = 'app not reachable';
};
