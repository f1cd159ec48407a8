// The moderators' console: signs in with the admin token, shows who is in a room, acts on users and
// follows the policy engine's decisions. It talks only to the admin endpoint (docs/nginx.md), one
// directory up from /console/. The token is kept in this tab's sessionStorage and sent in the
// Authorization header; it never goes into a URL.

const API = new URL("../admin/", document.baseURI);
const TOKEN_KEY = "rtcadmin.console.token";
const ROOM_KEY = "rtcadmin.console.room";
const REFRESH_MS = 3000;

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem(TOKEN_KEY), app: "", room: "", others: new Set(), timers: [] };

// An admin call: {status, body}. A network failure is status 0 with a message.
async function call(path, body) {
  const init = { headers: { Authorization: `Bearer ${state.token}` } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    const res = await fetch(new URL(path, API), init);
    let doc;
    try { doc = await res.json(); } catch { doc = { ok: false, message: `HTTP ${res.status}` }; }
    return { status: res.status, body: doc };
  } catch (e) {
    return { status: 0, body: { ok: false, message: `cannot reach the admin endpoint: ${e.message}` } };
  }
}

function showResult(text, ok) {
  const el = $("result");
  el.textContent = text;
  el.className = ok ? "ok" : "error";
}

// The outcome of an action, as a moderator reads it.
function describe(verb, user, res) {
  if (res.body.ok) return [`${verb} ${user}: done (request ${res.body.request_id})`, true];
  const b = res.body;
  const code = b.code ? `${b.code}: ` : "";
  return [`${verb} ${user} failed — ${code}${b.message}`, false];
}

async function signIn(token) {
  state.token = token;
  const res = await call("decisions?limit=1");
  if (res.status === 401) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("signin-error").textContent = "Wrong token: the admin endpoint refused it.";
    return false;
  }
  if (res.status !== 200) {
    state.token = null;
    $("signin-error").textContent = res.body.message || `The admin endpoint answered ${res.status}.`;
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("signin-error").textContent = "";
  $("signin-panel").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  const saved = JSON.parse(sessionStorage.getItem(ROOM_KEY) || "null");
  if (saved) {
    $("app").value = saved.app;
    $("room").value = saved.room;
    showRoom(saved.app, saved.room);
  } else {
    $("app").focus();
  }
  startPolling();
  return true;
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.timers.forEach(clearInterval);
  state.timers = [];
  $("console").hidden = true;
  $("sign-out").hidden = true;
  $("signin-panel").hidden = false;
  $("token").value = "";
  $("token").focus();
}

function startPolling() {
  state.timers.push(setInterval(() => { if (state.room) refreshUsers(); }, REFRESH_MS));
  state.timers.push(setInterval(refreshFeed, REFRESH_MS));
  refreshFeed();
}

// One user's row with its buttons; `tag` says visible or invisible (or not online).
function userRow(user, tag) {
  const row = $("user-row").content.firstElementChild.cloneNode(true);
  row.dataset.testid = `user-${user}`;
  row.querySelector(".user-id").textContent = user;
  row.querySelector(".tag").textContent = tag;
  const duration = row.querySelector(".duration");
  duration.dataset.testid = `duration-${user}`;
  duration.setAttribute("aria-label", `Duration for ${user}`);
  const buttons = {
    kick: ["Kick", () => act("kick", "Kick", user, {})],
    ban: ["Ban", () => act("ban", "Ban", user, { duration: Number(duration.value) })],
    unban: ["Unban", () => act("unban", "Unban", user, {})],
    "mute-audio": ["Mute audio", () => act("mute", "Mute audio of", user, { audio: true, duration: Number(duration.value) })],
    "mute-video": ["Mute video", () => act("mute", "Mute video of", user, { video: true, duration: Number(duration.value) })],
    unmute: ["Unmute", () => act("unmute", "Unmute", user, {})],
  };
  for (const [cls, [label, fn]] of Object.entries(buttons)) {
    const b = row.querySelector(`.${cls}`);
    b.dataset.testid = `${cls}-${user}`;
    b.setAttribute("aria-label", `${label} ${user}`);
    b.addEventListener("click", fn);
  }
  return row;
}

async function act(route, verb, user, extra) {
  const body = { app_id: state.app, room_id: state.room, user_id: user, ...extra };
  const res = await call(route, body);
  const [text, ok] = describe(verb, user, res);
  showResult(text, ok);
  if (ok && (route === "ban" || route === "kick")) state.others.add(user);
  renderOthers();
  refreshUsers();
}

let online = [];
let shown = "";
function renderUsers(visible, invisible) {
  // Rows are rebuilt only when the room changed, so a refresh never pulls a button from under a
  // pointer or the keyboard.
  const key = JSON.stringify([state.app, state.room, visible, invisible]);
  if (key === shown) return;
  shown = key;
  const list = $("users");
  const focused = document.activeElement && document.activeElement.dataset.testid;
  list.replaceChildren(
    ...visible.map((u) => userRow(u, "visible")),
    ...invisible.map((u) => userRow(u, "invisible")),
  );
  online = visible.concat(invisible);
  // A refresh keeps the keyboard where it was.
  if (focused) {
    const again = list.querySelector(`[data-testid="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
  renderOthers();
}

// Users acted on here who are not online now (banned, kicked) or added by hand: unban, unmute.
let othersShown = "";
function renderOthers() {
  const users = [...state.others].filter((u) => !online.includes(u));
  const key = JSON.stringify(users);
  if (key === othersShown) return;
  othersShown = key;
  $("others").replaceChildren(...users.map((u) => userRow(u, "not online")));
}

async function refreshUsers() {
  const q = `online?app_id=${encodeURIComponent(state.app)}&room_id=${encodeURIComponent(state.room)}`;
  const res = await call(q);
  if (res.status === 401) return signOut();
  if (!res.body.ok) {
    $("room-summary").textContent = `Cannot list the room: ${res.body.code ? res.body.code + ": " : ""}${res.body.message}`;
    return;
  }
  const r = res.body.result;
  const visible = r.VisibleUserList || [];
  const invisible = r.InvisibleUserList || [];
  $("room-summary").textContent = r.RoomExists
    ? `${visible.length} visible, ${invisible.length} invisible — updated ${new Date().toLocaleTimeString()}`
    : `Nobody is in ${state.room} — updated ${new Date().toLocaleTimeString()}`;
  renderUsers(visible, invisible);
}

function showRoom(app, room) {
  state.app = app;
  state.room = room;
  sessionStorage.setItem(ROOM_KEY, JSON.stringify({ app, room }));
  shown = "";
  $("users").replaceChildren();
  refreshUsers();
}

// One answer a rule's condition used: count(join, room, 10 s) = 17.
function evidenceText(e) {
  if (typeof e !== "object" || e === null) return String(e);
  const parts = [e.type, e.field, e.scope, e.window !== undefined ? `${e.window} s` : undefined].filter((x) => x !== undefined);
  return `${e.query}(${parts.join(", ")}) = ${e.value}`;
}

// The feed: one item per decision, newest first.
async function refreshFeed() {
  if (!state.token) return;
  const res = await call("decisions?limit=50");
  if (res.status === 401) return signOut();
  if (!res.body.ok) return;
  const items = res.body.decisions.map((d) => {
    const li = document.createElement("li");
    li.className = `decision outcome-${d.outcome}`;
    li.dataset.testid = `decision-${d.run}-${d.id}`;
    const what = d.duration ? `${d.action} ${d.duration} s` : d.action;
    const head = document.createElement("div");
    head.className = "decision-head";
    head.textContent = `${d.time.slice(11, 19)}  ${d.rule} → ${what} ${d.user_id || ""} in ${d.room_id}`;
    const outcome = document.createElement("span");
    outcome.className = "outcome";
    outcome.textContent = d.outcome + (d.error ? ` (${d.error.code})` : "");
    head.append(" ", outcome);
    const evidence = document.createElement("div");
    evidence.className = "evidence";
    evidence.textContent = (d.evidence || []).map(evidenceText).join("; ");
    li.append(head, evidence);
    return li;
  });
  if (items.length === 0) {
    const li = document.createElement("li");
    li.className = "hint";
    li.textContent = "No decisions yet.";
    items.push(li);
  }
  $("decision-feed").replaceChildren(...items);
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value.trim());
  });
  $("room-form").addEventListener("submit", (e) => {
    e.preventDefault();
    showRoom($("app").value.trim(), $("room").value.trim());
  });
  $("user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const u = $("other-user").value.trim();
    if (u) state.others.add(u);
    $("other-user").value = "";
    renderOthers();
  });
  $("sign-out").addEventListener("click", signOut);
  if (state.token) signIn(state.token);
  else $("token").focus();
});
