// The chat page: one WebSocket to /ws, one payload per text message, in the same
// targetType:target:specialMark:message form the terminal and Go clients use.
//
// Safety: every string from the network reaches the page as text (textContent and
// createElement), never as HTML; the server's Content-Security-Policy forbids inline
// script besides.  Texts come from the server's one table (/page.json), in English or
// the original Chinese.
"use strict";

(() => {
  const SYSTEM = "系统消息";
  const LOBBY = "channel1";
  const RECONNECT_FIRST_MS = 500;
  const RECONNECT_MAX_MS = 10000;
  // A replayed history line this close (seconds) to a line shown live is that line.
  const HISTORY_SLACK = 5;
  const COLOURS = 12;
  // Near the bottom (pixels): arriving messages keep the view at the bottom.
  const STICKY = 48;
  // Lines kept per room, and live lines remembered to recognise replayed history.
  const MAX_LINES = 2000;
  const MAX_REMEMBERED = 5000;

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  const state = {
    texts: {},
    serverLang: "en",
    lang: "en",
    maxFrame: 4092,
    ws: null,
    // login (the form) | connecting (the form, waiting) | chat | reconnecting | left
    phase: "login",
    me: "",
    wanted: "",
    password: "",
    attempt: 0,
    timer: null,
    rooms: new Map(), // folded name -> room
    current: LOBBY,
    joining: new Set(), // rooms the user asked for: shown once join1 comes
    pendingWho: [], // {key, silent} of who requests, oldest first
    pendingCount: 0, // online counts asked for
    pendingTop: 0, // rankings asked for
    shown: new Map(), // room|sender|text of live lines -> arrival times (s)
    refreshTimers: new Map(),
    unread: 0,
  };

  // --- texts ---------------------------------------------------------------------------

  function template(lang, key) {
    const entry = state.texts[key];
    if (!entry) return key;
    return entry[lang] || entry.en || key;
  }

  function fill(tpl, values) {
    return tpl.replace(/\{(\w+)(?::[^}]*)?\}/g, (whole, name) =>
      values && name in values ? String(values[name]) : whole);
  }

  // A text of the page, in the language chosen.
  const t = (key, values) => fill(template(state.lang, key), values);

  const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

  // A server text's template as a pattern: which server message is which.
  const patterns = new Map();
  function matchServer(key, text) {
    let entry = patterns.get(key);
    if (!entry) {
      const tpl = template(state.serverLang, key);
      const names = [];
      let source = "";
      let last = 0;
      for (const m of tpl.matchAll(/\{(\w+)(?::[^}]*)?\}/g)) {
        source += escapeRe(tpl.slice(last, m.index));
        source += m[1] === "count" ? "(\\d+)" : "([\\s\\S]*)";
        names.push(m[1]);
        last = m.index + m[0].length;
      }
      source += escapeRe(tpl.slice(last));
      entry = { re: new RegExp(`^${source}$`, "u"), names };
      patterns.set(key, entry);
    }
    const m = entry.re.exec(text);
    if (!m) return null;
    const out = {};
    entry.names.forEach((name, i) => { out[name] = m[i + 1]; });
    return out;
  }

  function applyTexts() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    for (const node of document.querySelectorAll("[data-text]")) node.textContent = t(node.dataset.text);
    for (const node of document.querySelectorAll("[data-placeholder]")) node.placeholder = t(node.dataset.placeholder);
    document.title = t("web_title");
    if (state.phase === "chat" || state.phase === "reconnecting") {
      renderRooms();
      showRoomTitle();
      renderMembers();
      updateTitle();
    }
  }

  // --- payloads --------------------------------------------------------------------------

  // Go's strings.SplitN(payload, ":", 4): the text keeps its colons.
  function split4(payload) {
    const parts = [];
    let rest = payload;
    for (let i = 0; i < 3; i++) {
      const at = rest.indexOf(":");
      if (at < 0) return null;
      parts.push(rest.slice(0, at));
      rest = rest.slice(at + 1);
    }
    parts.push(rest);
    return parts;
  }

  const join = (...fields) => fields.join(":");
  const bytes = (s) => new TextEncoder().encode(s).length;
  // Names and rooms are one under NFKC and case folding (the server's rule, nearly).
  const fold = (name) => name.normalize("NFKC").toLowerCase();

  function colourClass(name) {
    let hash = 2166136261;
    for (const ch of fold(name)) {
      hash ^= ch.codePointAt(0);
      hash = Math.imul(hash, 16777619) >>> 0;
    }
    return `c${hash % COLOURS}`;
  }

  // --- rooms and lines -------------------------------------------------------------------

  function room(name) {
    const key = fold(name);
    let entry = state.rooms.get(key);
    if (!entry) {
      const log = el("ol", "log");
      log.setAttribute("role", "log");
      log.setAttribute("aria-live", "polite");
      log.tabIndex = 0;
      log.hidden = key !== state.current;
      log.addEventListener("scroll", () => {
        if (key === state.current && atBottom(log)) $("new-messages").hidden = true;
      });
      $("logs").append(log);
      entry = { key, name, log, unread: 0, members: null, truncated: false, count: 0 };
      state.rooms.set(key, entry);
    } else {
      entry.name = name;
    }
    return entry;
  }

  const currentRoom = () => state.rooms.get(state.current);
  const atBottom = (log) => log.scrollHeight - log.scrollTop - log.clientHeight < STICKY;

  function clock(date, withDay) {
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    return withDay ? `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}` : time;
  }

  // One line of a room's log; `line`: {kind, sender, text, when, tag, mine, history}.
  function addLine(target, line) {
    const log = target.log;
    const stick = atBottom(log);
    const item = el("li", `line ${line.kind}`);
    if (line.history) item.classList.add("history");
    if (line.mine) item.classList.add("mine");
    const when = line.when || new Date();
    const stamp = el("time", "", clock(when, line.history && when.toDateString() !== new Date().toDateString()));
    stamp.dateTime = when.toISOString();
    if (line.history) stamp.title = t("history_mark").trim();
    item.append(stamp);
    if (line.tag) item.append(el("span", "tag", line.tag));
    if (line.sender !== undefined) {
      const who = el("span", `who ${line.kind === "system" ? "" : colourClass(line.sender)}`, line.sender);
      item.append(who);
    }
    item.append(el("span", "text", line.text));
    log.append(item);
    if (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
    if (target.key === state.current) {
      if (stick) log.scrollTop = log.scrollHeight;
      else if (!line.local) $("new-messages").hidden = false;
    } else if (!line.local && line.kind !== "system") {
      target.unread += 1;
      renderRooms();
    }
    if (document.hidden && !line.local && !line.history) {
      state.unread += 1;
      updateTitle();
    }
  }

  const systemLabel = () => t("system").replace(/[<>]/g, "").trim();
  const systemLine = (target, text, local = false) =>
    addLine(target, { kind: local ? "system local" : "system", sender: systemLabel(), text, local });
  // Answers and notices for the user go where the user is looking.
  const notice = (text) => systemLine(currentRoom(), text, true);

  function chatLine(target, sender, text, history, when) {
    const key = `${target.key}|${sender}|${text}`;
    const now = Date.now() / 1000;
    if (history) {
      // The server replays its history after every login and join: what was shown live is not shown twice.
      const seen = state.shown.get(key) || [];
      const at = seen.findIndex((shownAt) => Math.abs(shownAt - when.getTime() / 1000) <= HISTORY_SLACK);
      if (at >= 0) {
        seen.splice(at, 1);
        return;
      }
    } else {
      const seen = state.shown.get(key) || [];
      seen.push(now);
      if (seen.length > 20) seen.shift();
      state.shown.delete(key);  // re-inserted: the map's order is the order last seen
      state.shown.set(key, seen);
      if (state.shown.size > MAX_REMEMBERED) state.shown.delete(state.shown.keys().next().value);
    }
    addLine(target, { kind: "chat", sender, text, history, when, mine: sender === state.me });
  }

  function switchTo(key) {
    const target = state.rooms.get(key);
    if (!target) return;
    state.current = key;
    for (const entry of state.rooms.values()) entry.log.hidden = entry.key !== key;
    target.unread = 0;
    target.log.scrollTop = target.log.scrollHeight;
    $("new-messages").hidden = true;
    renderRooms();
    showRoomTitle();
    renderMembers();
    refreshMembers(key, 0);
  }

  function showRoomTitle() {
    const target = currentRoom();
    if (!target) return;
    const shown = target.key === LOBBY ? `# ${LOBBY} (${t("web_lobby")})` : `# ${target.name}`;
    $("room-title").textContent = shown;
    $("message").placeholder = t("web_placeholder", { room: target.key === LOBBY ? LOBBY : target.name });
    $("message-label").textContent = t("web_message_label", { room: target.name });
  }

  function renderRooms() {
    const list = $("room-list");
    const focused = document.activeElement && document.activeElement.dataset.room;
    list.replaceChildren();
    for (const entry of state.rooms.values()) {
      const item = el("li");
      const button = el("button", "room");
      button.type = "button";
      button.dataset.room = entry.key;
      button.append(el("span", "name", entry.name));
      if (entry.key === LOBBY) button.append(el("span", "hint", t("web_lobby")));
      if (entry.unread) button.append(el("span", "badge", String(entry.unread)));
      if (entry.key === state.current) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => switchTo(entry.key));
      item.append(button);
      if (entry.key !== LOBBY) {
        const part = el("button", "part", "×");
        part.type = "button";
        part.title = t("web_part", { room: entry.name });
        part.setAttribute("aria-label", part.title);
        part.addEventListener("click", () => send(join("channel", entry.name, "part", "")));
        item.append(part);
      }
      list.append(item);
      if (focused === entry.key) button.focus();
    }
  }

  function renderMembers() {
    const target = currentRoom();
    const list = $("member-list");
    list.replaceChildren();
    if (!target || !target.members) {
      $("members-title").textContent = t("web_members");
      return;
    }
    $("members-title").textContent = t("web_members_count", { count: target.count });
    for (const name of target.members) {
      const item = el("li", colourClass(name), name);
      if (name === state.me) item.append(el("span", "you", ` (${t("web_you")})`));
      list.append(item);
    }
    if (target.truncated) list.append(el("li", "more", "…"));
  }

  // A join or leave notice changes the list where it is said; asking the server each time
  // would make every tab ask on every login, which a big lobby cannot afford.
  function noteMembers(entry, text) {
    if (!entry.members) return;
    const lobby = entry.key === LOBBY;
    const joined = matchServer(lobby ? "joined" : "room_joined", text);
    const left = matchServer(lobby ? "left" : "room_left", text);
    if (joined && !entry.members.includes(joined.name)) {
      entry.members.push(joined.name);
      entry.members.sort((a, b) => fold(a).localeCompare(fold(b)));
      entry.count += 1;
    } else if (left) {
      const at = entry.members.indexOf(left.name);
      if (at >= 0) entry.members.splice(at, 1);
      entry.count = Math.max(0, entry.count - 1);
    } else {
      return;
    }
    if (entry.key === state.current) renderMembers();
  }

  // Ask for a room's members without printing the answer (on showing the room).
  function refreshMembers(key, delay = 300) {
    clearTimeout(state.refreshTimers.get(key));
    state.refreshTimers.set(key, setTimeout(() => {
      state.refreshTimers.delete(key);
      const target = state.rooms.get(key);
      if (!target || !online()) return;
      state.pendingWho.push({ key, silent: true });
      send(whoPayload(target), true);
    }, delay));
  }

  const whoPayload = (target) =>
    target.key === LOBBY ? join("individual", state.me, "who", "") : join("channel", target.name, "who", "");

  // A who answer: "Online (2): alice, bob" in the lobby, "In dev (2): alice, bob" in a room.
  function whoAnswer(text) {
    let found = matchServer("who", text);
    let key = LOBBY;
    if (!found) {
      found = matchServer("room_who", text);
      if (!found) return false;
      key = fold(found.room);
    }
    const at = state.pendingWho.findIndex((pending) => pending.key === key);
    const pending = at >= 0 ? state.pendingWho.splice(at, 1)[0] : null;
    const target = state.rooms.get(key);
    if (target) {
      let names = found.names ? found.names.split(", ") : [];
      target.truncated = names[names.length - 1] === "…";
      if (target.truncated) names = names.slice(0, -1);
      target.members = names;
      target.count = Number(found.count);
      if (key === state.current) renderMembers();
    }
    return Boolean(pending && pending.silent);
  }

  function updateTitle() {
    const prefix = state.unread ? `(${state.unread}) ` : "";
    document.title = `${prefix}${t("web_title")}`;
  }

  // --- what the server sends ---------------------------------------------------------------

  function onPayload(data) {
    if (typeof data !== "string") return;
    const payload = data.endsWith("\n") ? data.slice(0, -1) : data;
    const fields = split4(payload);
    if (!fields) return;
    const [type, target, mark, text] = fields;
    if (type === "history") {
      // history:<unix time>:<sender>:<text>
      chatLine(room(LOBBY), mark, text, true, new Date(Number(target) * 1000));
    } else if (type === "roomHistory") {
      // roomHistory:<room>:<unix time>:<sender>:<text>
      const at = text.indexOf(":");
      const entry = state.rooms.get(fold(target));
      if (entry && at >= 0) chatLine(entry, text.slice(0, at), text.slice(at + 1), true, new Date(Number(mark) * 1000));
    } else if (type === "individual") {
      individual(target, mark, text);
    } else if (type === "channel") {
      channel(target, mark, text);
    }
  }

  function individual(target, mark, text) {
    switch (mark) {
      case "changeNameFirst1":
        loggedIn(text);
        break;
      case "changeNameFirst0":
        if (state.phase === "connecting") {
          refused(text);
        } else if (state.phase === "reconnecting") {
          refused(t("reclaim_refused", { name: state.wanted }));
        } else {
          notice(text);
        }
        break;
      case "login0":
        if (state.phase === "connecting" || state.phase === "reconnecting") {
          refused(t("web_login_failed", { reason: text }));
        } else {
          notice(t("web_login_failed", { reason: text }));
        }
        break;
      case "changeName1":
        state.me = text;
        state.wanted = text;
        $("me").textContent = text;
        notice(t("your_name", { name: text }));
        refreshMembers(state.current);
        break;
      case "private":
        addLine(currentRoom(), { kind: "private", tag: t("web_private_from", { name: target }), text });
        break;
      case "privateSent":
        addLine(currentRoom(), { kind: "private", tag: t("web_private_to", { name: target }), text, mine: true, local: true });
        break;
      case "join1": {
        const key = fold(text);
        room(text);
        renderRooms();
        if (state.joining.has(key)) {
          state.joining.delete(key);
          switchTo(key);
        }
        break;
      }
      case "part1": {
        const key = fold(text);
        const entry = state.rooms.get(key);
        if (entry && key !== LOBBY) {
          entry.log.remove();
          state.rooms.delete(key);
          if (state.current === key) switchTo(LOBBY);
          else renderRooms();
        }
        break;
      }
      case SYSTEM:
        if (state.phase === "connecting") {
          loginStatus(text);  // a refusal: the server is full, too many connections, ...
        } else if (!whoAnswer(text) && state.phase !== "login") {
          notice(text);
        }
        break;
      default:  // join0, part0, changeNameFirst2 and what comes next: the text says it
        if (state.phase === "chat") notice(text);
    }
  }

  function channel(target, mark, text) {
    const entry = state.rooms.get(fold(target || LOBBY));
    if (mark === SYSTEM) {
      if (state.pendingTop && target === LOBBY && text.includes("\n")) {
        // The ranking: it goes where it was asked for.
        state.pendingTop -= 1;
        notice(text.replace(/\n+$/, ""));
        return;
      }
      if (!entry) return;
      systemLine(entry, text);
      noteMembers(entry, text);
      return;
    }
    if (mark === state.me && state.pendingCount &&
        (matchServer("online_count", text) || matchServer("room_count", text))) {
      // The count we asked for carries our name, as the original's does: it is the server's answer.
      state.pendingCount -= 1;
      notice(text);
      return;
    }
    if (entry) chatLine(entry, mark, text, false);
  }

  // --- connecting, logging in, reconnecting --------------------------------------------------

  const online = () => state.ws && state.ws.readyState === WebSocket.OPEN;

  function send(payload, quiet = false) {
    if (!online()) {
      if (!quiet) notice(t("web_offline"));
      return false;
    }
    state.ws.send(payload);
    return true;
  }

  function loginPayload() {
    return state.password
      ? join("individual", "", "login", `${state.wanted}:${state.password}`)
      : join("individual", "", "changeNameFirst", state.wanted);
  }

  function connect() {
    clearTimeout(state.timer);
    state.timer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws`);
    state.ws = ws;
    ws.addEventListener("open", () => ws.send(loginPayload()));
    ws.addEventListener("message", (event) => { if (ws === state.ws) onPayload(event.data); });
    ws.addEventListener("close", () => closed(ws));
  }

  function closed(ws) {
    if (ws !== state.ws) return;  // one we closed ourselves
    state.ws = null;
    if (state.phase === "chat") {
      state.phase = "reconnecting";
      notice(t("disconnected").trim());
    }
    if (state.phase !== "reconnecting" && state.phase !== "connecting") return;
    state.attempt += 1;
    const delay = Math.min(RECONNECT_FIRST_MS * 2 ** (state.attempt - 1), RECONNECT_MAX_MS);
    if (state.phase === "connecting") {
      loginStatus(t("web_lost", { delay: delay / 1000 }), true);
    } else {
      $("status").textContent = t("reconnect_wait", { delay: delay / 1000, attempt: state.attempt });
    }
    state.timer = setTimeout(connect, delay);
  }

  function hangUp() {
    clearTimeout(state.timer);
    state.timer = null;
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close();
  }

  function loginStatus(text, busy = false) {
    const status = $("login-status");
    status.textContent = text;
    status.classList.toggle("busy", busy);
    status.hidden = !text;
  }

  function refused(reason) {
    hangUp();
    state.phase = "login";
    state.attempt = 0;
    $("chat").hidden = true;
    $("left").hidden = true;
    $("login").hidden = false;
    $("enter").disabled = false;
    $("nickname").value = state.wanted;
    loginStatus(reason);
    $("nickname").focus();
    $("nickname").select();
  }

  function loggedIn(name) {
    const again = state.phase === "reconnecting";
    state.me = name;
    state.wanted = name;
    state.attempt = 0;
    state.pendingWho = [];
    state.pendingCount = 0;
    state.pendingTop = 0;
    $("me").textContent = name;
    $("status").textContent = "";
    if (state.phase === "connecting") {
      state.phase = "chat";
      $("login").hidden = true;
      $("chat").hidden = false;
      room(LOBBY);
      switchTo(state.current);
      $("message").focus();
    } else {
      state.phase = "chat";
    }
    if (again) notice(t("reconnected"));
    // Back into every room we were in (a new connection is in the lobby alone).
    for (const entry of state.rooms.values()) {
      if (entry.key !== LOBBY) send(join("channel", entry.name, "join", ""), true);
    }
    refreshMembers(state.current, 0);
  }

  function enter(event) {
    event.preventDefault();
    const name = $("nickname").value.trim();
    if (!name) {
      loginStatus(t("name_empty"));
      return;
    }
    state.wanted = name;
    state.password = $("password").value;
    $("password").value = "";
    state.phase = "connecting";
    state.attempt = 0;
    $("enter").disabled = true;
    loginStatus(t("web_connecting"), true);
    hangUp();
    connect();
  }

  // --- what the user types --------------------------------------------------------------------

  // "/msg NAME TEXT" or "/msg "A NAME" TEXT" (or 'A NAME').
  function splitTarget(rest) {
    const quoted = /^(["'])(.+?)\1(?:\s+([\s\S]*))?$/.exec(rest);
    const plain = /^(\S+)(?:\s+([\s\S]*))?$/.exec(rest);
    if (quoted) return quoted[3] ? [quoted[2], quoted[3]] : null;
    if (plain) return plain[2] ? [plain[1], plain[2]] : null;
    return null;
  }

  // The longest text (bytes) whose every payload, with its "\n", fits one frame.
  function fits(message, ...payloads) {
    const length = bytes(message);
    const overhead = Math.max(...payloads.map((payload) => bytes(payload) - length)) + 1;
    const limit = state.maxFrame - overhead;
    if (length <= limit) return null;
    return t("text_too_long", { length, limit, frame: state.maxFrame });
  }

  // What a typed line does: {payload, notice, keep} (keep: leave the text in the box).
  function typed(line) {
    const here = currentRoom();
    const inRoom = here.key !== LOBBY;
    if (line.startsWith("//")) line = line.slice(1);
    else if (line.startsWith("/")) return command(line, here, inRoom);
    const target = inRoom ? here.name : LOBBY;
    const payload = join("channel", target, "", line);
    const tooLong = fits(line, join("channel", target, state.me, line));
    return tooLong ? { notice: tooLong, keep: true } : { payload };
  }

  function command(line, here, inRoom) {
    const [word] = line.split(/\s/, 1);
    const rest = line.slice(word.length).trim();
    switch (word.toLowerCase()) {
      case "/help":
        return { notice: t("web_help") };
      case "/who":
        state.pendingWho.push({ key: here.key, silent: false });
        return { payload: whoPayload(here) };
      case "/online":
        state.pendingCount += 1;
        return { payload: join("channel", inRoom ? here.name : LOBBY, "onlineList", "") };
      case "/top":
        state.pendingTop += 1;
        return { payload: join("channel", LOBBY, "activity", "") };
      case "/rooms":
        return { payload: join("individual", state.me, "rooms", "") };
      case "/nick":
        if (!rest) return { notice: t("name_empty"), keep: true };
        return { payload: join("individual", state.me, "changeName", rest) };
      case "/join":
        if (!rest) return { notice: t("web_join_label"), keep: true };
        if (rest.includes(":")) return { notice: t("name_colon"), keep: true };
        state.joining.add(fold(rest));
        return { payload: join("channel", rest, "join", "") };
      case "/part": {
        const name = rest || (inRoom ? here.name : LOBBY);
        if (name.includes(":")) return { notice: t("name_colon"), keep: true };
        return { payload: join("channel", name, "part", "") };
      }
      case "/msg": {
        const addressed = splitTarget(rest);
        if (!addressed) return { notice: t("usage_msg"), keep: true };
        const [name, message] = addressed;
        if (name.includes(":")) return { notice: t("bad_target"), keep: true };
        const tooLong = fits(
          message,
          join("individual", name, "", message),
          join("individual", state.me, "private", message),
          join("individual", name, "privateSent", message),
        );
        if (tooLong) return { notice: tooLong, keep: true };
        return { payload: join("individual", name, "", message) };
      }
      case "/quit":
        return { payload: join("channel", LOBBY, "quit", ""), quit: true };
      default:
        return { notice: t("unknown_command", { command: word }), keep: true };
    }
  }

  function submit(event) {
    event.preventDefault();
    const input = $("message");
    const line = input.value.trim();
    if (!line) return;
    const action = typed(line);
    if (action.notice) notice(action.notice);
    if (action.payload) {
      if (!send(action.payload)) return;  // the text stays in the box
      if (action.quit) leave();
    }
    if (!action.keep) input.value = "";
  }

  function leave() {
    state.phase = "left";
    // The server closes once it has the quit; closing ourselves would race with it.
    const ws = state.ws;
    state.ws = null;
    setTimeout(() => ws && ws.close(), 2000);
    $("chat").hidden = true;
    $("left").hidden = false;
    $("enter-again").focus();
  }

  function enterAgain() {
    for (const entry of state.rooms.values()) entry.log.remove();
    state.rooms.clear();
    state.current = LOBBY;
    state.shown.clear();
    $("left").hidden = true;
    $("login").hidden = false;
    $("enter").disabled = false;
    loginStatus("");
    state.phase = "login";
    $("nickname").value = state.wanted;
    $("nickname").focus();
  }

  function joinRoom(event) {
    event.preventDefault();
    const input = $("join-room");
    const name = input.value.trim();
    if (!name) return;
    if (name.includes(":")) {
      notice(t("name_colon"));
      return;
    }
    const key = fold(name);
    if (state.rooms.has(key)) {
      switchTo(key);
    } else {
      state.joining.add(key);
      if (!send(join("channel", name, "join", ""))) return;
    }
    input.value = "";
    $("message").focus();
  }

  function keys(event) {
    // Alt+Up / Alt+Down: the previous or next room, from anywhere.
    if (!event.altKey || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
    if (state.phase !== "chat" && state.phase !== "reconnecting") return;
    const order = [...state.rooms.keys()];
    const at = order.indexOf(state.current);
    const next = order[(at + (event.key === "ArrowUp" ? -1 : 1) + order.length) % order.length];
    event.preventDefault();
    switchTo(next);
  }

  function toggleLanguage() {
    state.lang = state.lang === "zh" ? "en" : "zh";
    try { localStorage.setItem("chat-lang", state.lang); } catch (_) { /* private mode */ }
    applyTexts();
  }

  async function start() {
    try {
      const response = await fetch("page.json", { cache: "no-store" });
      const settings = await response.json();
      state.texts = settings.texts;
      state.serverLang = settings.lang;
      state.maxFrame = settings.maxFrame;
    } catch (_) {
      // Served by the chat server itself: without its settings, English and the defaults.
    }
    let chosen = null;
    try { chosen = localStorage.getItem("chat-lang"); } catch (_) { /* private mode */ }
    state.lang = chosen === "en" || chosen === "zh" ? chosen : state.serverLang;
    applyTexts();
    $("login-form").addEventListener("submit", enter);
    $("send-form").addEventListener("submit", submit);
    $("join-form").addEventListener("submit", joinRoom);
    $("enter-again").addEventListener("click", enterAgain);
    for (const button of document.querySelectorAll(".language")) button.addEventListener("click", toggleLanguage);
    $("new-messages").addEventListener("click", () => {
      const log = currentRoom().log;
      log.scrollTop = log.scrollHeight;
      $("new-messages").hidden = true;
    });
    document.addEventListener("keydown", keys);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) {
        state.unread = 0;
        updateTitle();
      }
    });
    document.body.dataset.ready = "true";
  }

  start();
})();
