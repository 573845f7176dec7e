// certmq web console: a single-page app over the admin REST API (/api/v1).
//
// Plain modern JavaScript, no build step, no dependencies, nothing loaded from elsewhere.
// It holds no rules of its own: the server decides, and whatever the server answers —
// including every error, with its code and message — is what the page shows.
//
// The bearer token typed at sign-in is kept in sessionStorage: it lives as long as the
// tab and is sent only to this origin's /api/v1.

const API = '/api/v1';
const SESSION_KEY = 'certmq.console.session';
/** Certificates expiring within this many days are "soon" (the expiry overview's window). */
const SOON_DAYS = 30;
/** ... and within this many, critical. */
const CRITICAL_DAYS = 7;
/** How often the connections page refreshes itself. */
const CONNECTIONS_REFRESH_MS = 5000;

/* ------------------------------------------------------------------ DOM helpers */

/**
 * Builds an element: h('button', {class: 'x', onclick: fn}, 'text', child).
 * Strings become text nodes, so nothing from the server is ever parsed as HTML.
 */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'value') {
      el.value = value;
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
  appendAll(el, children);
  return el;
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Encodes one path segment; `:` and `@` may stay (identities and client ids are full of them). */
const enc = (segment) => encodeURIComponent(segment).replace(/%3A/gi, ':').replace(/%40/g, '@');
const $ = (selector, root = document) => root.querySelector(selector);

/** A labelled form field: <div class="field"><label>..</label><input ..><small>hint</small></div>. */
function field(label, input, hint) {
  if (!input.id) input.id = `f-${Math.random().toString(36).slice(2, 10)}`;
  const parts = [h('label', { for: input.id }, label), input];
  if (hint) {
    const hintId = `${input.id}-hint`;
    input.setAttribute('aria-describedby', hintId);
    parts.push(h('small', { id: hintId, class: 'hint' }, hint));
  }
  return h('div', { class: 'field' }, parts);
}

/**
 * A data table that turns into stacked cards at phone width (each cell carries its
 * column label). columns: [{label, cell: row => node|string, class?}].
 */
function table(columns, rows, { empty, caption, rowAttrs } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty || 'Nothing here yet.');
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'data' },
      caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c.label)))),
      h('tbody', {}, rows.map((row) => h('tr', rowAttrs ? rowAttrs(row) : {},
        columns.map((c) => h('td', { 'data-label': c.label, class: c.class }, c.cell(row))))))));
}

/** A definition list from [term, value] pairs; pairs with an empty value are left out. */
function details(pairs) {
  return h('dl', { class: 'details' },
    pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
      .map(([term, value]) => h('div', {}, h('dt', {}, term), h('dd', {}, value))));
}

/** Runs `fn` with `button` disabled and marked busy, so a slow request is not sent twice. */
async function busy(button, fn) {
  const wasDisabled = button.disabled;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await fn();
  } finally {
    button.disabled = wasDisabled;
    button.removeAttribute('aria-busy');
  }
}

/* ------------------------------------------------------------------ formatting */

function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return h('time', { datetime: iso, title: iso }, `${d.toISOString().slice(0, 16).replace('T', ' ')} UTC`);
}

function fmtDate(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return h('time', { datetime: iso, title: iso }, d.toISOString().slice(0, 10));
}

/** Whole days from now until `iso` (negative once past), as the server counts them. */
function daysUntil(iso) {
  return Math.floor((new Date(iso).getTime() - Date.now()) / 86400000);
}

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** The days-left badge: red once expired or within a week, amber within 30 days, green after. */
function daysBadge(days) {
  let cls;
  let text;
  if (days < 0) {
    cls = 'expired';
    text = `expired ${plural(-days, 'day')} ago`;
  } else {
    cls = days <= CRITICAL_DAYS ? 'critical' : days <= SOON_DAYS ? 'soon' : 'ok';
    text = days === 0 ? 'expires today' : `${plural(days, 'day')} left`;
  }
  return h('span', { class: `badge days ${cls}` }, text);
}

function validity(cert) {
  return h('div', { class: 'validity' },
    h('span', {}, fmtDate(cert.not_before), ' → ', fmtDate(cert.not_after)), ' ',
    daysBadge(cert.days_to_expiry ?? daysUntil(cert.not_after)));
}

function fingerprint(fp) {
  return h('code', { class: 'fp', title: 'SHA-256 fingerprint' }, fp || '');
}

/** The start of a long value (fingerprint, serial), the whole of it on hover. */
function abbrev(value, n) {
  const v = String(value || '');
  return h('code', { title: v }, v.length > n ? `${v.slice(0, n)}…` : v);
}

function shortId(id) {
  return h('code', { title: id }, String(id).slice(0, 8));
}

function activeBadge(active) {
  return h('span', { class: `badge ${active ? 'on' : 'off'}` }, active ? 'active' : 'inactive');
}

/** The fields of a parsed certificate (a CA, a server certificate, a preview). */
function certDetails(c) {
  return details([
    ['Subject', c.subject],
    ['Issuer', c.issuer],
    ['Serial', c.serial && h('code', {}, c.serial)],
    ['Valid', validity(c)],
    ['SHA-256 fingerprint', fingerprint(c.fingerprint_sha256)],
    ['Key', c.key_type],
    ['CA certificate', c.is_ca === undefined ? '' : c.is_ca ? 'yes (basicConstraints CA:TRUE)' : 'no'],
    ['DNS names', (c.dns_names || []).join(', ')],
  ]);
}

/* ------------------------------------------------------------------ session and API */

const session = {
  token: null,
  /** True for the platform admin token; false for an org token. */
  admin: false,
  /** The org of an org token. */
  org: null,
  /** Orgs the token sees, as last listed. */
  orgs: [],
  load() {
    try {
      Object.assign(this, JSON.parse(sessionStorage.getItem(SESSION_KEY)) || {});
    } catch {
      sessionStorage.removeItem(SESSION_KEY);
    }
  },
  save() {
    const { token, admin, org } = this;
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token, admin, org }));
  },
  clear() {
    Object.assign(this, { token: null, admin: false, org: null, orgs: [] });
    sessionStorage.removeItem(SESSION_KEY);
  },
};

/** An API failure: the server's `{"error":{"code","message"}}`, or what we know instead. */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the admin API. opts: json (a body to send as JSON), body + contentType (a raw
 * body; a FormData sets its own type), raw (return the Response), token (override).
 * Resolves to the parsed JSON (null for 204); rejects with an ApiError.
 */
async function api(method, path, opts = {}) {
  const headers = { Authorization: `Bearer ${opts.token ?? session.token}` };
  let { body } = opts;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  } else if (opts.contentType) {
    headers['Content-Type'] = opts.contentType;
  }
  let resp;
  try {
    resp = await fetch(API + path, { method, headers, body, cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    throw new ApiError(0, 'network_error', `certmq did not answer (${e.message}). Is the server running?`);
  }
  if (!resp.ok) {
    const err = await errorOf(resp);
    if (resp.status === 401 && !opts.token) signOut(err);
    throw err;
  }
  if (opts.raw) return resp;
  if (resp.status === 204) return null;
  const type = resp.headers.get('content-type') || '';
  return type.includes('json') ? resp.json() : resp.text();
}

async function errorOf(resp) {
  const text = await resp.text().catch(() => '');
  try {
    const e = JSON.parse(text).error;
    if (e && e.message) return new ApiError(resp.status, e.code || 'error', e.message);
  } catch {
    // Not JSON: fall through to the text.
  }
  const message = text.trim() || resp.statusText || 'the server sent no message';
  return new ApiError(resp.status, `http_${resp.status}`, message.slice(0, 500));
}

/** An error as the page shows it: the code (the rule that failed), the message, the status. */
function errorBox(err, context) {
  const box = h('div', { class: 'alert error', role: 'alert' },
    context ? h('strong', {}, `${context}: `) : null,
    h('code', { class: 'error-code' }, err.code || 'error'), ' ',
    h('span', { class: 'error-message' }, err.message || String(err)),
    err.status ? h('span', { class: 'status' }, ` (HTTP ${err.status})`) : null);
  if (err.status === 404 && err.code === 'not_found' && /route/.test(err.message)) {
    box.append(h('p', { class: 'hint' },
      'This certmq server does not offer this endpoint yet; the page works once the server does.'));
  }
  return box;
}

function showError(slot, err, context) {
  if (!(err instanceof ApiError)) console.error(err);
  slot.replaceChildren(errorBox(err, context));
}

function showOk(slot, ...content) {
  slot.replaceChildren(h('div', { class: 'alert ok', role: 'status' }, content));
}

let toastTimer;
function toast(message) {
  const el = $('#toast');
  el.textContent = message;
  el.classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove('show'), 4000);
}

/** A modal confirmation naming what is about to happen. Resolves true on confirm. */
function confirmDialog({ title, body, confirm }) {
  return new Promise((resolve) => {
    const cancel = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
    const ok = h('button', { type: 'button', class: 'danger', id: 'confirm-ok' }, confirm);
    const dialog = h('dialog', { class: 'confirm', 'aria-labelledby': 'confirm-title' },
      h('h2', { id: 'confirm-title' }, title),
      [body].flat().map((p) => h('p', {}, p)),
      h('div', { class: 'actions' }, cancel, ok));
    cancel.addEventListener('click', () => dialog.close('cancel'));
    ok.addEventListener('click', () => dialog.close('ok'));
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'ok');
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** Fetches an API file (it needs the bearer header, so a plain link cannot) and saves it. */
async function download(path, fallbackName) {
  const resp = await api('GET', path, { raw: true });
  const disposition = resp.headers.get('content-disposition') || '';
  const name = /filename="([^"]+)"/.exec(disposition)?.[1] || fallbackName;
  const url = URL.createObjectURL(await resp.blob());
  const a = h('a', { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** PEM text goes as a PEM file, anything else as DER; the server reads both. */
function certContentType(bytes, der = 'application/pkix-cert') {
  const head = new TextDecoder().decode(bytes.slice(0, 4096));
  return head.includes('-----BEGIN') ? 'application/x-pem-file' : der;
}

/* ------------------------------------------------------------------ routing */

/** Counts renders; a page's timers stop once another page has been rendered. */
let renderCount = 0;

const ORG_TABS = [
  ['ca-certs', 'CA certificates', tabCaCerts],
  ['server-certs', 'Server certificates', tabServerCerts],
  ['csrs', 'CSR wizard', tabCsrs],
  ['connections', 'Connections', tabConnections],
  ['devices', 'Devices', tabDevices],
  ['network-policy', 'Network policy', tabNetwork],
  ['security-policy', 'Security policy', tabSecurity],
  ['authz', 'Dry run', tabDryRun],
  ['blocked-devices', 'Blocked devices', tabBlocked],
  ['crls', 'CRLs', tabCrls],
  ['outgoing', 'Outgoing', tabOutgoing],
  ['audit', 'Audit log', tabAudit],
  ['settings', 'Tokens, domains & limits', tabSettings],
];

function homeHash() {
  return session.admin || !session.org ? '#/orgs' : `#/org/${enc(session.org)}/ca-certs`;
}

async function render({ focus = false } = {}) {
  renderCount += 1;
  const main = $('#main');
  updateChrome();
  if (!session.token) {
    pageSignIn(main);
    return;
  }
  const hash = location.hash || homeHash();
  let m;
  main.replaceChildren();
  if (hash === '#/orgs') await pageOrgs(main);
  else if (hash === '#/expiry') await pageExpiry(main);
  else if (hash === '#/audit') await pagePlatformAudit(main);
  else if ((m = /^#\/org\/([^/]+)\/([a-z-]+)(?:\/([^/]+))?$/.exec(hash))) {
    await pageOrg(main, decodeURIComponent(m[1]), m[2], m[3] && decodeURIComponent(m[3]));
  } else {
    location.replace(homeHash());
    return;
  }
  if (focus) ($('h1', main) || main).focus();
}

/** Goes to `hash`, rendering it even when it is already the current one. */
function navigate(hash) {
  if (location.hash === hash) render({ focus: true });
  else location.hash = hash;
}

function updateChrome() {
  const signedIn = Boolean(session.token);
  $('#nav').hidden = !signedIn;
  $('#who').hidden = !signedIn;
  for (const el of document.querySelectorAll('[data-admin-only]')) el.hidden = !session.admin;
  $('#who-label').textContent = session.admin ? 'Platform admin' : `Org token · ${session.org || ''}`;
  const current = (location.hash || '').split('/')[1] || 'orgs';
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.nav === (current === 'org' ? 'orgs' : current)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function signOut(reason) {
  session.clear();
  signOutReason = reason || null;
  if (location.hash) history.replaceState(null, '', location.pathname);
  render();
}

let signOutReason = null;

/* ------------------------------------------------------------------ sign in */

function pageSignIn(main) {
  const token = h('input', { type: 'password', id: 'token', name: 'token', required: true, autocomplete: 'off', spellcheck: 'false' });
  const msg = h('div', { class: 'messages' });
  if (signOutReason) showError(msg, signOutReason, 'Signed out');
  const submit = h('button', { type: 'submit', id: 'sign-in' }, 'Sign in');
  const form = h('form', { class: 'card narrow', onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      try {
        await signIn(token.value.trim());
        signOutReason = null;
        navigate(homeHash());
      } catch (err) {
        showError(msg, err, 'Sign-in failed');
      }
    });
  } },
  h('h1', { tabindex: '-1' }, 'Sign in to certmq'),
  h('p', {}, 'Use the platform admin token (printed at first start and kept in ',
    h('code', {}, '<data-dir>/admin-token'), ') or an org token. The token stays in this browser tab only.'),
  msg,
  field('API token', token),
  h('div', { class: 'actions' }, submit));
  main.replaceChildren(form);
  token.focus();
}

/** Checks the token and learns what it may see: every org (platform) or its own. */
async function signIn(token) {
  if (!token) throw new ApiError(0, 'missing_token', 'Enter a token.');
  const orgs = await api('GET', '/orgs', { token });
  let admin = true;
  try {
    await api('GET', '/audit?limit=1', { token });
  } catch (e) {
    if (e.status !== 403) throw e;
    admin = false;
  }
  Object.assign(session, { token, admin, org: admin ? null : orgs[0]?.id ?? null, orgs });
  session.save();
}

/* ------------------------------------------------------------------ orgs */

async function loadOrgs() {
  session.orgs = await api('GET', '/orgs');
  return session.orgs;
}

async function pageOrgs(main) {
  const msg = h('div', { class: 'messages' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  main.append(h('h1', { tabindex: '-1' }, 'Organizations'), msg,
    h('section', { class: 'card' }, h('h2', {}, session.admin ? 'All organizations' : 'Your organization'), list));
  if (session.admin) main.append(createOrgForm(msg));

  try {
    const orgs = await loadOrgs();
    list.replaceChildren(table([
      { label: 'ID', cell: (o) => h('a', { href: `#/org/${enc(o.id)}/ca-certs` }, o.id) },
      { label: 'Name', cell: (o) => o.name },
      { label: 'Created', cell: (o) => fmtTime(o.created_at) },
      { label: 'Open', cell: (o) => h('div', { class: 'row-actions' },
        ORG_TABS.slice(0, 4).map(([tab, label]) => h('a', { href: `#/org/${enc(o.id)}/${tab}`, class: 'chip' }, label)),
        session.admin ? h('button', { type: 'button', class: 'danger small', 'aria-label': `Delete organization ${o.id}`, onclick: (e) => deleteOrg(e.currentTarget, o, msg) }, 'Delete') : null) },
    ], orgs, {
      caption: 'Organizations',
      empty: session.admin ? 'No organizations yet: create the first one below.' : 'This token sees no organization.',
    }));
  } catch (e) {
    list.replaceChildren();
    showError(msg, e, 'Loading organizations');
  }
}

function createOrgForm(msg) {
  const id = h('input', { id: 'org-id', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'acme' });
  const name = h('input', { id: 'org-name', autocomplete: 'off', placeholder: 'Acme Corp' });
  const submit = h('button', { type: 'submit', id: 'org-create' }, 'Create organization');
  return h('form', { class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      try {
        const org = await api('POST', '/orgs', { json: { id: id.value.trim(), name: name.value.trim() } });
        toast(`Created organization ${org.id}`);
        location.hash = `#/org/${enc(org.id)}/ca-certs`;
      } catch (err) {
        showError(msg, err, 'Creating the organization failed');
        msg.scrollIntoView({ block: 'nearest' });
      }
    });
  } },
  h('h2', {}, 'Create an organization'),
  h('div', { class: 'grid' },
    field('ID', id, '1–32 lowercase letters and digits, starting with a letter (no dashes); devices reach it as <id>.<domain>.'),
    field('Name', name, 'Optional; defaults to the ID.')),
  h('div', { class: 'actions' }, submit));
}

async function deleteOrg(button, org, msg) {
  const yes = await confirmDialog({
    title: `Delete organization “${org.id}”?`,
    body: [`This deletes ${org.name || org.id} with all of its certificates, tokens, domains and audit log, and closes every live session of its devices.`, 'This cannot be undone.'],
    confirm: `Delete ${org.id}`,
  });
  if (!yes) return;
  await busy(button, async () => {
    try {
      await api('DELETE', `/orgs/${enc(org.id)}`);
      toast(`Deleted organization ${org.id}`);
      render();
    } catch (e) {
      showError(msg, e, `Deleting ${org.id} failed`);
    }
  });
}

/* ------------------------------------------------------------------ one org */

async function pageOrg(main, org, tab, id) {
  const entry = ORG_TABS.find(([t]) => t === tab);
  if (!entry) {
    location.replace(`#/org/${enc(org)}/ca-certs`);
    return;
  }
  const title = h('h1', { tabindex: '-1' }, `Organization ${org}`);
  const header = h('div', { class: 'org-header' }, title);
  const msg = h('div', { class: 'messages' });
  const tabs = h('nav', { class: 'tabs', 'aria-label': `Pages of ${org}` },
    ORG_TABS.map(([t, label]) => h('a', { href: `#/org/${enc(org)}/${t}`, 'aria-current': t === tab ? 'page' : false }, label)));
  const body = h('div', { class: 'tab-body' });
  main.append(header, msg, tabs, body);

  // The org's name, and a switcher when the token sees several.
  try {
    const info = await api('GET', `/orgs/${enc(org)}`);
    if (info.name && info.name !== info.id) title.append(h('span', { class: 'org-name' }, ` · ${info.name}`));
    // The broker could not apply the org's latest change: it serves the last good one.
    if (info.tls_error) {
      header.after(h('div', { class: 'alert error', role: 'alert', id: 'tls-error' },
        h('strong', {}, 'TLS configuration not applied: '),
        h('span', {}, info.tls_error),
        h('p', { class: 'hint' }, 'Devices are served with the last configuration that worked until this is fixed.')));
    }
  } catch (e) {
    showError(msg, e, `Opening organization ${org}`);
    tabs.remove();
    return;
  }
  if (session.admin) {
    const orgs = session.orgs.length ? session.orgs : await loadOrgs().catch(() => []);
    if (orgs.length > 1) {
      const select = h('select', { id: 'org-switch', onchange: () => { location.hash = `#/org/${enc(select.value)}/${tab}`; } },
        orgs.map((o) => h('option', { value: o.id, selected: o.id === org }, o.id)));
      header.append(h('div', { class: 'switch' }, h('label', { for: 'org-switch' }, 'Organization'), select));
    }
  }
  await entry[2](body, org, id);
}

/* ---------- CA certificates */

async function tabCaCerts(root, org) {
  const msg = h('div', { class: 'messages' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  root.append(
    h('section', { class: 'card' },
      h('h2', {}, 'CA certificates'),
      h('p', { class: 'muted' }, 'Devices of this org connect with certificates issued by its active CAs. Every change applies to the next handshake; deactivating or deleting a CA closes the live sessions only it admitted.'),
      msg, list),
    caUpload(org, reload));

  async function reload() {
    try {
      const cas = await api('GET', `/orgs/${enc(org)}/ca-certs`);
      list.replaceChildren(caTable(org, cas, msg, reload));
    } catch (e) {
      list.replaceChildren();
      showError(msg, e, 'Loading CA certificates');
    }
  }
  await reload();
}

function caTable(org, cas, msg, reload) {
  return table([
    { label: 'Subject', cell: (c) => [h('strong', {}, c.subject), h('div', { class: 'muted small' }, c.key_type, ' · serial ', h('code', {}, c.serial))] },
    { label: 'Issuer', cell: (c) => c.issuer },
    { label: 'SHA-256 fingerprint', cell: (c) => fingerprint(c.fingerprint_sha256), class: 'fp-cell' },
    { label: 'Validity', cell: (c) => validity(c) },
    { label: 'Active', cell: (c) => activeToggle(org, c, msg) },
    { label: 'Description', cell: (c) => descriptionForm(org, c, msg) },
    { label: 'Actions', cell: (c) => h('button', {
      type: 'button', class: 'danger small', 'aria-label': `Delete CA certificate ${c.subject}`,
      onclick: (e) => deleteCa(e.currentTarget, org, c, msg, reload),
    }, 'Delete') },
  ], cas, {
    caption: 'CA certificates',
    empty: 'No CA certificates yet: no device of this org can connect until you upload the CA that issued its certificate.',
    rowAttrs: (c) => ({ 'data-id': c.id, 'data-fingerprint': c.fingerprint_sha256 }),
  });
}

function activeToggle(org, ca, msg) {
  const box = h('input', { type: 'checkbox', role: 'switch', checked: ca.active, 'aria-label': `Active: ${ca.subject}` });
  const state = h('span', { 'aria-hidden': 'true' }, ca.active ? 'on' : 'off');
  box.addEventListener('change', async () => {
    box.disabled = true;
    try {
      const updated = await api('PATCH', `/orgs/${enc(org)}/ca-certs/${enc(ca.id)}`, { json: { active: box.checked } });
      toast(`${updated.active ? 'Activated' : 'Deactivated'} ${updated.subject}`);
    } catch (e) {
      box.checked = !box.checked;
      showError(msg, e, `Changing ${ca.subject}`);
    } finally {
      box.disabled = false;
      state.textContent = box.checked ? 'on' : 'off';
    }
  });
  return h('label', { class: 'switch-label' }, box, state);
}

function descriptionForm(org, ca, msg) {
  const input = h('input', { type: 'text', value: ca.description, 'aria-label': `Description of ${ca.subject}`, placeholder: 'Add a description' });
  const save = h('button', { type: 'submit', class: 'secondary small' }, 'Save');
  return h('form', { class: 'inline', onsubmit: async (e) => {
    e.preventDefault();
    await busy(save, async () => {
      try {
        await api('PATCH', `/orgs/${enc(org)}/ca-certs/${enc(ca.id)}`, { json: { description: input.value } });
        toast(`Saved the description of ${ca.subject}`);
      } catch (err) {
        showError(msg, err, `Saving the description of ${ca.subject}`);
      }
    });
  } }, input, save);
}

async function deleteCa(button, org, ca, msg, reload) {
  const yes = await confirmDialog({
    title: `Delete CA certificate “${ca.subject}”?`,
    body: [
      `Fingerprint ${ca.fingerprint_sha256}${ca.description ? ` (${ca.description})` : ''}.`,
      'Devices whose certificates it issued can no longer connect, and the live sessions it admitted are closed now.',
    ],
    confirm: 'Delete CA certificate',
  });
  if (!yes) return;
  await busy(button, async () => {
    try {
      await api('DELETE', `/orgs/${enc(org)}/ca-certs/${enc(ca.id)}`);
      toast(`Deleted ${ca.subject}`);
      await reload();
    } catch (e) {
      showError(msg, e, `Deleting ${ca.subject} failed`);
    }
  });
}

/** Upload by file picker, drag and drop or paste; the server previews it before it is saved. */
function caUpload(org, onSaved) {
  const msg = h('div', { class: 'messages' });
  const preview = h('div', { class: 'preview', id: 'ca-preview', hidden: true });
  const file = h('input', { type: 'file', id: 'ca-file', accept: '.pem,.crt,.cer,.der,application/x-pem-file,application/pkix-cert' });
  const paste = h('textarea', { id: 'ca-paste', rows: '4', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
  const description = h('input', { type: 'text', id: 'ca-description', autocomplete: 'off' });
  const proof = h('textarea', { id: 'ca-proof', rows: '3', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
  const previewPaste = h('button', { type: 'button', class: 'secondary', id: 'ca-preview-paste' }, 'Preview pasted PEM');
  const save = h('button', { type: 'button', id: 'ca-save' }, 'Save CA certificate');
  const cancel = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
  let pending = null;

  function reset() {
    pending = null;
    preview.hidden = true;
    preview.replaceChildren();
  }

  async function runPreview(bytes, name) {
    reset();
    msg.replaceChildren(h('p', { class: 'muted' }, `Checking ${name}…`));
    try {
      const cert = await api('POST', `/orgs/${enc(org)}/ca-certs/preview`, { body: bytes, contentType: certContentType(bytes) });
      msg.replaceChildren();
      pending = { bytes, name };
      preview.replaceChildren(
        h('h3', {}, `Preview of ${name}`),
        h('p', { class: 'muted' }, 'The server checked it and stored nothing yet. Save it to admit devices whose certificates it issued.'),
        certDetails(cert),
        h('div', { class: 'actions' }, save, cancel));
      preview.hidden = false;
      save.focus();
    } catch (e) {
      showError(msg, e, `${name} was not accepted`);
    }
  }

  async function readFile(f) {
    if (!f) return;
    const bytes = new Uint8Array(await f.arrayBuffer());
    file.value = '';
    await runPreview(bytes, f.name);
  }

  file.addEventListener('change', () => readFile(file.files[0]));
  previewPaste.addEventListener('click', () => {
    if (!paste.value.trim()) {
      showError(msg, new ApiError(0, 'empty', 'Paste a PEM certificate first.'));
      return;
    }
    runPreview(new TextEncoder().encode(paste.value), 'the pasted certificate');
  });
  cancel.addEventListener('click', () => {
    reset();
    file.focus();
  });
  save.addEventListener('click', () => busy(save, async () => {
    if (!pending) return;
    try {
      let ca;
      if (proof.value.trim()) {
        // Proof of possession rides in the JSON form of the upload.
        const json = { certificate: pemText(pending.bytes), description: description.value, verification_certificate: proof.value.trim() };
        ca = await api('POST', `/orgs/${enc(org)}/ca-certs`, { json });
      } else {
        const path = `/orgs/${enc(org)}/ca-certs?description=${enc(description.value)}`;
        ca = await api('POST', path, { body: pending.bytes, contentType: certContentType(pending.bytes) });
      }
      reset();
      paste.value = '';
      description.value = '';
      proof.value = '';
      showOk(msg, `Saved ${ca.subject} (fingerprint `, fingerprint(ca.fingerprint_sha256), '). It is active.');
      await onSaved();
    } catch (e) {
      showError(msg, e, `Saving ${pending.name} failed`);
    }
  }));

  const drop = h('div', { class: 'dropzone', id: 'ca-drop' },
    h('p', {}, h('strong', {}, 'Drop a CA certificate here'), ' (PEM or DER, one certificate), or choose a file:'),
    field('Certificate file', file));
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    readFile(e.dataTransfer.files[0]);
  });

  return h('section', { class: 'card', 'aria-labelledby': 'ca-upload-title' },
    h('h2', { id: 'ca-upload-title' }, 'Upload a CA certificate'),
    drop,
    h('details', {}, h('summary', {}, 'Or paste PEM text'),
      field('PEM certificate', paste), h('div', { class: 'actions' }, previewPaste)),
    field('Description', description, 'Optional, e.g. who operates this CA.'),
    h('details', {}, h('summary', {}, 'Proof of possession (when the org requires it)'),
      field('Verification certificate (PEM)', proof, 'Signed by this CA, with a verification code from the Security policy page as its CN.')),
    msg, preview);
}

/** A certificate file's bytes as PEM text (DER is wrapped). */
function pemText(bytes) {
  const head = new TextDecoder().decode(bytes.slice(0, 4096));
  if (head.includes('-----BEGIN')) return new TextDecoder().decode(bytes);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  const b64 = btoa(bin).replace(/.{64}/g, '$&\n');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

/* ---------- server certificates */

async function tabServerCerts(root, org) {
  const msg = h('div', { class: 'messages' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const generate = h('button', { type: 'button', class: 'secondary', id: 'self-signed' }, 'Generate self-signed');
  generate.addEventListener('click', () => busy(generate, async () => {
    try {
      const cert = await api('POST', `/orgs/${enc(org)}/server-certs/self-signed`);
      showOk(msg, `Generated a self-signed certificate for ${(cert.dns_names || []).join(', ')}`, cert.active ? ' (active: it was the first).' : ' (inactive: activate it when ready).');
      await reload();
    } catch (e) {
      showError(msg, e, 'Generating a self-signed certificate failed');
    }
  }));
  root.append(
    h('section', { class: 'card' },
      h('h2', {}, 'Server certificates'),
      h('p', { class: 'muted' }, 'The broker presents the active one to devices of this org. Activating applies to the next handshake; the previous certificate stays, so rolling back is activating it again.'),
      msg, list,
      h('div', { class: 'actions' }, generate, h('a', { class: 'button secondary', href: `#/org/${enc(org)}/csrs` }, 'Request one with a CSR'))),
    serverUpload(org, reload));

  async function reload() {
    try {
      const certs = await api('GET', `/orgs/${enc(org)}/server-certs`);
      list.replaceChildren(serverTable(org, certs, msg, reload));
    } catch (e) {
      list.replaceChildren();
      showError(msg, e, 'Loading server certificates');
    }
  }
  await reload();
}

function serverTable(org, certs, msg, reload) {
  return table([
    { label: 'Subject', cell: (c) => [h('strong', {}, c.subject), h('div', { class: 'muted small' }, (c.dns_names || []).join(', '))] },
    { label: 'Issuer', cell: (c) => c.issuer },
    { label: 'Origin', cell: (c) => c.origin },
    // Tells apart certificates with the same subject (the API lists the active one
    // first, then the newest).
    { label: 'Created', cell: (c) => [fmtTime(c.created_at), h('div', { class: 'muted small' }, h('code', { class: 'fp', title: c.fingerprint_sha256 }, String(c.fingerprint_sha256 || '').slice(0, 16)), '…')] },
    { label: 'Validity', cell: (c) => validity(c) },
    { label: 'Status', cell: (c) => activeBadge(c.active) },
    { label: 'Actions', cell: (c) => h('div', { class: 'row-actions' },
      c.active ? null : h('button', {
        type: 'button', class: 'small', 'aria-label': `Activate ${c.subject} (${c.id})`,
        onclick: (e) => activateServerCert(e.currentTarget, org, c, msg, reload),
      }, 'Activate'),
      h('button', {
        type: 'button', class: 'secondary small', 'aria-label': `Download the chain of ${c.subject} (${c.id})`,
        onclick: (e) => busy(e.currentTarget, () => download(`/orgs/${enc(org)}/server-certs/${enc(c.id)}/chain.pem`, `${c.id}-chain.pem`)
          .catch((err) => showError(msg, err, 'Downloading the chain failed'))),
      }, 'Download chain'),
      c.active ? null : h('button', {
        type: 'button', class: 'danger small', 'aria-label': `Delete ${c.subject} (${c.id})`,
        onclick: (e) => deleteServerCert(e.currentTarget, org, c, msg, reload),
      }, 'Delete')) },
  ], certs, {
    caption: 'Server certificates',
    empty: 'No server certificate yet: devices get the platform default certificate. Generate a self-signed one, upload one, or request one with a CSR.',
    rowAttrs: (c) => ({ 'data-id': c.id, class: c.active ? 'is-active' : '' }),
  });
}

async function activateServerCert(button, org, cert, msg, reload) {
  await busy(button, async () => {
    try {
      await api('POST', `/orgs/${enc(org)}/server-certs/${enc(cert.id)}/activate`);
      showOk(msg, `Activated ${cert.subject}: the next handshake presents it.`);
      await reload();
    } catch (e) {
      showError(msg, e, `Activating ${cert.subject} failed`);
    }
  });
}

async function deleteServerCert(button, org, cert, msg, reload) {
  const yes = await confirmDialog({
    title: `Delete server certificate “${cert.subject}”?`,
    body: [`${(cert.dns_names || []).join(', ')} · ${cert.origin} · fingerprint ${cert.fingerprint_sha256}.`, 'Its private key is destroyed with it; you cannot roll back to it afterwards.'],
    confirm: 'Delete server certificate',
  });
  if (!yes) return;
  await busy(button, async () => {
    try {
      await api('DELETE', `/orgs/${enc(org)}/server-certs/${enc(cert.id)}`);
      toast(`Deleted ${cert.subject}`);
      await reload();
    } catch (e) {
      showError(msg, e, `Deleting ${cert.subject} failed`);
    }
  });
}

/** Upload a PEM chain + key (+ passphrase) or a PKCS#12 file (+ password), as a form. */
function serverUpload(org, onSaved) {
  const msg = h('div', { class: 'messages', id: 'server-upload-messages' });
  const chain = h('input', { type: 'file', id: 'srv-chain', accept: '.pem,.crt,.cer' });
  const key = h('input', { type: 'file', id: 'srv-key', accept: '.pem,.key' });
  const passphrase = h('input', { type: 'password', id: 'srv-passphrase', autocomplete: 'off' });
  const p12 = h('input', { type: 'file', id: 'srv-p12', accept: '.p12,.pfx' });
  const password = h('input', { type: 'password', id: 'srv-password', autocomplete: 'off' });
  const pemRadio = h('input', { type: 'radio', name: 'srv-kind', id: 'srv-kind-pem', value: 'pem', checked: true });
  const p12Radio = h('input', { type: 'radio', name: 'srv-kind', id: 'srv-kind-p12', value: 'p12' });
  const pemFields = h('div', { class: 'grid' },
    field('Certificate chain (PEM, leaf first)', chain, 'Intermediates in the same file; any order is fixed and reported.'),
    field('Private key (PEM)', key, 'PKCS#8, SEC1 or PKCS#1; encrypted PKCS#8 needs its passphrase.'),
    field('Passphrase', passphrase, 'Only for an encrypted key.'));
  const p12Fields = h('div', { class: 'grid', hidden: true },
    field('PKCS#12 file (.p12, .pfx)', p12),
    field('Password', password));
  const submit = h('button', { type: 'submit', id: 'srv-upload' }, 'Upload');
  const sync = () => {
    pemFields.hidden = !pemRadio.checked;
    p12Fields.hidden = !p12Radio.checked;
  };
  pemRadio.addEventListener('change', sync);
  p12Radio.addEventListener('change', sync);

  const form = h('form', { class: 'card', 'aria-labelledby': 'srv-upload-title', onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      const body = new FormData();
      if (pemRadio.checked) {
        if (!chain.files[0] || !key.files[0]) {
          showError(msg, new ApiError(0, 'incomplete', 'Choose the certificate chain file and the private key file.'));
          return;
        }
        body.append('certificate', await chain.files[0].text());
        body.append('private_key', await key.files[0].text());
        if (passphrase.value) body.append('passphrase', passphrase.value);
      } else {
        if (!p12.files[0]) {
          showError(msg, new ApiError(0, 'incomplete', 'Choose the PKCS#12 file.'));
          return;
        }
        body.append('pkcs12', p12.files[0]);
        if (password.value) body.append('password', password.value);
      }
      try {
        const cert = await api('POST', `/orgs/${enc(org)}/server-certs`, { body });
        form.reset();
        sync();
        const activate = h('button', { type: 'button', class: 'small', onclick: (ev) => activateServerCert(ev.currentTarget, org, cert, msg, onSaved) }, 'Activate now');
        showOk(msg, `Uploaded ${cert.subject} for ${(cert.dns_names || []).join(', ')}; it is inactive until you activate it. `, activate,
          cert.notes?.length ? h('ul', {}, cert.notes.map((n) => h('li', {}, n))) : null);
        await onSaved();
      } catch (err) {
        showError(msg, err, 'The upload was refused');
      }
    });
  } },
  h('h2', { id: 'srv-upload-title' }, 'Upload a server certificate'),
  h('fieldset', { class: 'choice' }, h('legend', {}, 'What you have'),
    h('label', {}, pemRadio, ' PEM chain + private key'),
    h('label', {}, p12Radio, ' PKCS#12 file')),
  pemFields, p12Fields, msg,
  h('div', { class: 'actions' }, submit));
  return form;
}

/* ---------- CSR wizard */

const KEY_TYPES = [
  ['ecdsa-p256', 'ECDSA P-256 (recommended)'],
  ['ecdsa-p384', 'ECDSA P-384'],
  ['rsa-2048', 'RSA 2048'],
  ['rsa-3072', 'RSA 3072'],
  ['rsa-4096', 'RSA 4096 (takes a few seconds)'],
];

function steps(current) {
  return h('ol', { class: 'steps' },
    ['Subject and key', 'Have a CA sign it', 'Activate'].map((label, i) => h('li', {
      class: i + 1 < current ? 'done' : i + 1 === current ? 'current' : '',
      'aria-current': i + 1 === current ? 'step' : false,
    }, label)));
}

function subjectLine(s) {
  return [['CN', s.common_name], ['O', s.organization], ['OU', s.organizational_unit], ['L', s.locality],
    ['ST', s.state], ['C', s.country], ['emailAddress', s.email]]
    .filter(([, v]) => v).map(([k, v]) => `${k}=${v}`).join(', ');
}

async function tabCsrs(root, org, id) {
  const wizard = h('section', { class: 'card wizard', 'aria-labelledby': 'csr-title' });
  const listMsg = h('div', { class: 'messages' });
  const list = h('div', {});
  root.append(wizard, h('section', { class: 'card' }, h('h2', {}, 'Certificate signing requests'), listMsg, list));

  if (id) await csrStep(wizard, org, id);
  else csrForm(wizard, org);

  try {
    const csrs = await api('GET', `/orgs/${enc(org)}/csrs`);
    list.replaceChildren(table([
      { label: 'Common name', cell: (c) => h('a', { href: `#/org/${enc(org)}/csrs/${enc(c.id)}` }, c.subject.common_name) },
      { label: 'Purpose', cell: (c) => c.purpose },
      { label: 'SANs', cell: (c) => c.sans.join(', ') },
      { label: 'Key', cell: (c) => c.key_type },
      { label: 'Status', cell: (c) => h('span', { class: `badge ${c.status === 'completed' ? 'on' : 'pending'}` }, c.status) },
      { label: 'Created', cell: (c) => fmtTime(c.created_at) },
      { label: 'Actions', cell: (c) => h('div', { class: 'row-actions' },
        h('a', { class: 'button secondary small', href: `#/org/${enc(org)}/csrs/${enc(c.id)}` }, c.status === 'pending' ? 'Continue' : 'Open'),
        h('button', { type: 'button', class: 'danger small', 'aria-label': `Delete the CSR for ${c.subject.common_name} (${c.id})`, onclick: (e) => deleteCsr(e.currentTarget, org, c, listMsg) }, 'Delete')) },
    ], csrs.slice().reverse(), { caption: 'CSRs', empty: 'No CSRs yet.' }));
  } catch (e) {
    showError(listMsg, e, 'Loading CSRs');
  }
}

async function deleteCsr(button, org, csr, msg) {
  const pending = csr.status === 'pending';
  const yes = await confirmDialog({
    title: `Delete the CSR for “${csr.subject.common_name}”?`,
    body: pending
      ? ['Its private key is destroyed: a certificate signed for it can no longer be uploaded.']
      : ['The server certificate it became stays.'],
    confirm: 'Delete CSR',
  });
  if (!yes) return;
  await busy(button, async () => {
    try {
      await api('DELETE', `/orgs/${enc(org)}/csrs/${enc(csr.id)}`);
      toast(`Deleted the CSR for ${csr.subject.common_name}`);
      if (location.hash.endsWith(`/csrs/${enc(csr.id)}`)) location.hash = `#/org/${enc(org)}/csrs`;
      else render();
    } catch (e) {
      showError(msg, e, 'Deleting the CSR failed');
    }
  });
}

/** Step 1: subject, SANs and key type. */
function csrForm(wizard, org) {
  const msg = h('div', { class: 'messages' });
  const input = (id, attrs = {}) => h('input', { id, autocomplete: 'off', spellcheck: 'false', ...attrs });
  const cn = input('csr-cn', { required: true, maxlength: '64' });
  const o = input('csr-o', { maxlength: '64' });
  const ou = input('csr-ou', { maxlength: '64' });
  const c = input('csr-c', { maxlength: '2', pattern: '[A-Z]{2}', placeholder: 'DE' });
  const st = input('csr-st', { maxlength: '128' });
  const l = input('csr-l', { maxlength: '128' });
  const email = input('csr-email', { type: 'email' });
  const sans = h('textarea', { id: 'csr-sans', rows: '3', spellcheck: 'false' });
  const keyType = h('select', { id: 'csr-key-type' }, KEY_TYPES.map(([v, label]) => h('option', { value: v }, label)));
  const purpose = h('select', { id: 'csr-purpose' },
    h('option', { value: 'server' }, 'Server certificate: devices connect to this org with it'),
    h('option', { value: 'client' }, 'Client certificate: certmq connects to others with it (bridges, webhooks)'));
  const sansHint = h('span', { class: 'hint' });
  const syncPurpose = () => {
    sansHint.textContent = purpose.value === 'client'
      ? 'Optional for a client certificate: DNS names or IP addresses, one per line.'
      : 'DNS names or IP addresses, one per line. Empty: the common name. They must cover the org’s host name.';
  };
  purpose.addEventListener('change', syncPurpose);
  syncPurpose();
  const submit = h('button', { type: 'submit', id: 'csr-create' }, 'Generate key and CSR');

  // Suggest the org's host name, as its current server certificates name it.
  api('GET', `/orgs/${enc(org)}/server-certs`).then((certs) => {
    const host = certs.flatMap((x) => x.dns_names || []).find((n) => n.startsWith(`${org}.`));
    if (host) {
      cn.placeholder = host;
      sans.placeholder = host;
    }
  }).catch(() => {});

  const form = h('form', { onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      const subject = { common_name: cn.value.trim() };
      for (const [k, el] of [['organization', o], ['organizational_unit', ou], ['country', c], ['state', st], ['locality', l], ['email', email]]) {
        if (el.value.trim()) subject[k] = el.value.trim();
      }
      const body = { subject, sans: sans.value.split(/[\s,]+/).filter(Boolean), key_type: keyType.value, purpose: purpose.value };
      try {
        const csr = await api('POST', `/orgs/${enc(org)}/csrs`, { json: body });
        toast('CSR generated; the private key stays on the broker');
        location.hash = `#/org/${enc(org)}/csrs/${enc(csr.id)}`;
      } catch (err) {
        showError(msg, err, 'The CSR was not created');
      }
    });
  } },
  h('div', { class: 'grid' },
    field('Common name (required)', cn, 'Usually the host name devices connect to.'),
    field('Organization (O)', o),
    field('Organizational unit (OU)', ou),
    field('Country (C)', c, 'Two capital letters.'),
    field('State (ST)', st),
    field('Locality (L)', l),
    field('Email', email)),
  field('What it is for', purpose),
  field('Subject alternative names', sans, sansHint),
  field('Key type', keyType),
  msg,
  h('div', { class: 'actions' }, submit));

  wizard.replaceChildren(
    h('h2', { id: 'csr-title' }, 'Request a certificate'),
    steps(1),
    h('p', { class: 'muted' }, 'The broker generates the key pair and keeps the private key; only the CSR leaves it.'),
    form);
}

/** Steps 2 and 3 for an existing CSR. */
async function csrStep(wizard, org, id) {
  const msg = h('div', { class: 'messages' });
  wizard.replaceChildren(h('h2', { id: 'csr-title' }, 'Request a certificate'), msg);
  let csr;
  try {
    csr = await api('GET', `/orgs/${enc(org)}/csrs/${enc(id)}`);
  } catch (e) {
    showError(msg, e, 'Opening the CSR');
    wizard.append(h('a', { href: `#/org/${enc(org)}/csrs` }, 'Start a new CSR'));
    return;
  }
  const summary = details([
    ['Purpose', csr.purpose === 'client' ? 'client certificate (outgoing connections)' : 'server certificate'],
    ['Subject', subjectLine(csr.subject)],
    ['SANs', csr.sans.join(', ') || '—'],
    ['Key type', csr.key_type],
    ['Created', fmtTime(csr.created_at)],
  ]);
  if (csr.status === 'pending') csrSign(wizard, org, csr, summary, msg);
  else if (csr.purpose === 'client') {
    wizard.append(steps(3), summary, h('div', { class: 'alert ok', role: 'status', id: 'csr-state' },
      `This CSR became client certificate ${csr.client_cert_id}. `,
      h('a', { href: `#/org/${enc(org)}/outgoing` }, 'Use it for a bridge or webhook')));
  } else await csrActivate(wizard, org, csr, summary, msg);
  wizard.append(h('p', {}, h('a', { href: `#/org/${enc(org)}/csrs` }, 'Start another CSR')));
}

function csrSign(wizard, org, csr, summary, msg) {
  const pem = h('textarea', { id: 'csr-pem', rows: '8', readonly: true, spellcheck: 'false', value: csr.csr_pem });
  const downloadBtn = h('button', { type: 'button', class: 'secondary', id: 'csr-download' }, 'Download CSR (.pem)');
  downloadBtn.addEventListener('click', () => busy(downloadBtn, () =>
    download(`/orgs/${enc(org)}/csrs/${enc(csr.id)}.pem`, `${csr.id}.csr.pem`).catch((e) => showError(msg, e, 'Downloading the CSR failed'))));
  const copy = h('button', { type: 'button', class: 'secondary' }, 'Copy');
  copy.addEventListener('click', async () => {
    pem.select();
    try {
      await navigator.clipboard.writeText(csr.csr_pem);
      toast('CSR copied');
    } catch {
      toast('Selected: press Ctrl+C to copy');
    }
  });

  const file = h('input', { type: 'file', id: 'signed-file', accept: '.pem,.crt,.cer' });
  const paste = h('textarea', { id: 'signed-pem', rows: '5', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
  const submit = h('button', { type: 'submit', id: 'signed-upload' }, 'Upload signed certificate');
  const uploadMsg = h('div', { class: 'messages' });
  const form = h('form', { onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      const text = file.files[0] ? await file.files[0].text() : paste.value;
      if (!text.trim()) {
        showError(uploadMsg, new ApiError(0, 'incomplete', 'Choose the signed certificate file or paste it.'));
        return;
      }
      try {
        await api('POST', `/orgs/${enc(org)}/csrs/${enc(csr.id)}/certificate`, { body: text, contentType: 'application/x-pem-file' });
        toast('Signed certificate accepted');
        render();
      } catch (err) {
        showError(uploadMsg, err, 'The signed certificate was refused');
      }
    });
  } },
  h('h3', {}, 'Upload the signed certificate'),
  field('Certificate file (PEM, with any intermediates)', file),
  field('…or paste it', paste),
  uploadMsg,
  h('div', { class: 'actions' }, submit));

  wizard.append(steps(2), summary,
    field('CSR (PEM)', pem),
    h('div', { class: 'actions' }, downloadBtn, copy),
    h('details', {}, h('summary', {}, 'Signing it with your own CA (openssl)'),
      h('pre', {}, csr.purpose === 'client' ? `cat > client.ext <<'EOF'
extendedKeyUsage = clientAuth
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
EOF
openssl x509 -req -in ${csr.id}.csr.pem -CA ca.pem -CAkey ca.key \\
    -CAcreateserial -days 397 -extfile client.ext -out client.crt` : `cat > server.ext <<'EOF'
subjectAltName = ${csr.sans.map((s) => (/^[0-9.:]+$/.test(s) ? `IP:${s}` : `DNS:${s}`)).join(', ')}
extendedKeyUsage = serverAuth
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
EOF
openssl x509 -req -in ${csr.id}.csr.pem -CA ca.pem -CAkey ca.key \\
    -CAcreateserial -days 397 -extfile server.ext -out server.crt`)),
    form);
}

async function csrActivate(wizard, org, csr, summary, msg) {
  wizard.append(steps(3), summary);
  let cert;
  try {
    cert = await api('GET', `/orgs/${enc(org)}/server-certs/${enc(csr.server_cert_id)}`);
  } catch (e) {
    showError(msg, e, 'Loading the server certificate this CSR became');
    return;
  }
  const state = h('div', { id: 'csr-state' });
  const show = () => {
    if (cert.active) {
      state.replaceChildren(h('div', { class: 'alert ok', role: 'status' },
        activeBadge(true), ` The broker presents this certificate to devices connecting to ${(cert.dns_names || []).join(', ')}.`));
    } else {
      const activate = h('button', { type: 'button', id: 'csr-activate' }, 'Activate');
      activate.addEventListener('click', () => busy(activate, async () => {
        try {
          cert = await api('POST', `/orgs/${enc(org)}/server-certs/${enc(cert.id)}/activate`);
          toast(`Activated ${cert.subject}`);
          show();
          $('h2', state.closest('.wizard'))?.focus();
        } catch (e) {
          showError(msg, e, 'Activating failed');
        }
      }));
      state.replaceChildren(h('p', {}, activeBadge(false), ' The signed certificate is stored with its key. Activate it when you are ready: the next handshake presents it, and the previous certificate stays for a rollback.'),
        h('div', { class: 'actions' }, activate));
    }
  };
  show();
  wizard.append(h('h3', {}, 'The server certificate'), certDetails(cert), state);
}

/* ---------- live connections */

async function tabConnections(root, org) {
  const msg = h('div', { class: 'messages' });
  const filter = h('input', { type: 'search', id: 'conn-filter', placeholder: 'client id, identity, address…', autocomplete: 'off' });
  const auto = h('input', { type: 'checkbox', id: 'conn-auto', checked: true });
  const refresh = h('button', { type: 'button', class: 'secondary', id: 'conn-refresh' }, 'Refresh');
  const count = h('p', { class: 'muted', 'aria-live': 'polite' });
  const list = h('div', {});
  let sessions = [];
  let lastJson = '';

  root.append(h('section', { class: 'card' },
    h('h2', {}, 'Live connections'),
    h('div', { class: 'toolbar' },
      field('Filter', filter),
      h('label', { class: 'check' }, auto, ` Refresh every ${CONNECTIONS_REFRESH_MS / 1000} s`),
      refresh),
    msg, count, list));

  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = q ? sessions.filter((s) => JSON.stringify(s).toLowerCase().includes(q)) : sessions;
    count.textContent = q ? `${shown.length} of ${plural(sessions.length, 'session')}` : plural(sessions.length, 'live session');
    list.replaceChildren(table([
      { label: 'Client ID', cell: (s) => h('code', {}, s.client_id) },
      { label: 'Identity', cell: (s) => [s.identity, s.kind ? h('div', { class: 'muted small' }, s.kind) : null] },
      { label: 'Protocol', cell: (s) => s.protocol },
      { label: 'Remote address', cell: (s) => s.remote_addr },
      { label: 'Since', cell: (s) => fmtTime(s.since) },
      { label: 'Certificate', cell: (s) => [h('div', {}, 'serial ', h('code', {}, s.cert_serial)),
        s.cert_not_after ? daysBadge(daysUntil(s.cert_not_after)) : null,
        h('div', { class: 'muted small' }, 'CA ', h('code', { title: s.ca_fingerprint }, String(s.ca_fingerprint || '').slice(0, 16)), '…')] },
      { label: 'Actions', cell: (s) => h('button', {
        type: 'button', class: 'danger small kick', 'aria-label': `Kick ${s.client_id}`,
        onclick: (e) => kick(e.currentTarget, s),
      }, 'Kick') },
    ], shown, {
      caption: 'Live connections',
      empty: q ? 'No session matches the filter.' : 'No device or application of this org is connected.',
      rowAttrs: (s) => ({ 'data-client-id': s.client_id }),
    }));
  };

  async function load() {
    try {
      const next = await api('GET', `/orgs/${enc(org)}/connections`);
      msg.replaceChildren();
      const json = JSON.stringify(next);
      // Redraw only on change, so a periodic refresh does not steal keyboard focus.
      if (json !== lastJson) {
        lastJson = json;
        sessions = next;
        draw();
      }
    } catch (e) {
      showError(msg, e, 'Loading connections');
    }
  }

  async function kick(button, s) {
    await busy(button, async () => {
      try {
        await api('DELETE', `/orgs/${enc(org)}/connections/${enc(s.client_id)}`);
        toast(`Kicked ${s.client_id}`);
        // The session closes asynchronously: look again until it is gone.
        for (let i = 0; i < 20; i++) {
          await load();
          if (!sessions.some((x) => x.client_id === s.client_id && x.since === s.since)) break;
          await new Promise((r) => setTimeout(r, 250));
        }
      } catch (e) {
        showError(msg, e, `Kicking ${s.client_id} failed`);
      }
    });
  }

  filter.addEventListener('input', draw);
  refresh.addEventListener('click', () => busy(refresh, load));
  const page = renderCount;
  const timer = setInterval(() => {
    if (page !== renderCount) clearInterval(timer);
    else if (auto.checked && !document.hidden) load();
  }, CONNECTIONS_REFRESH_MS);
  await load();
}

/* ---------- device inventory */

/** Devices per inventory page. */
const DEVICES_PAGE = 50;

async function tabDevices(root, org) {
  const msg = h('div', { class: 'messages' });
  const prefix = h('input', { type: 'search', id: 'dev-prefix', placeholder: 'd:sensor:', autocomplete: 'off', spellcheck: 'false' });
  const expiring = h('input', { type: 'checkbox', id: 'dev-expiring' });
  const connected = h('select', { id: 'dev-connected' },
    h('option', { value: '' }, 'any'), h('option', { value: 'true' }, 'connected'), h('option', { value: 'false' }, 'not connected'));
  const search = h('button', { type: 'submit', id: 'dev-search' }, 'Search');
  const more = h('button', { type: 'button', class: 'secondary', id: 'dev-next', hidden: true }, 'Next page');
  const count = h('p', { class: 'muted', 'aria-live': 'polite' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  let devices = [];
  let revoked = [];

  root.append(h('section', { class: 'card' },
    h('h2', {}, 'Device inventory'),
    h('p', { class: 'muted' }, 'Every identity that ever connected, with the certificates it used. Revoking a certificate closes its sessions at once; the device can come back with another certificate.'),
    h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); busy(search, () => load(false)); } },
      field('Identity starts with', prefix),
      field('Connected', connected),
      h('label', { class: 'check' }, expiring, ` Certificate expires within ${SOON_DAYS} days`),
      search),
    msg, count, list, h('div', { class: 'actions' }, more)));

  const revocationOf = (c) => revoked.find((r) => r.fingerprint_sha256 === c.fingerprint_sha256
    || (r.ca_id === c.ca_id && r.serial === c.serial));

  function certRows(d) {
    return table([
      { label: 'Certificate', cell: (c) => [h('div', {}, 'SHA-256 ', abbrev(c.fingerprint_sha256, 16)),
        h('div', { class: 'muted small' }, 'serial ', abbrev(c.serial, 17), ' · CA ', shortId(c.ca_id))] },
      { label: 'Expires', cell: (c) => [fmtDate(c.not_after), h('div', {}, daysBadge(daysUntil(c.not_after)))] },
      { label: 'Last used', cell: (c) => fmtTime(c.last_seen) },
      { label: 'State', cell: (c) => [
        revocationOf(c) ? h('span', { class: 'badge days expired revoked' }, 'revoked') : h('span', { class: 'badge on' }, 'valid'),
        c.clone_suspected ? h('div', { class: 'alert error small clone' }, 'Possible clone: ', c.clone_suspected.detail) : null] },
      { label: 'Actions', cell: (c) => {
        const r = revocationOf(c);
        return r
          ? h('button', { type: 'button', class: 'secondary small lift', 'aria-label': `Lift the revocation of ${c.fingerprint_sha256}`,
            onclick: (e) => busy(e.currentTarget, () => lift(d, r)) }, 'Lift revocation')
          : h('button', { type: 'button', class: 'danger small revoke', 'aria-label': `Revoke ${c.fingerprint_sha256}`,
            onclick: (e) => busy(e.currentTarget, () => revoke(d, c)) }, 'Revoke');
      } },
    ], d.certificates, { caption: `Certificates of ${d.identity}`, empty: 'Only ever connected with a token.',
      rowAttrs: (c) => ({ 'data-fingerprint': c.fingerprint_sha256 }) });
  }

  function draw() {
    count.textContent = plural(devices.length, 'device') + (more.hidden ? '' : ' (more on the next page)');
    list.replaceChildren(table([
      { label: 'Identity', cell: (d) => [h('code', {}, d.identity), h('div', { class: 'muted small' }, d.client_id)] },
      { label: 'Connected', cell: (d) => h('span', { class: `badge ${d.connected ? 'on' : 'off'}` }, d.connected ? 'connected' : 'offline') },
      { label: 'Last seen', cell: (d) => [fmtTime(d.last_seen), h('div', { class: 'muted small' }, d.last_addr)] },
      { label: 'Current certificate', cell: (d) => {
        const c = d.certificates[d.certificates.length - 1];
        return c ? [abbrev(c.serial, 17), h('div', {}, daysBadge(daysUntil(c.not_after)))] : h('span', { class: 'muted' }, 'token');
      } },
      { label: 'Certificates', cell: (d) => h('details', { class: 'history' },
        h('summary', {}, `${plural(d.certificates.length, 'certificate')}`), certRows(d)) },
    ], devices, {
      caption: 'Devices',
      empty: 'No device matches.',
      rowAttrs: (d) => ({ 'data-identity': d.identity }),
    }));
  }

  async function load(next) {
    const q = new URLSearchParams({ limit: String(DEVICES_PAGE) });
    if (prefix.value.trim()) q.set('prefix', prefix.value.trim());
    if (expiring.checked) q.set('expiring_within_days', String(SOON_DAYS));
    if (connected.value) q.set('connected', connected.value);
    if (next && devices.length) q.set('after', devices[devices.length - 1].identity);
    try {
      const [page, rev] = await Promise.all([
        api('GET', `/orgs/${enc(org)}/devices?${q}`),
        api('GET', `/orgs/${enc(org)}/revoked-certs`),
      ]);
      revoked = rev;
      devices = page;
      more.hidden = page.length < DEVICES_PAGE;
      msg.replaceChildren();
      draw();
    } catch (e) {
      list.replaceChildren();
      showError(msg, e, 'Loading devices');
    }
  }

  async function revoke(d, c) {
    const ok = await confirmDialog({
      title: `Revoke this certificate of ${d.identity}?`,
      body: [`Serial ${c.serial}, SHA-256 ${c.fingerprint_sha256}.`,
        'Its live sessions close now and it cannot connect again. The device can still connect with another certificate (block the identity to keep it out).'],
      confirm: 'Revoke certificate',
    });
    if (!ok) return;
    try {
      await api('POST', `/orgs/${enc(org)}/revoked-certs`, { json: { fingerprint_sha256: c.fingerprint_sha256, reason: 'revoked in the console' } });
      toast(`Revoked certificate ${c.serial} of ${d.identity}`);
      await reloadKeepingPage(d);
    } catch (e) {
      showError(msg, e, 'Revoking failed');
    }
  }

  async function lift(d, r) {
    try {
      await api('DELETE', `/orgs/${enc(org)}/revoked-certs/${enc(r.id)}`);
      toast(`Lifted the revocation of ${r.serial}`);
      await reloadKeepingPage(d);
    } catch (e) {
      showError(msg, e, 'Lifting the revocation failed');
    }
  }

  /** Shows the revocations as they are now, with the history of `d` open again. */
  async function reloadKeepingPage(d) {
    revoked = await api('GET', `/orgs/${enc(org)}/revoked-certs`);
    draw();
    const row = list.querySelector(`tr[data-identity="${CSS.escape(d.identity)}"] details`);
    if (row) row.open = true;
  }

  more.addEventListener('click', () => busy(more, () => load(true)));
  await load(false);
}

/* ---------- network policy */

async function tabNetwork(root, org) {
  const msg = h('div', { class: 'messages' });
  const allow = h('textarea', { id: 'net-allow', rows: 5, spellcheck: 'false', placeholder: '203.0.113.0/24' });
  const deny = h('textarea', { id: 'net-deny', rows: 5, spellcheck: 'false', placeholder: '198.51.100.7/32' });
  const save = h('button', { type: 'submit', id: 'net-save' }, 'Save');
  const lines = (t) => t.value.split(/[\n,]/).map((x) => x.trim()).filter(Boolean);

  root.append(h('form', { class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    await busy(save, async () => {
      try {
        const p = await api('PUT', `/orgs/${enc(org)}/network-policy`, { json: { allow: lines(allow), deny: lines(deny) } });
        show(p);
        showOk(msg, 'Saved. Sessions from addresses it refuses were closed.');
      } catch (err) {
        showError(msg, err, 'Not saved');
      }
    });
  } },
  h('h2', {}, 'Network policy'),
  h('p', { class: 'muted' }, 'Which client addresses may reach this org, checked right after the TLS server name and before any certificate. A deny entry wins; an empty allow list admits every address not denied.'),
  h('div', { class: 'grid' },
    field('Allow (one network per line)', allow, 'CIDRs such as 203.0.113.0/24 or 2001:db8::/32, or single addresses.'),
    field('Deny (one network per line)', deny)),
  msg,
  h('div', { class: 'actions' }, save)));

  function show(p) {
    allow.value = p.allow.join('\n');
    deny.value = p.deny.join('\n');
  }
  try {
    show(await api('GET', `/orgs/${enc(org)}/network-policy`));
  } catch (e) {
    showError(msg, e, 'Loading the network policy');
  }
}

/* ---------- security policy */

const LEVELS = [
  ['tls_client_cert', 'Client certificate (default)'],
  ['tls_client_cert_or_token', 'Client certificate or token'],
  ['tls_token', 'Token (a certificate alone is not enough)'],
  ['tls_client_cert_and_token', 'Client certificate and token'],
  ['tls_optional', 'Certificate or token; plain MQTT with a token'],
];

async function tabSecurity(root, org) {
  const msg = h('div', { class: 'messages' });
  const level = h('select', { id: 'sec-level' }, LEVELS.map(([v, label]) => h('option', { value: v }, label)));
  const proof = h('input', { type: 'checkbox', id: 'sec-ca-proof' });
  const overrides = h('div', {});
  const save = h('button', { type: 'submit', id: 'sec-save' }, 'Save');
  const codeMsg = h('div', { class: 'messages', id: 'sec-code' });
  const getCode = h('button', { type: 'button', class: 'secondary', id: 'sec-code-new' }, 'Get a verification code');
  let policy = null;

  root.append(
    h('form', { class: 'card', onsubmit: async (e) => {
      e.preventDefault();
      await busy(save, async () => {
        try {
          // PUT replaces the whole policy: keep what this page does not edit.
          policy = await api('PUT', `/orgs/${enc(org)}/security-policy`, { json: { ...policy, level: level.value, device_types: types, require_ca_proof: proof.checked } });
          show();
          showOk(msg, 'Saved. Sessions the new policy no longer admits were closed.');
        } catch (err) {
          showError(msg, err, 'Not saved');
        }
      });
    } },
    h('h2', {}, 'Security policy'),
    field('Security level', level, 'What a device must present to connect; a device or gateway type can override it below.'),
    overrides,
    h('label', { class: 'check' }, proof, ' Require proof of possession for CA uploads'),
    msg,
    h('div', { class: 'actions' }, save)),
    deviceTokens(org),
    topicPolicy(org),
    h('section', { class: 'card' },
      h('h2', {}, 'CA verification code'),
      h('p', { class: 'muted' }, 'With proof of possession on, a CA upload must carry a certificate signed by that CA whose CN is a code from here (valid one hour, for one upload).'),
      codeMsg,
      h('div', { class: 'actions' }, getCode)));

  // Per device type: the level that overrides the org's. Edited here, saved with the form.
  let types = {};
  const newType = h('input', { id: 'sec-type-name', autocomplete: 'off', spellcheck: 'false', placeholder: 'sensor' });
  const newLevel = h('select', { id: 'sec-type-level' }, LEVELS.map(([v, label]) => h('option', { value: v }, label)));
  const addType = h('button', { type: 'button', class: 'secondary small', id: 'sec-type-add' }, 'Add override');
  addType.addEventListener('click', () => {
    const t = newType.value.trim();
    if (!t) return;
    types[t] = newLevel.value;
    newType.value = '';
    drawTypes();
  });
  function drawTypes() {
    const rows = Object.entries(types).map(([t, l]) => ({ t, l }));
    overrides.replaceChildren(
      h('h3', {}, 'Levels per device or gateway type'),
      table([
        { label: 'Type', cell: (r) => h('code', {}, r.t) },
        { label: 'Level', cell: (r) => {
          const sel = h('select', { 'aria-label': `Level of type ${r.t}` }, LEVELS.map(([v, label]) => h('option', { value: v, selected: v === r.l }, label)));
          sel.addEventListener('change', () => { types[r.t] = sel.value; });
          return sel;
        } },
        { label: 'Actions', cell: (r) => h('button', { type: 'button', class: 'danger small', 'aria-label': `Remove the override of type ${r.t}`,
          onclick: () => { delete types[r.t]; drawTypes(); } }, 'Remove') },
      ], rows, { caption: 'Levels per type', empty: 'No per-type overrides: every type uses the org’s level.', rowAttrs: (r) => ({ 'data-type': r.t }) }),
      h('div', { class: 'grid' }, field('Device or gateway type', newType), field('Its level', newLevel)),
      h('div', { class: 'actions' }, addType));
  }

  function show() {
    level.value = policy.level;
    proof.checked = !!policy.require_ca_proof;
    types = { ...(policy.device_types || {}) };
    drawTypes();
  }

  getCode.addEventListener('click', () => busy(getCode, async () => {
    try {
      const c = await api('POST', `/orgs/${enc(org)}/ca-certs/verification-code`);
      showOk(codeMsg, h('p', {}, 'Code ', h('code', { id: 'sec-code-value' }, c.code), ', valid until ', fmtTime(c.expires_at), '.'),
        h('pre', {}, `openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout verify.key -subj "/CN=${c.code}" -out verify.csr\nopenssl x509 -req -in verify.csr -CA ca.pem -CAkey ca.key -days 1 -out verify.pem`));
    } catch (err) {
      showError(codeMsg, err, 'No code');
    }
  }));

  try {
    policy = await api('GET', `/orgs/${enc(org)}/security-policy`);
    show();
  } catch (e) {
    showError(msg, e, 'Loading the security policy');
  }
}

/* ---------- blocked devices */

async function tabBlocked(root, org) {
  const msg = h('div', { class: 'messages' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const identity = h('input', { id: 'block-identity', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'd:sensor:dev2' });
  const reason = h('input', { id: 'block-reason', autocomplete: 'off', placeholder: 'lost in the field' });
  const submit = h('button', { type: 'submit', id: 'block-add' }, 'Block');
  const formMsg = h('div', { class: 'messages' });

  root.append(
    h('section', { class: 'card' }, h('h2', {}, 'Blocked devices'),
      h('p', { class: 'muted' }, 'A blocked identity cannot connect, whatever certificate it presents; blocking closes its live session.'),
      msg, list),
    h('form', { class: 'card', onsubmit: async (e) => {
      e.preventDefault();
      await busy(submit, async () => {
        try {
          const b = await api('POST', `/orgs/${enc(org)}/blocked-devices`, { json: { identity: identity.value.trim(), reason: reason.value.trim() } });
          showOk(formMsg, `Blocked ${b.identity ?? identity.value.trim()}.`);
          e.target.reset();
          await reload();
        } catch (err) {
          showError(formMsg, err, 'Blocking failed');
        }
      });
    } },
    h('h2', {}, 'Block an identity'),
    h('div', { class: 'grid' },
      field('Identity', identity, 'd:<type>:<id>, g:<type>:<id> or a:<app>.'),
      field('Reason', reason)),
    formMsg,
    h('div', { class: 'actions' }, submit)));

  async function reload() {
    try {
      const blocked = await api('GET', `/orgs/${enc(org)}/blocked-devices`);
      list.replaceChildren(table([
        { label: 'Identity', cell: (b) => h('code', {}, b.identity) },
        { label: 'Reason', cell: (b) => b.reason },
        { label: 'Blocked since', cell: (b) => fmtTime(b.created_at || b.blocked_at) },
        { label: 'Actions', cell: (b) => h('button', {
          type: 'button', class: 'secondary small', 'aria-label': `Unblock ${b.identity}`,
          onclick: (e) => busy(e.currentTarget, async () => {
            try {
              await api('DELETE', `/orgs/${enc(org)}/blocked-devices/${enc(b.identity)}`);
              toast(`Unblocked ${b.identity}`);
              await reload();
            } catch (err) {
              showError(msg, err, `Unblocking ${b.identity} failed`);
            }
          }),
        }, 'Unblock') },
      ], blocked, { caption: 'Blocked devices', empty: 'No identity is blocked.' }));
    } catch (e) {
      list.replaceChildren();
      showError(msg, e, 'Loading blocked devices');
    }
  }
  await reload();
}

/* ---------- CRLs */

async function tabCrls(root, org) {
  const msg = h('div', { class: 'messages' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const file = h('input', { type: 'file', id: 'crl-file', accept: '.crl,.pem,.der' });
  const submit = h('button', { type: 'submit', id: 'crl-upload' }, 'Upload CRL');
  const formMsg = h('div', { class: 'messages' });

  root.append(
    h('section', { class: 'card' }, h('h2', {}, 'Certificate revocation lists'),
      h('p', { class: 'muted' }, 'CRLs of this org’s CAs are checked on every handshake; a revoked certificate’s live session is closed when its CRL arrives.'),
      msg, list),
    h('form', { class: 'card', onsubmit: async (e) => {
      e.preventDefault();
      await busy(submit, async () => {
        const f = file.files[0];
        if (!f) {
          showError(formMsg, new ApiError(0, 'incomplete', 'Choose a CRL file (PEM or DER).'));
          return;
        }
        const bytes = new Uint8Array(await f.arrayBuffer());
        try {
          const crl = await api('POST', `/orgs/${enc(org)}/crls`, { body: bytes, contentType: certContentType(bytes, 'application/pkix-crl') });
          showOk(formMsg, `Uploaded the CRL of ${crl.issuer ?? f.name} (${plural((crl.revoked_serials || []).length, 'revoked certificate')}).`);
          file.value = '';
          await reload();
        } catch (err) {
          showError(formMsg, err, `${f.name} was refused`);
        }
      });
    } },
    h('h2', {}, 'Upload a CRL'),
    field('CRL file (PEM or DER)', file),
    formMsg,
    h('div', { class: 'actions' }, submit)));

  async function reload() {
    try {
      const crls = await api('GET', `/orgs/${enc(org)}/crls`);
      list.replaceChildren(table([
        { label: 'Issuer', cell: (c) => [h('strong', {}, c.issuer), c.ca_fingerprint ? h('div', { class: 'muted small' }, 'CA ', h('code', { title: c.ca_fingerprint }, c.ca_fingerprint.slice(0, 16)), '…') : null] },
        { label: 'CRL number', cell: (c) => c.crl_number ?? '' },
        { label: 'This update', cell: (c) => fmtTime(c.this_update) },
        { label: 'Next update', cell: (c) => (c.next_update ? [fmtTime(c.next_update), ' ', daysUntil(c.next_update) < 0 ? h('span', { class: 'badge days expired' }, 'overdue') : null] : 'none') },
        { label: 'Revoked', cell: (c) => {
          const serials = c.revoked_serials || [];
          return serials.length ? h('details', {}, h('summary', {}, plural(serials.length, 'certificate')), h('ul', { class: 'serials' }, serials.map((s) => h('li', {}, h('code', {}, s))))) : 'none';
        } },
        { label: 'Uploaded', cell: (c) => fmtTime(c.created_at) },
        { label: 'Actions', cell: (c) => h('button', {
          type: 'button', class: 'danger small', 'aria-label': `Delete the CRL of ${c.issuer}`,
          onclick: async (e) => {
            const button = e.currentTarget;
            const yes = await confirmDialog({
              title: `Delete the CRL of “${c.issuer}”?`,
              body: [`CRL number ${c.crl_number ?? 'none'}, ${plural((c.revoked_serials || []).length, 'revoked certificate')}.`, 'Certificates it revokes can connect again unless another CRL revokes them.'],
              confirm: 'Delete CRL',
            });
            if (!yes) return;
            await busy(button, async () => {
              try {
                await api('DELETE', `/orgs/${enc(org)}/crls/${enc(c.id)}`);
                toast(`Deleted the CRL of ${c.issuer}`);
                await reload();
              } catch (err) {
                showError(msg, err, 'Deleting the CRL failed');
              }
            });
          },
        }, 'Delete') },
      ], crls, { caption: 'CRLs', empty: 'No CRLs uploaded.' }));
    } catch (e) {
      list.replaceChildren();
      showError(msg, e, 'Loading CRLs');
    }
  }
  await reload();
}

/* ---------- audit */

function auditView(path, title) {
  const msg = h('div', { class: 'messages' });
  const rows = [];
  const list = h('div', {});
  const more = h('button', { type: 'button', class: 'secondary', id: 'audit-more', hidden: true }, 'Load older entries');
  const limit = 100;

  async function load(before) {
    try {
      const sep = path.includes('?') ? '&' : '?';
      const page = await api('GET', `${path}${sep}limit=${limit}${before ? `&before=${before}` : ''}`);
      rows.push(...page);
      list.replaceChildren(table([
        { label: '#', cell: (e) => e.seq },
        { label: 'When', cell: (e) => fmtTime(e.at) },
        { label: 'Token', cell: (e) => h('code', {}, e.token_id) },
        { label: 'Request', cell: (e) => [h('strong', {}, e.method), ' ', h('code', { class: 'path' }, e.path)] },
        { label: 'What', cell: (e) => e.summary },
        { label: 'Result', cell: (e) => [h('span', { class: `badge status s${String(e.status)[0]}` }, e.status), e.error ? [' ', h('code', {}, e.error)] : null] },
      ], rows, { caption: title, empty: 'Nothing recorded yet.' }));
      more.hidden = page.length < limit;
    } catch (e) {
      showError(msg, e, 'Loading the audit log');
    }
  }
  more.addEventListener('click', () => busy(more, () => load(rows[rows.length - 1]?.seq)));
  const section = h('section', { class: 'card' }, h('h2', {}, title),
    h('p', { class: 'muted' }, 'Every change made through the API, newest first, failures included. Tokens appear by id, never by value.'),
    msg, list, h('div', { class: 'actions' }, more));
  return { section, load: () => load() };
}

async function tabAudit(root, org) {
  const view = auditView(`/orgs/${enc(org)}/audit`, 'Audit log');
  root.append(view.section);
  await view.load();
}

async function pagePlatformAudit(main) {
  const view = auditView('/audit', 'Platform audit log');
  main.append(h('h1', { tabindex: '-1' }, 'Platform audit'),
    h('p', { class: 'muted' }, 'Creating and deleting organizations, and requests naming organizations that do not exist.'),
    view.section);
  await view.load();
}

/* ---------- tokens and domains */

async function tabSettings(root, org) {
  const tokensMsg = h('div', { class: 'messages' });
  const tokenList = h('div', {});
  const name = h('input', { id: 'token-name', required: true, maxlength: '100', autocomplete: 'off', placeholder: 'ops' });
  const create = h('button', { type: 'submit', id: 'token-create' }, 'Create token');
  const shown = h('div', {});
  const domainsMsg = h('div', { class: 'messages' });
  const domains = h('textarea', { id: 'domains', rows: '3', spellcheck: 'false', placeholder: 'iot.example.com' });
  const saveDomains = h('button', { type: 'submit', id: 'domains-save' }, 'Save domains');
  const limitsMsg = h('div', { class: 'messages' });
  const limitsBox = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));

  root.append(
    h('section', { class: 'card' }, h('h2', {}, 'API tokens'),
      h('p', { class: 'muted' }, `An org token sees ${org} only. The token is shown once, when it is created.`),
      tokensMsg, tokenList,
      h('form', { class: 'inline-form', onsubmit: async (e) => {
        e.preventDefault();
        await busy(create, async () => {
          try {
            const t = await api('POST', `/orgs/${enc(org)}/tokens`, { json: { name: name.value.trim() } });
            e.target.reset();
            const value = h('input', { id: 'new-token', readonly: true, value: t.token, class: 'mono' });
            shown.replaceChildren(h('div', { class: 'alert ok', role: 'status' },
              h('p', {}, `Token “${t.name}” created. Copy it now: certmq keeps only a hash and cannot show it again.`),
              field('New token', value)));
            value.select();
            await reloadTokens();
          } catch (err) {
            showError(tokensMsg, err, 'Creating the token failed');
          }
        });
      } }, field('Name', name), create),
      shown),
    h('form', { class: 'card', onsubmit: async (e) => {
      e.preventDefault();
      await busy(saveDomains, async () => {
        try {
          const r = await api('PUT', `/orgs/${enc(org)}/domains`, { json: { domains: domains.value.split(/[\s,]+/).filter(Boolean) } });
          domains.value = r.domains.join('\n');
          showOk(domainsMsg, r.domains.length ? `Devices may now also use ${r.domains.map((d) => `${org}.${d}`).join(', ')}.` : 'No custom domains.');
        } catch (err) {
          showError(domainsMsg, err, 'The domains were not saved');
        }
      });
    } },
    h('h2', {}, 'Custom domains'),
    h('p', { class: 'muted' }, `Devices select this org with <org>.<domain>; register extra domains here (up to 10). Register a domain before generating or uploading a certificate for it.`),
    field('Domains, one per line', domains),
    domainsMsg,
    h('div', { class: 'actions' }, saveDomains)),
    h('section', { class: 'card', id: 'limits' }, h('h2', {}, 'Limits'),
      h('p', { class: 'muted' }, 'What this org may hold on the broker (read-only here). Through the API, an org token may lower them; raising needs the platform admin token.'),
      limitsMsg, limitsBox));

  async function reloadTokens() {
    try {
      const tokens = await api('GET', `/orgs/${enc(org)}/tokens`);
      tokenList.replaceChildren(table([
        { label: 'Name', cell: (t) => t.name },
        { label: 'ID', cell: (t) => h('code', {}, t.id) },
        { label: 'Created', cell: (t) => fmtTime(t.created_at) },
        { label: 'Actions', cell: (t) => h('button', {
          type: 'button', class: 'danger small', 'aria-label': `Revoke token ${t.name} (${t.id})`,
          onclick: async (e) => {
            const button = e.currentTarget;
            const yes = await confirmDialog({
              title: `Revoke token “${t.name}”?`,
              body: [`Token ${t.id}, created ${new Date(t.created_at).toISOString().slice(0, 10)}. Requests presenting it get 401 from now on${session.token.includes(t.id) ? ' — including this console, which signed in with it' : ''}.`],
              confirm: 'Revoke token',
            });
            if (!yes) return;
            await busy(button, async () => {
              try {
                await api('DELETE', `/orgs/${enc(org)}/tokens/${enc(t.id)}`);
                toast(`Revoked ${t.name}`);
                await reloadTokens();
              } catch (err) {
                showError(tokensMsg, err, 'Revoking failed');
              }
            });
          },
        }, 'Revoke') },
      ], tokens, { caption: 'API tokens', empty: 'No org tokens.' }));
    } catch (e) {
      showError(tokensMsg, e, 'Loading tokens');
    }
  }

  await Promise.all([
    reloadTokens(),
    api('GET', `/orgs/${enc(org)}/domains`)
      .then((r) => { domains.value = r.domains.join('\n'); })
      .catch((e) => showError(domainsMsg, e, 'Loading domains')),
    api('GET', `/orgs/${enc(org)}/limits`)
      .then((l) => limitsBox.replaceChildren(details(LIMITS.map(([key, label, unit]) => [label, `${Number(l[key]).toLocaleString('en')}${unit}`]))))
      .catch((e) => { limitsBox.replaceChildren(); showError(limitsMsg, e, 'Loading limits'); }),
  ]);
}

/** The fields of GET /orgs/{org}/limits: [key, label, unit]. */
const LIMITS = [
  ['max_connections', 'Connections', ''],
  ['max_message_bytes', 'Message size', ' bytes'],
  ['max_retained_messages', 'Retained messages', ''],
  ['max_retained_bytes', 'Retained bytes', ' bytes'],
  ['max_subscriptions_per_session', 'Subscriptions per session', ''],
  ['max_queued_messages_per_session', 'Queued messages per session', ''],
  ['max_inflight_per_session', 'In-flight messages per session', ''],
];

/* ------------------------------------------------------------------ expiry overview */

/* ---------- Device tokens (on the Security policy page) */

/** The identities with an MQTT token: set one (shown once), replace it, delete it. */
/**
 * The org's topic policy (docs/topic-policies.md), edited as JSON: `{"mode":"watson"}`
 * or `{"mode":"custom","rules":[…]}`. A 422 names the rule entry that is wrong.
 */
function topicPolicy(org) {
  const msg = h('div', { class: 'messages', id: 'topics-messages' });
  const text = h('textarea', { id: 'topics-json', rows: 10, spellcheck: 'false' });
  const save = h('button', { type: 'submit', id: 'topics-save' }, 'Save topic policy');
  const show = (p) => { text.value = JSON.stringify(p, null, 2); };
  const card = h('form', { class: 'card', 'aria-labelledby': 'topics-title', onsubmit: async (e) => {
    e.preventDefault();
    await busy(save, async () => {
      let body;
      try {
        body = JSON.parse(text.value);
      } catch (err) {
        showError(msg, err, 'Not saved: the policy is not JSON');
        return;
      }
      try {
        show(await api('PUT', `/orgs/${enc(org)}/topic-policy`, { json: body }));
        showOk(msg, 'Saved. Live sessions lost the subscriptions it no longer allows; a switch between watson and custom closed them.');
      } catch (err) {
        showError(msg, err, 'Not saved');
      }
    });
  } },
  h('h2', { id: 'topics-title' }, 'Topic policy'),
  h('p', { class: 'muted' }, 'watson: Watson IoT topics (iot-2/…). custom: the first rule whose who (d:<type|*>:<id|*>, g:…, a:<app|*>) matches a client decides what it may publish and subscribe to; {type}, {id} and {app} come from its certificate.'),
  field('Policy (JSON)', text, 'e.g. {"mode":"custom","rules":[{"who":"d:*:*","publish":["devices/{type}/{id}/#"],"subscribe":["devices/{type}/{id}/cmd/#"]}]}'),
  msg,
  h('div', { class: 'actions' }, save));
  api('GET', `/orgs/${enc(org)}/topic-policy`).then(show, (err) => showError(msg, err, 'Loading the topic policy'));
  return card;
}

function deviceTokens(org) {
  const msg = h('div', { class: 'messages', id: 'tokens-messages' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const identity = h('input', { id: 'token-identity', autocomplete: 'off', spellcheck: 'false', placeholder: 'd:legacy:dev9' });
  const value = h('input', { type: 'password', id: 'token-value', autocomplete: 'off', placeholder: 'leave empty to generate one' });
  const submit = h('button', { type: 'submit', id: 'token-set' }, 'Set token');
  const card = h('form', { class: 'card', 'aria-labelledby': 'tokens-title', onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      try {
        const body = { identity: identity.value.trim() };
        if (value.value) body.token = value.value;
        const t = await api('POST', `/orgs/${enc(org)}/device-tokens`, { json: body });
        identity.value = '';
        value.value = '';
        showOk(msg, h('p', {}, 'Token of ', h('code', {}, t.identity), ' (shown this once): ', h('code', { id: 'token-shown' }, t.token)),
          h('p', { class: 'hint' }, 'The device connects with user name use-token-auth and this token as password, where its level asks for a token.'));
        await reload();
      } catch (err) {
        showError(msg, err, 'The token was not set');
      }
    });
  } },
  h('h2', { id: 'tokens-title' }, 'Device tokens'),
  h('p', { class: 'muted' }, 'For levels that admit or need a token. Tokens are stored as salted MACs: they cannot be shown again, only replaced.'),
  list,
  h('div', { class: 'grid' },
    field('Identity', identity, 'd:<type>:<id>, g:<type>:<id> or a:<app>.'),
    field('Token', value, 'At least 16 characters; empty: certmq generates one.')),
  msg,
  h('div', { class: 'actions' }, submit));

  async function reload() {
    try {
      const ids = await api('GET', `/orgs/${enc(org)}/device-tokens`);
      list.replaceChildren(table([
        { label: 'Identity', cell: (id) => h('code', {}, id) },
        { label: 'Actions', cell: (id) => h('button', { type: 'button', class: 'danger small', 'aria-label': `Delete the token of ${id}`,
          onclick: (e) => deleteToken(e.currentTarget, id) }, 'Delete') },
      ], ids, { caption: 'Device tokens', empty: 'No identity has a token.', rowAttrs: (id) => ({ 'data-identity': id }) }));
    } catch (e) {
      showError(msg, e, 'Loading device tokens');
    }
  }

  async function deleteToken(button, id) {
    const yes = await confirmDialog({
      title: `Delete the token of ${id}?`,
      body: ['Its live session is closed if its level needs the token.'],
      confirm: 'Delete token',
    });
    if (!yes) return;
    await busy(button, async () => {
      try {
        await api('DELETE', `/orgs/${enc(org)}/device-tokens/${enc(id)}`);
        toast(`Deleted the token of ${id}`);
        await reload();
      } catch (e) {
        showError(msg, e, `Deleting the token of ${id} failed`);
      }
    });
  }

  reload();
  return card;
}

/* ---------- Authorization dry run */

async function tabDryRun(root, org) {
  const msg = h('div', { class: 'messages' });
  const result = h('div', { id: 'dry-result', 'aria-live': 'polite' });
  const file = h('input', { type: 'file', id: 'dry-file', accept: '.pem,.crt' });
  const pem = h('textarea', { id: 'dry-cert', rows: '6', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
  const clientId = h('input', { id: 'dry-client-id', autocomplete: 'off', spellcheck: 'false', placeholder: `d:${org}:sensor:dev1` });
  const token = h('input', { type: 'password', id: 'dry-token', autocomplete: 'off' });
  const topic = h('input', { id: 'dry-topic', autocomplete: 'off', spellcheck: 'false', placeholder: 'iot-2/evt/temp/fmt/json' });
  const action = h('select', { id: 'dry-action' }, h('option', { value: 'publish' }, 'publish'), h('option', { value: 'subscribe' }, 'subscribe'));
  const submit = h('button', { type: 'submit', id: 'dry-check' }, 'Check');
  root.append(h('form', { class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      result.replaceChildren();
      try {
        const certificate = file.files[0] ? await file.files[0].text() : pem.value;
        const body = { certificate, action: action.value };
        if (clientId.value.trim()) body.client_id = clientId.value.trim();
        if (token.value) body.token = token.value;
        if (topic.value.trim()) body.topic = topic.value.trim();
        const d = await api('POST', `/orgs/${enc(org)}/authz/check`, { json: body });
        msg.replaceChildren();
        result.replaceChildren(h('div', { class: `alert ${d.allowed ? 'ok' : 'error'}`, role: 'status' },
          h('strong', { id: 'dry-verdict' }, d.allowed ? 'Allowed' : 'Refused'),
          ` at stage ${d.stage}: `, h('span', { id: 'dry-reason' }, d.reason),
          details([
            ['Identity', d.identity || '—'],
            ['Expected client id', d.expected_client_id || '—'],
            ['Admitting CA', d.ca_id ? [shortId(d.ca_id), ' ', fingerprint(d.ca_fingerprint)] : '—'],
            ['Internal topic', d.internal_topic ? h('code', {}, d.internal_topic) : '—'],
          ])));
      } catch (err) {
        showError(msg, err, 'The check did not run');
      }
    });
  } },
  h('h2', {}, 'Authorization dry run'),
  h('p', { class: 'muted' }, 'What the broker would decide for a client certificate, a client id, a token and a topic, and the step that decided — the broker’s own checks, in its order. Nothing is stored.'),
  h('div', { class: 'grid' },
    field('Client certificate (file)', file),
    field('…or paste it (PEM, leaf first)', pem)),
  h('div', { class: 'grid' },
    field('Client id', clientId),
    field('Device token', token, 'Only where the level asks for one.'),
    field('Topic or filter', topic),
    field('Action', action)),
  msg,
  h('div', { class: 'actions' }, submit),
  result));
}

/* ---------- Outgoing: client certificates, bridges, webhooks */

const OUTGOING_REFRESH_MS = 5000;
const EVENTS_FILTER = 'iot-2/type/+/id/+/evt/+/fmt/+';
const WEBHOOK_URL_EXAMPLE = 'https://hooks.example.com/certmq'; // placeholder text, never fetched

function stateBadge(d) {
  const tone = d.state === 'connected' ? 'on' : d.state === 'failed' ? 'failed' : 'pending';
  return h('span', { class: `badge ${tone}` }, d.state);
}

async function tabOutgoing(root, org) {
  const msg = h('div', { class: 'messages' });
  const certList = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const bridgeList = h('div', {});
  const hookList = h('div', {});
  const forms = h('div', {});
  let certIds = null;
  root.append(
    h('section', { class: 'card' },
      h('h2', {}, 'Client certificates'),
      h('p', { class: 'muted' }, 'The identities certmq presents when it connects to others. Keys are sealed on the broker and never shown. ',
        h('a', { href: `#/org/${enc(org)}/csrs` }, 'Generate one with a CSR'), ' (purpose: client) to keep the key on the broker.'),
      msg, certList),
    clientUpload(org, () => reload()),
    h('section', { class: 'card' }, h('h2', {}, 'Bridges'),
      h('p', { class: 'muted' }, 'Remote MQTT brokers that receive this org’s messages over mutual TLS.'), bridgeList),
    h('section', { class: 'card' }, h('h2', {}, 'Webhooks'),
      h('p', { class: 'muted' }, 'HTTPS endpoints that receive each message as a JSON POST.'), hookList),
    forms);

  const rendered = renderCount;
  async function reload() {
    try {
      const [certs, bridges, hooks] = await Promise.all([
        api('GET', `/orgs/${enc(org)}/client-certs`),
        api('GET', `/orgs/${enc(org)}/bridges`),
        api('GET', `/orgs/${enc(org)}/webhooks`)]);
      certList.replaceChildren(clientTable(org, certs, msg, reload));
      bridgeList.replaceChildren(destinationTable(org, 'bridges', bridges, msg, reload));
      hookList.replaceChildren(destinationTable(org, 'webhooks', hooks, msg, reload));
      // The forms offer the client certificates: rebuilt only when those change, so a
      // refresh never wipes what is being typed.
      const ids = certs.map((c) => c.id).join(',');
      if (ids !== certIds) {
        certIds = ids;
        forms.replaceChildren(bridgeForm(org, certs, reload), webhookForm(org, certs, reload));
      }
    } catch (e) {
      showError(msg, e, 'Loading outgoing connections');
    }
  }
  await reload();
  // States change on their own (a partner goes down): refresh while this page is shown.
  const timer = setInterval(() => {
    if (renderCount !== rendered || !document.body.contains(root)) clearInterval(timer);
    else reload();
  }, OUTGOING_REFRESH_MS);
}

function clientTable(org, certs, msg, reload) {
  return table([
    { label: 'Subject', cell: (c) => [h('strong', {}, c.subject), h('div', { class: 'muted small' }, `issued by ${c.issuer}`)] },
    { label: 'Origin', cell: (c) => c.origin },
    { label: 'Validity', cell: (c) => validity(c) },
    { label: 'Used by', cell: (c) => (c.used_by.length ? c.used_by.flatMap((id, i) => (i ? [', ', shortId(id)] : [shortId(id)])) : h('span', { class: 'muted' }, 'unused')) },
    { label: 'Actions', cell: (c) => h('div', { class: 'row-actions' },
      h('button', { type: 'button', class: 'danger small', 'aria-label': `Delete client certificate ${c.subject} (${c.id})`,
        onclick: (e) => deleteClientCert(e.currentTarget, org, c, msg, reload) }, 'Delete')) },
  ], certs, {
    caption: 'Client certificates',
    empty: 'No client certificate yet: upload one below, or generate one with a CSR.',
    rowAttrs: (c) => ({ 'data-id': c.id }),
  });
}

async function deleteClientCert(button, org, cert, msg, reload) {
  const yes = await confirmDialog({
    title: `Delete client certificate “${cert.subject}”?`,
    body: [`Fingerprint ${cert.fingerprint_sha256}.`, 'Its private key is destroyed with it.'],
    confirm: 'Delete client certificate',
  });
  if (!yes) return;
  await busy(button, async () => {
    try {
      await api('DELETE', `/orgs/${enc(org)}/client-certs/${enc(cert.id)}`);
      toast(`Deleted ${cert.subject}`);
      await reload();
    } catch (e) {
      showError(msg, e, `Deleting ${cert.subject} failed`);
    }
  });
}

/** Upload a client certificate as a form, checked first (the preview stores nothing). */
function clientUpload(org, onSaved) {
  const msg = h('div', { class: 'messages', id: 'cli-upload-messages' });
  const preview = h('div', { id: 'cli-preview' });
  const chain = h('input', { type: 'file', id: 'cli-chain', accept: '.pem,.crt,.cer' });
  const key = h('input', { type: 'file', id: 'cli-key', accept: '.pem,.key' });
  const passphrase = h('input', { type: 'password', id: 'cli-passphrase', autocomplete: 'off' });
  const p12 = h('input', { type: 'file', id: 'cli-p12', accept: '.p12,.pfx' });
  const password = h('input', { type: 'password', id: 'cli-password', autocomplete: 'off' });
  const pemRadio = h('input', { type: 'radio', name: 'cli-kind', id: 'cli-kind-pem', value: 'pem', checked: true });
  const p12Radio = h('input', { type: 'radio', name: 'cli-kind', id: 'cli-kind-p12', value: 'p12' });
  const pemFields = h('div', { class: 'grid' },
    field('Certificate chain (PEM)', chain, 'Leaf first or in any order; intermediates in the same file.'),
    field('Private key (PEM)', key),
    field('Passphrase', passphrase, 'Only for an encrypted key.'));
  const p12Fields = h('div', { class: 'grid', hidden: true },
    field('PKCS#12 file (.p12, .pfx)', p12),
    field('Password', password));
  const check = h('button', { type: 'button', class: 'secondary', id: 'cli-check' }, 'Check');
  const submit = h('button', { type: 'submit', id: 'cli-upload' }, 'Upload');
  const sync = () => {
    pemFields.hidden = !pemRadio.checked;
    p12Fields.hidden = !p12Radio.checked;
    preview.replaceChildren();
  };
  pemRadio.addEventListener('change', sync);
  p12Radio.addEventListener('change', sync);
  const body = async () => {
    const form = new FormData();
    if (pemRadio.checked) {
      if (!chain.files[0] || !key.files[0]) throw new ApiError(0, 'incomplete', 'Choose the certificate file and the private key file.');
      form.append('certificate', await chain.files[0].text());
      form.append('private_key', await key.files[0].text());
      if (passphrase.value) form.append('passphrase', passphrase.value);
    } else {
      if (!p12.files[0]) throw new ApiError(0, 'incomplete', 'Choose the PKCS#12 file.');
      form.append('pkcs12', p12.files[0]);
      if (password.value) form.append('password', password.value);
    }
    return form;
  };
  check.addEventListener('click', () => busy(check, async () => {
    msg.replaceChildren();
    try {
      const c = await api('POST', `/orgs/${enc(org)}/client-certs/preview`, { body: await body() });
      preview.replaceChildren(h('div', { class: 'alert ok', role: 'status' },
        h('strong', {}, 'It would be accepted.'),
        details([
          ['Subject', c.subject], ['Issuer', c.issuer], ['Valid', validity(c)], ['Key', c.key_type],
          ['Chain', plural(c.chain_length, 'certificate')], ['SHA-256', fingerprint(c.fingerprint_sha256)],
        ]),
        c.notes?.length ? h('ul', {}, c.notes.map((n) => h('li', {}, n))) : null));
    } catch (err) {
      preview.replaceChildren();
      showError(msg, err, 'This certificate would be refused');
    }
  }));
  const form = h('form', { class: 'card', 'aria-labelledby': 'cli-upload-title', onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      try {
        const cert = await api('POST', `/orgs/${enc(org)}/client-certs`, { body: await body() });
        form.reset();
        sync();
        showOk(msg, `Uploaded client certificate ${cert.subject}.`,
          cert.notes?.length ? h('ul', {}, cert.notes.map((n) => h('li', {}, n))) : null);
        await onSaved();
      } catch (err) {
        showError(msg, err, 'The upload was refused');
      }
    });
  } },
  h('h2', { id: 'cli-upload-title' }, 'Upload a client certificate'),
  h('fieldset', { class: 'choice' }, h('legend', {}, 'What you have'),
    h('label', {}, pemRadio, ' PEM certificate + private key'),
    h('label', {}, p12Radio, ' PKCS#12 file')),
  pemFields, p12Fields, msg, preview,
  h('div', { class: 'actions' }, check, submit));
  return form;
}

function destinationTable(org, kind, items, msg, reload) {
  const noun = kind === 'bridges' ? 'bridge' : 'webhook';
  return table([
    { label: 'Name', cell: (d) => [h('strong', {}, d.name), h('div', { class: 'muted small' }, d.url)] },
    { label: 'State', cell: (d) => [stateBadge(d), d.last_error ? h('div', { class: 'small last-error' }, d.last_error) : null] },
    { label: kind === 'bridges' ? 'Rules' : 'Filter', cell: (d) => (kind === 'bridges'
      ? d.forward.map((r) => h('div', { class: 'small' }, h('code', {}, r.filter), ' → ', h('code', {}, r.topic), ` (QoS ${r.qos})`))
      : h('code', { class: 'small' }, d.filter)) },
    { label: 'Client certificate', cell: (d) => (d.client_cert ? shortId(d.client_cert) : h('span', { class: 'muted' }, 'none')) },
    { label: 'Counters', cell: (d) => h('span', { class: 'small counters' },
      `${d.forwarded} forwarded · ${d.queued} queued · ${d.failures} failures`,
      d.last_http_status ? ` · HTTP ${d.last_http_status}` : '') },
    { label: 'Actions', cell: (d) => h('div', { class: 'row-actions' },
      h('button', { type: 'button', class: 'danger small', 'aria-label': `Delete ${noun} ${d.name}`,
        onclick: (e) => deleteDestination(e.currentTarget, org, kind, d, msg, reload) }, 'Delete')) },
  ], items, {
    caption: kind === 'bridges' ? 'Bridges' : 'Webhooks',
    empty: `No ${noun} yet.`,
    rowAttrs: (d) => ({ 'data-id': d.id, 'data-state': d.state }),
  });
}

async function deleteDestination(button, org, kind, d, msg, reload) {
  const noun = kind === 'bridges' ? 'bridge' : 'webhook';
  const yes = await confirmDialog({
    title: `Delete ${noun} “${d.name}”?`,
    body: [`${d.url}: its connection is closed and its ${plural(d.queued, 'queued message')} discarded.`],
    confirm: `Delete ${noun}`,
  });
  if (!yes) return;
  await busy(button, async () => {
    try {
      await api('DELETE', `/orgs/${enc(org)}/${kind}/${enc(d.id)}`);
      toast(`Deleted ${noun} ${d.name}`);
      await reload();
    } catch (e) {
      showError(msg, e, `Deleting ${d.name} failed`);
    }
  });
}

/** The fields bridges and webhooks share: name, URL, server name, client cert, trust. */
function destinationFields(prefix, certs, urlPlaceholder) {
  const input = (id, attrs = {}) => h('input', { id: `${prefix}-${id}`, autocomplete: 'off', spellcheck: 'false', ...attrs });
  const f = {
    name: input('name', { required: true, maxlength: '64' }),
    url: input('url', { required: true, placeholder: urlPlaceholder }),
    serverName: input('server-name', { placeholder: 'the URL’s host' }),
    cert: h('select', { id: `${prefix}-cert` }, h('option', { value: '' }, 'none'),
      certs.map((c) => h('option', { value: c.id }, `${c.subject} (${shortId(c.id)})`))),
    caFile: h('input', { type: 'file', id: `${prefix}-ca-file`, accept: '.pem,.crt' }),
    caPem: h('textarea', { id: `${prefix}-ca`, rows: '4', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' }),
  };
  f.fields = [
    h('div', { class: 'grid' },
      field('Name', f.name),
      field('URL', f.url),
      field('Server name (SNI)', f.serverName, 'The name the remote certificate must carry.'),
      field('Client certificate', f.cert, 'What certmq presents to the remote.')),
    h('div', { class: 'grid' },
      field('Trusted CA certificates (file)', f.caFile),
      field('…or paste them (PEM)', f.caPem, 'The remote server certificate must chain to one of these.')),
  ];
  f.common = async () => {
    const body = { name: f.name.value.trim(), url: f.url.value.trim() };
    if (f.serverName.value.trim()) body.server_name = f.serverName.value.trim();
    if (f.cert.value) body.client_cert = f.cert.value;
    const ca = f.caFile.files[0] ? await f.caFile.files[0].text() : f.caPem.value;
    if (ca.trim()) body.ca_certificates = ca;
    return body;
  };
  return f;
}

function bridgeForm(org, certs, onSaved) {
  const msg = h('div', { class: 'messages' });
  const f = destinationFields('bridge', certs, 'mqtts://broker.example.com:8883');
  const filter = h('input', { id: 'bridge-filter', value: EVENTS_FILTER, spellcheck: 'false' });
  const topic = h('input', { id: 'bridge-topic', value: 'fleet/{org}/{type}/{id}/{event}', spellcheck: 'false' });
  const qos = h('select', { id: 'bridge-qos' }, h('option', { value: '1' }, 'QoS 1: at least once'), h('option', { value: '0' }, 'QoS 0'));
  const submit = h('button', { type: 'submit', id: 'bridge-create' }, 'Create bridge');
  const form = h('form', { class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      try {
        const body = await f.common();
        body.forward = [{ filter: filter.value.trim(), topic: topic.value.trim(), qos: Number(qos.value) }];
        const b = await api('POST', `/orgs/${enc(org)}/bridges`, { json: body });
        toast(`Created bridge ${b.name}`);
        form.reset();
        filter.value = EVENTS_FILTER;
        topic.value = 'fleet/{org}/{type}/{id}/{event}';
        msg.replaceChildren();
        await onSaved();
      } catch (err) {
        showError(msg, err, 'The bridge was not created');
      }
    });
  } },
  h('h2', {}, 'Create a bridge'),
  ...f.fields,
  h('div', { class: 'grid' },
    field('Forward messages matching', filter, 'A filter in the application’s view of topics.'),
    field('…to the remote topic', topic, 'Placeholders: {org} {type} {id} {event} {format} {topic}.'),
    field('QoS', qos)),
  msg,
  h('div', { class: 'actions' }, submit));
  return form;
}

function webhookForm(org, certs, onSaved) {
  const msg = h('div', { class: 'messages' });
  const f = destinationFields('hook', certs, WEBHOOK_URL_EXAMPLE);
  const filter = h('input', { id: 'hook-filter', value: EVENTS_FILTER, spellcheck: 'false' });
  const submit = h('button', { type: 'submit', id: 'hook-create' }, 'Create webhook');
  const form = h('form', { class: 'card', onsubmit: async (e) => {
    e.preventDefault();
    await busy(submit, async () => {
      try {
        const body = await f.common();
        body.filter = filter.value.trim();
        const w = await api('POST', `/orgs/${enc(org)}/webhooks`, { json: body });
        toast(`Created webhook ${w.name}`);
        form.reset();
        filter.value = EVENTS_FILTER;
        msg.replaceChildren();
        await onSaved();
      } catch (err) {
        showError(msg, err, 'The webhook was not created');
      }
    });
  } },
  h('h2', {}, 'Create a webhook'),
  ...f.fields,
  field('POST messages matching', filter),
  msg,
  h('div', { class: 'actions' }, submit));
  return form;
}

const KIND_NAMES = { CA: 'CA certificate', Server: 'Server certificate', Client: 'Client certificate' };

async function pageExpiry(main) {
  const msg = h('div', { class: 'messages' });
  const windowSelect = h('select', { id: 'expiry-window' },
    [[7, 'the next 7 days'], [30, 'the next 30 days'], [90, 'the next 90 days'], [365, 'the next year'], [Infinity, 'any time (all certificates)']]
      .map(([d, label]) => h('option', { value: String(d), selected: d === SOON_DAYS }, label)));
  const summary = h('div', { class: 'summary', 'aria-live': 'polite' });
  const list = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  main.append(h('h1', { tabindex: '-1' }, 'Expiry overview'),
    h('p', { class: 'muted' }, 'Every CA, server and client certificate of every organization this token sees, soonest first: what goes dark next.'),
    h('div', { class: 'toolbar' }, field('Expiring within', windowSelect)),
    msg, summary, list);

  let orgs;
  try {
    orgs = await loadOrgs();
  } catch (e) {
    list.replaceChildren();
    showError(msg, e, 'Loading organizations');
    return;
  }
  const items = [];
  const failures = [];
  await Promise.all(orgs.map(async (o) => {
    const base = `/orgs/${enc(o.id)}`;
    const [cas, servers, clients] = await Promise.allSettled([
      api('GET', `${base}/ca-certs`), api('GET', `${base}/server-certs`), api('GET', `${base}/client-certs`)]);
    for (const [result, kind, tab] of [[cas, 'CA', 'ca-certs'], [servers, 'Server', 'server-certs'], [clients, 'Client', 'outgoing']]) {
      // A client certificate is "active" while a bridge or webhook uses it.
      if (result.status === 'fulfilled') result.value.forEach((c) => items.push({ ...c, org: o.id, kind, tab, active: kind === 'Client' ? c.used_by.length > 0 : c.active }));
      else failures.push([`${o.id}: ${KIND_NAMES[kind]}s`, result.reason]);
    }
  }));
  if (failures.length) msg.replaceChildren(...failures.map(([what, err]) => errorBox(err, what)));
  items.sort((a, b) => a.days_to_expiry - b.days_to_expiry || a.org.localeCompare(b.org));

  const draw = () => {
    const within = Number(windowSelect.value);
    const shown = items.filter((c) => c.days_to_expiry <= within);
    const expired = items.filter((c) => c.days_to_expiry < 0).length;
    const soon = items.filter((c) => c.days_to_expiry >= 0 && c.days_to_expiry <= SOON_DAYS).length;
    summary.replaceChildren(
      h('div', { class: `stat ${expired ? 'expired' : ''}` }, h('strong', {}, expired), ' expired'),
      h('div', { class: `stat ${soon ? 'soon' : ''}` }, h('strong', {}, soon), ` expire within ${SOON_DAYS} days`),
      h('div', { class: 'stat' }, h('strong', {}, items.length), ` certificates in ${plural(orgs.length, 'organization')}`));
    list.replaceChildren(table([
      { label: 'Expires', cell: (c) => [daysBadge(c.days_to_expiry), ' ', fmtDate(c.not_after)] },
      { label: 'Organization', cell: (c) => h('a', { href: `#/org/${enc(c.org)}/${c.tab}` }, c.org) },
      { label: 'Kind', cell: (c) => KIND_NAMES[c.kind] },
      { label: 'Subject', cell: (c) => [h('strong', {}, c.subject), c.dns_names?.length && c.kind !== 'CA' ? h('div', { class: 'muted small' }, c.dns_names.join(', ')) : null] },
      { label: 'Status', cell: (c) => activeBadge(c.active) },
    ], shown, {
      caption: 'Certificates by expiry',
      empty: Number.isFinite(within) ? `Nothing expires within ${plural(within, 'day')}.` : 'No certificates.',
      rowAttrs: (c) => ({ 'data-id': c.id }),
    }));
  };
  windowSelect.addEventListener('change', draw);
  draw();
}

/* ------------------------------------------------------------------ start */

session.load();
$('#sign-out').addEventListener('click', () => signOut());
window.addEventListener('hashchange', () => render({ focus: true }));
render();
