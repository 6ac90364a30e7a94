// natter's web client: the REST API and Socket.IO (the stock client, served
// by the edge from npm), as the NestJS module's front end used them. Plain
// JavaScript, no build step. The token lives in this tab's sessionStorage,
// so two tabs can be two users.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 30;

const state = {
  token: null,
  me: null,
  name: "",
  roles: [],
  socket: null,
  rooms: new Map(), // id -> {kind, id, view}
  current: null, // {kind, id}
  lastSeq: new Map(), // room id -> newest seq seen
  joined: new Set(), // rooms this socket follows: every listed one, for live unread counts
  live: new Map(), // room id -> messages received live, newest last (the history may not have them yet)
  oldest: null,
  hasMore: false,
  loading: false,
  online: new Set(),
  typingOff: null,
  typers: new Map(), // user id -> timer
  pins: new Set(), // pinned message ids of the open room
  replyTo: null, // the message the next send replies to
  noticeOff: null,
};

// ---- helpers ---------------------------------------------------------------

function claims(token) {
  const part = token.split(".")[1] || "";
  const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  return JSON.parse(decodeURIComponent(escape(json)));
}

function showError(where, e) {
  $(where).textContent = e ? (e.message || String(e)) : "";
}

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, opts.headers || {});
  let body = opts.body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const resp = await fetch(path, { method: opts.method || "GET", headers, body });
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) {
    const err = new Error((data && data.error && data.error.message) || `HTTP ${resp.status}`);
    err.code = data && data.error && data.error.code;
    throw err;
  }
  return data;
}

function roomFields(room) {
  return room.kind === "group" ? { groupId: room.id } : { conversationId: room.id };
}

function roomOf(data) {
  if (data.groupId) return { kind: "group", id: data.groupId };
  if (data.conversationId) return { kind: "conversation", id: data.conversationId };
  return null;
}

function isCurrent(room) {
  return room && state.current && state.current.id === room.id;
}

function emit(event, data) {
  return new Promise((resolve, reject) => {
    state.socket.timeout(15000).emit(event, data, (timeout, answer) => {
      if (timeout) return reject(new Error(`${event}: no answer`));
      if (answer && answer.error) {
        const e = new Error(answer.error.message);
        e.code = answer.error.code;
        return reject(e);
      }
      resolve(answer);
    });
  });
}

function shortId(id) {
  return id ? `…${id.slice(-6)}` : "";
}

// ---- sign-in -----------------------------------------------------------------

$("dev-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("signin-error");
  try {
    const body = { userId: $("user-id").value.trim() || undefined, name: $("name").value.trim() || undefined,
      roles: $("admin").checked ? ["Admin"] : [] };
    const resp = await fetch("api/dev/token", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    if (resp.status === 404) throw new Error("this edge mints no tokens (DEV_TOKENS is off): paste one");
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error ? data.error.message : `HTTP ${resp.status}`);
    start(data.token);
  } catch (e) {
    showError("signin-error", e);
  }
});

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  try {
    start($("token").value.trim());
  } catch (e) {
    showError("signin-error", new Error("that is not a JWT"));
  }
});

$("signout-btn").addEventListener("click", () => {
  sessionStorage.removeItem("natter-token");
  location.reload();
});

function start(token) {
  const c = claims(token);
  state.token = token;
  state.me = c.id || c.sub;
  state.name = c.name || c.username || "";
  state.roles = [].concat(c.roles || c.role || []);
  sessionStorage.setItem("natter-token", token);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me").textContent = state.me;
  $("me-name").textContent = state.name || "someone";
  $("new-group-form").hidden = !state.roles.includes("Admin");
  connect();
  loadRooms().catch((e) => showError("error", e));
}

// ---- the socket ----------------------------------------------------------------

function connect() {
  const socket = io(location.origin, { auth: { token: state.token }, transports: ["websocket", "polling"] });
  state.socket = socket;
  socket.on("connect", () => {
    $("conn-status").textContent = "online";
    $("conn-status").className = "online";
    // A new socket follows nothing: join every room again, catching up
    // from the last event seen in each.
    state.joined.clear();
    joinAll();
  });
  socket.on("disconnect", () => {
    $("conn-status").textContent = "offline";
    $("conn-status").className = "offline";
  });
  socket.on("connect_error", (e) => showError("error", e));
  socket.on("message_received", onMessage);
  socket.on("message_status_updated", (d) => {
    const li = document.querySelector(`.message[data-id="${d.messageId}"]`);
    if (li && li.dataset.status !== "read") setStatus(li, d.status);
  });
  socket.on("message_read", (d) => {
    const room = roomOf(d);
    if (d.userId === state.me) {
      setUnread(room && room.id, 0);
      return;
    }
    if (!isCurrent(room)) return;
    for (const li of document.querySelectorAll(".message.mine")) {
      if (Number(li.dataset.seq) <= d.upToSeq) setStatus(li, "read");
    }
  });
  socket.on("message_deleted", (d) => {
    const li = document.querySelector(`.message[data-id="${d.messageId}"]`);
    if (li) li.remove();
  });
  socket.on("message_edited", (d) => {
    const li = messageLi(d.messageId);
    if (!li || Number(li.dataset.edits || 0) >= d.editCount) return;
    li.dataset.edits = d.editCount;
    li.querySelector(".content").textContent = d.content;
    li.querySelector(".edited").hidden = false;
  });
  socket.on("reaction_added", (d) => changeReaction(d, true));
  socket.on("reaction_removed", (d) => changeReaction(d, false));
  socket.on("message_pinned", (d) => setPinned(d.messageId, true));
  socket.on("message_unpinned", (d) => setPinned(d.messageId, false));
  socket.on("mentioned", (m) => {
    const room = roomOf(m);
    if (!isCurrent(room)) showNotice(`${shortId(m.senderId)} mentioned you: ${m.content}`);
  });
  socket.on("thread_reply", (m) => {
    if (!isCurrent(roomOf(m))) showNotice(`${shortId(m.senderId)} replied in a thread: ${m.content}`);
  });
  socket.on("user_typing", (d) => {
    if (!isCurrent(roomOf(d)) || d.userId === state.me) return;
    clearTimeout(state.typers.get(d.userId));
    if (d.isTyping) {
      state.typers.set(d.userId, setTimeout(() => { state.typers.delete(d.userId); showTypers(); }, 7000));
    } else {
      state.typers.delete(d.userId);
    }
    showTypers();
  });
  socket.on("user_online", (d) => setOnline(d.userId, true));
  socket.on("user_offline", (d) => setOnline(d.userId, false));
  // A room new to this user: what happened in it since it was created
  // (or since the user was added) comes as the join's catch-up.
  socket.on("conversation_created", (v, meta) => newRoom("conversation", v, meta));
  socket.on("group_created", (v, meta) => newRoom("group", v, meta));
  socket.on("group_updated", (v) => {
    const r = state.rooms.get(v._id);
    if (r) r.view = Object.assign({}, v, { unreadCounts: r.view.unreadCounts });
    renderRooms();
  });
  socket.on("member_added", (d, meta) => {
    if (d.userId !== state.me) return;
    if (meta && meta.seq && !state.lastSeq.has(d.groupId)) state.lastSeq.set(d.groupId, meta.seq);
    // The group as stored may lag its events a moment.
    for (const wait of [0, 1000, 3000]) setTimeout(() => loadRooms().catch((e) => showError("error", e)), wait);
  });
  socket.on("member_removed", (d) => { if (d.userId === state.me) dropRoom(d.groupId); });
  socket.on("group_deleted", (d) => dropRoom(d.groupId));
  socket.on("contact_added", () => loadRooms().catch((e) => showError("error", e)));
  socket.on("resync_required", (d) => {
    if (isCurrent(roomOf(d))) openRoom(state.current).catch((e) => showError("error", e));
  });
  socket.on("error", (d) => showError("error", new Error(`${d.event || "error"}: ${d.message}`)));
}

function newRoom(kind, view, meta) {
  if (meta && meta.seq && !state.lastSeq.has(view._id)) state.lastSeq.set(view._id, meta.seq);
  if (!state.rooms.has(view._id)) state.rooms.set(view._id, { kind, id: view._id, view });
  renderRooms();
  joinAll();
}

function dropRoom(id) {
  state.rooms.delete(id);
  state.joined.delete(id);
  if (state.current && state.current.id === id) {
    state.current = null;
    $("room-title").textContent = "Pick a conversation";
    $("messages").textContent = "";
    $("composer").hidden = true;
  }
  renderRooms();
}

// Unread counts are the server's (written shortly after the events go
// out): refetched a moment after a message arrives for another room.
let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => loadRooms().catch((e) => showError("error", e)), 1500);
}

async function join(room, lastSeq) {
  const data = Object.assign(roomFields(room), lastSeq ? { lastSeq } : {});
  return emit(room.kind === "group" ? "join_group" : "join_conversation", data);
}

function joinAll() {
  if (!state.socket || !state.socket.connected) return;
  for (const r of state.rooms.values()) {
    if (state.joined.has(r.id)) continue;
    state.joined.add(r.id);
    join(r, state.lastSeq.get(r.id)).catch((e) => {
      state.joined.delete(r.id);
      showError("error", e);
    });
  }
}

// ---- rooms -------------------------------------------------------------------------

async function loadRooms() {
  const [convs, groups] = await Promise.all([
    api("api/chat/conversations?limit=100"),
    api("api/chat/groups?limit=100"),
  ]);
  // Added to, not replaced: a room just created may not be stored yet.
  for (const c of convs) state.rooms.set(c._id, { kind: "conversation", id: c._id, view: c });
  for (const g of groups) state.rooms.set(g._id, { kind: "group", id: g._id, view: g });
  renderRooms();
  joinAll();
  const others = [...new Set(convs.flatMap((c) => c.participantIds).filter((u) => u !== state.me))];
  if (others.length) {
    const presence = await api(`api/chat/presence?userIds=${others.slice(0, 500).join(",")}`);
    for (const p of presence) setOnline(p.userId, p.isOnline);
  }
}

function other(view) {
  return (view.participantIds || []).find((u) => u !== state.me);
}

function renderRooms() {
  const ul = $("rooms");
  ul.textContent = "";
  for (const r of state.rooms.values()) {
    const li = document.createElement("li");
    li.className = "room" + (isCurrent(r) ? " active" : "");
    li.dataset.roomId = r.id;
    li.dataset.kind = r.kind;
    const dot = document.createElement("span");
    dot.className = "presence";
    if (r.kind === "conversation") {
      dot.dataset.user = other(r.view);
      if (state.online.has(dot.dataset.user)) dot.classList.add("online");
    } else {
      dot.style.visibility = "hidden";
    }
    const name = document.createElement("span");
    name.className = "room-name";
    name.textContent = r.kind === "group" ? `# ${r.view.name}` : `Chat with ${shortId(other(r.view))}`;
    name.title = r.kind === "group" ? r.view.name : other(r.view);
    const unread = document.createElement("span");
    unread.className = "unread";
    const n = (r.view.unreadCounts || {})[state.me] || 0;
    unread.textContent = n > 0 && !isCurrent(r) ? String(n) : "";
    li.append(dot, name, unread);
    li.addEventListener("click", () => openRoom(r).catch((e) => showError("error", e)));
    ul.append(li);
  }
}

function setUnread(roomId, n) {
  const r = state.rooms.get(roomId);
  if (!r) return;
  r.view.unreadCounts = Object.assign({}, r.view.unreadCounts, { [state.me]: n });
  const badge = document.querySelector(`.room[data-room-id="${roomId}"] .unread`);
  if (badge) badge.textContent = n > 0 ? String(n) : "";
}

function setOnline(user, on) {
  if (on) state.online.add(user); else state.online.delete(user);
  for (const dot of document.querySelectorAll(`.presence[data-user="${user}"]`)) dot.classList.toggle("online", on);
}

async function openRoom(room) {
  showError("error");
  state.current = { kind: room.kind, id: room.id };
  state.typers.clear();
  showTypers();
  const r = state.rooms.get(room.id);
  $("room-title").textContent = r ? (r.kind === "group" ? r.view.name : `Chat with ${other(r.view)}`) : room.id;
  $("composer").hidden = false;
  $("messages").textContent = "";
  renderRooms();
  state.replyTo = null;
  $("reply-note").hidden = true;
  const base = `api/chat/${room.kind === "group" ? "groups" : "conversations"}/${room.id}`;
  const [page, pins] = await Promise.all([api(`${base}/messages?limit=${PAGE}`), api(`${base}/pins`)]);
  if (!isCurrent(room)) return;
  state.pins = new Set(pins.map((p) => p.message._id));
  for (const m of page.messages) renderMessage(m, false);
  // Received live but perhaps not written yet: after the stored ones.
  const newestStored = page.messages.length ? page.messages[page.messages.length - 1].seq : 0;
  const shown = page.messages.concat((state.live.get(room.id) || []).filter((m) => m.seq > newestStored));
  for (const m of shown.slice(page.messages.length)) renderMessage(m, false);
  state.oldest = page.messages.length ? page.messages[0].seq : null;
  state.hasMore = page.hasMore;
  const newest = shown[shown.length - 1];
  if (newest) state.lastSeq.set(room.id, Math.max(state.lastSeq.get(room.id) || 0, newest.seq));
  scrollDown();
  if (!state.joined.has(room.id)) {
    state.joined.add(room.id);
    await join(room, state.lastSeq.get(room.id));
  }
  readUpTo(shown);
  setUnread(room.id, 0);
}

async function loadOlder() {
  const room = state.current;
  if (!room || !state.hasMore || state.loading || state.oldest === null) return;
  state.loading = true;
  try {
    const kind = room.kind === "group" ? "groups" : "conversations";
    const page = await api(`api/chat/${kind}/${room.id}/messages?before=${state.oldest}&limit=${PAGE}`);
    if (!isCurrent(room)) return;
    const list = $("messages");
    const before = list.scrollHeight;
    for (const m of page.messages.slice().reverse()) renderMessage(m, true);
    list.scrollTop += list.scrollHeight - before;
    if (page.messages.length) state.oldest = page.messages[0].seq;
    state.hasMore = page.hasMore;
  } finally {
    state.loading = false;
  }
}

$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 40) loadOlder().catch((e) => showError("error", e));
});

// ---- messages -------------------------------------------------------------------------

function onMessage(m) {
  const room = roomOf(m);
  if (!room) return;
  state.lastSeq.set(room.id, Math.max(state.lastSeq.get(room.id) || 0, m.seq));
  const live = state.live.get(room.id) || [];
  live.push(m);
  state.live.set(room.id, live.slice(-100));
  if (!state.rooms.has(room.id)) {
    loadRooms().catch((e) => showError("error", e));
    return;
  }
  if (isCurrent(room)) {
    renderMessage(m, false);
    scrollDown();
    readUpTo([m]);
  } else if (m.senderId !== state.me && m.messageType !== "system") {
    const r = state.rooms.get(room.id);
    setUnread(room.id, ((r.view.unreadCounts || {})[state.me] || 0) + 1);
    refreshSoon();
  }
}

function readUpTo(messages) {
  const theirs = messages.filter((m) => m.senderId !== state.me && m.messageType !== "system" && !m.deleted);
  const last = theirs[theirs.length - 1];
  if (last && document.visibilityState !== "hidden") {
    emit("mark_as_read", { messageId: last._id }).catch((e) => showError("error", e));
  }
}

function setStatus(li, status) {
  li.dataset.status = status;
  const s = li.querySelector(".status");
  if (s) {
    s.textContent = status === "read" ? "✓✓ read" : status === "delivered" ? "✓✓ delivered" : "✓ sent";
    s.className = `status status-${status}`;
  }
}

function renderMessage(m, prepend) {
  if (m.deleted || document.querySelector(`.message[data-id="${m._id}"]`)) return;
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.id = m._id;
  li.dataset.seq = m.seq;
  if (m.messageType === "system") li.classList.add("system");
  else if (m.senderId === state.me) li.classList.add("mine");
  if (m.replyTo) {
    const re = document.createElement("div");
    re.className = "reply-to";
    const parent = messageLi(m.replyTo);
    re.textContent = `↪ ${parent ? parent.querySelector(".content").textContent.slice(0, 60) : "a thread"}`;
    li.append(re);
  }
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = m.content;
  li.append(content);
  if ((m.mentions || []).includes(state.me)) li.classList.add("mentions-me");
  for (const a of m.attachments || []) li.append(attachmentLink(a));
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = m.senderId === state.me ? "you" : shortId(m.senderId);
  meta.textContent = `${who} · ${new Date(m.createdAt).toLocaleTimeString()} `;
  if (m.senderId === state.me && m.messageType !== "system") {
    const s = document.createElement("span");
    s.className = "status";
    meta.append(s);
  }
  const edited = document.createElement("span");
  edited.className = "edited";
  edited.textContent = "(edited) ";
  edited.hidden = !m.editCount;
  li.dataset.edits = m.editCount || 0;
  meta.append(edited);
  const pin = document.createElement("span");
  pin.className = "pin";
  pin.textContent = "📌 ";
  pin.hidden = !state.pins.has(m._id);
  meta.append(pin);
  if (m.messageType !== "system") meta.append(...actions(m));
  li.append(meta);
  const reactions = document.createElement("div");
  reactions.className = "reactions";
  li.append(reactions);
  li.reactions = new Map((m.reactions || []).map((r) => [r.emoji, new Set(r.userIds)]));
  renderReactions(li);
  if (m.senderId === state.me) setStatus(li, m.status || "sent");
  const list = $("messages");
  if (prepend) list.prepend(li); else list.append(li);
}

function messageLi(id) {
  return document.querySelector(`.message[data-id="${id}"]`);
}

function showNotice(text) {
  $("notice").textContent = text;
  clearTimeout(state.noticeOff);
  state.noticeOff = setTimeout(() => { $("notice").textContent = ""; }, 8000);
}

// A message's buttons: react, reply, pin, and edit for the sender.
function actions(m) {
  const button = (label, title, run) => {
    const b = document.createElement("button");
    b.className = `act act-${title}`;
    b.type = "button";
    b.title = title;
    b.textContent = label;
    b.onclick = () => run().catch((e) => showError("error", e));
    return b;
  };
  const out = [
    button("👍", "react", () => toggleReaction(m._id, "👍")),
    button("↪", "reply", async () => {
      state.replyTo = m._id;
      $("reply-note").textContent = `replying to: ${m.content.slice(0, 40)}`;
      $("reply-note").hidden = false;
      $("text").focus();
    }),
    button("📌", "pin", () => emit(state.pins.has(m._id) ? "unpin_message" : "pin_message", { messageId: m._id })),
  ];
  if (m.senderId === state.me) {
    out.push(button("✎", "edit", async () => {
      const li = messageLi(m._id);
      const now = li ? li.querySelector(".content").textContent : m.content;
      const content = window.prompt("Edit your message", now);
      if (content && content !== now) await emit("edit_message", { messageId: m._id, content });
    }));
  }
  return out;
}

function toggleReaction(id, emoji) {
  const li = messageLi(id);
  const mine = li && li.reactions.get(emoji) && li.reactions.get(emoji).has(state.me);
  return emit(mine ? "remove_reaction" : "add_reaction", { messageId: id, emoji });
}

function changeReaction(d, added) {
  const li = messageLi(d.messageId);
  if (!li) return;
  const users = li.reactions.get(d.emoji) || new Set();
  if (added) users.add(d.userId); else users.delete(d.userId);
  if (users.size) li.reactions.set(d.emoji, users); else li.reactions.delete(d.emoji);
  renderReactions(li);
}

function renderReactions(li) {
  const box = li.querySelector(".reactions");
  box.replaceChildren();
  for (const [emoji, users] of li.reactions) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = users.has(state.me) ? "reaction mine" : "reaction";
    b.textContent = `${emoji} ${users.size}`;
    b.onclick = () => toggleReaction(li.dataset.id, emoji).catch((e) => showError("error", e));
    box.append(b);
  }
}

function setPinned(id, pinned) {
  if (pinned) state.pins.add(id); else state.pins.delete(id);
  const li = messageLi(id);
  if (li) li.querySelector(".pin").hidden = !pinned;
}

// Downloads go through the edge with the token (ATTACHMENT_DOWNLOAD=proxy
// streams them; a presigned redirect needs the S3 server to allow this
// origin).
async function fetchBlob(url) {
  const resp = await fetch(url, { headers: { Authorization: `Bearer ${state.token}` } });
  if (!resp.ok) throw new Error(`download: HTTP ${resp.status}`);
  return URL.createObjectURL(await resp.blob());
}

function attachmentLink(a) {
  const link = document.createElement("a");
  link.className = "attachment";
  link.href = "#";
  link.dataset.id = a.id;
  link.textContent = `Download ${a.name} (${Math.ceil(a.size / 1024)} KiB)`;
  link.addEventListener("click", async (ev) => {
    ev.preventDefault();
    try {
      const href = await fetchBlob(a.url);
      const save = document.createElement("a");
      save.href = href;
      save.download = a.name;
      save.click();
    } catch (e) {
      showError("error", e);
    }
  });
  if ((a.type || "").startsWith("image/") && a.thumbnailUrl) {
    fetchBlob(a.thumbnailUrl).then((src) => {
      const img = document.createElement("img");
      img.src = src;
      img.alt = a.name;
      link.prepend(img);
    }).catch(() => {});
  }
  return link;
}

function scrollDown() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function showTypers() {
  const n = state.typers.size;
  $("typing").textContent = n === 0 ? "" : n === 1 ? "someone is typing…" : `${n} people are typing…`;
}

// ---- composing ---------------------------------------------------------------------------

$("composer").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text || !state.current) return;
  $("text").value = "";
  stopTyping();
  try {
    const extra = state.replyTo ? { replyTo: state.replyTo } : {};
    state.replyTo = null;
    $("reply-note").hidden = true;
    await emit("send_message", Object.assign(roomFields(state.current), extra,
      { content: text, clientMsgId: crypto.randomUUID() }));
  } catch (e) {
    $("text").value = text;
    showError("error", e);
  }
});

$("text").addEventListener("input", () => {
  if (!state.current) return;
  if (!state.typingOff) {
    state.socket.emit("typing", Object.assign(roomFields(state.current), { isTyping: true }));
  }
  clearTimeout(state.typingOff);
  state.typingOff = setTimeout(stopTyping, 3000);
});

function stopTyping() {
  if (!state.typingOff) return;
  clearTimeout(state.typingOff);
  state.typingOff = null;
  if (state.current) state.socket.emit("typing", Object.assign(roomFields(state.current), { isTyping: false }));
}

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  if (!file || !state.current) return;
  showError("error");
  try {
    const form = new FormData();
    const room = roomFields(state.current);
    for (const [k, v] of Object.entries(room)) form.append(k, v);
    form.append("file", file, file.name);
    const a = await api("api/chat/attachments", { method: "POST", body: form });
    const messageType = (a.type || "").startsWith("image/") ? "image" : "document";
    await emit("send_message", Object.assign(room, { content: file.name, messageType, attachments: [a.id],
      clientMsgId: crypto.randomUUID() }));
  } catch (e) {
    showError("error", e);
  } finally {
    $("file").value = "";
  }
});

// ---- new rooms ------------------------------------------------------------------------------

$("new-conv-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("error");
  try {
    const c = await api("api/chat/conversations/with-user", { method: "POST", body: { userId: $("new-conv-user").value.trim() } });
    $("new-conv-user").value = "";
    state.rooms.set(c._id, { kind: "conversation", id: c._id, view: c });
    await openRoom({ kind: "conversation", id: c._id });
  } catch (e) {
    showError("error", e);
  }
});

$("new-group-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("error");
  try {
    const memberIds = $("new-group-members").value.split(",").map((s) => s.trim()).filter(Boolean);
    const g = await api("api/chat/groups", { method: "POST", body: { name: $("new-group-name").value.trim(), memberIds } });
    $("new-group-name").value = "";
    $("new-group-members").value = "";
    state.rooms.set(g._id, { kind: "group", id: g._id, view: g });
    await openRoom({ kind: "group", id: g._id });
  } catch (e) {
    showError("error", e);
  }
});

// ---- boot -----------------------------------------------------------------------------------------

const saved = sessionStorage.getItem("natter-token");
if (saved) {
  try {
    start(saved);
  } catch (e) {
    sessionStorage.removeItem("natter-token");
  }
}
